"""Render a GLB model to a small PNG thumbnail on the CPU.

The results gallery shows a picture for every model, but some models arrive without a
preview picture. The server has no GPU and no OpenGL, so this module draws one itself with
numpy: a fixed three-quarter view, orthographic, flat-shaded faces coloured from the
model's texture, vertex colours or material, a z-buffer for visibility, and 2x
supersampling for smooth edges. It is meant for thumbnails, not for faithful rendering.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import io
import math
import os
from collections.abc import Iterator

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # trimesh (and SciPy under it) is about 58 MB of RSS, loaded on first use
    import trimesh

# Camera: it sits front (+Z, the glTF front), left (-X) and above (+Y) the model.
YAW_DEGREES = 33.0
PITCH_DEGREES = 20.0
MARGIN = 0.06  # share of the picture left empty on each side
SUPERSAMPLE = 2
AMBIENT = 0.35
DIFFUSE = 0.65
LIGHT = np.array([-0.2, 0.8, 0.55]) / np.linalg.norm([-0.2, 0.8, 0.55])  # world space, from above-front-left
NEUTRAL_GREY = np.array([180, 180, 180], dtype=np.float64)
MAX_SIZE = 4096
_ROW_CHUNK = 1 << 20  # triangle rows rasterised at once (bounds memory)
_PIXEL_CHUNK = 1 << 22  # candidate pixels rasterised at once


def render_thumbnail(
    glb: bytes | str | os.PathLike,
    size: int = 256,
    background: tuple[int, int, int, int] = (0, 0, 0, 0),
) -> bytes:
    """PNG bytes (RGBA, size x size) of the model seen from a three-quarter view.

    `glb` is the file's bytes or its path. The model is fitted, centred, into the square;
    uncovered pixels are `background`. Raises ValueError when the input is not a readable
    GLB or holds no triangles.
    """
    if not isinstance(size, int) or not 1 <= size <= MAX_SIZE:
        raise ValueError(f"size must be an integer from 1 to {MAX_SIZE}.")
    if len(background) != 4 or not all(isinstance(c, int) and 0 <= c <= 255 for c in background):
        raise ValueError("background must be four integers from 0 to 255 (RGBA).")
    scene = _load(glb)
    triangles, colours = _world_triangles(scene)
    canvas = _rasterise(triangles, colours, size * SUPERSAMPLE, background)
    picture = Image.fromarray(canvas, "RGBA")
    if SUPERSAMPLE != 1:
        picture = picture.resize((size, size), Image.LANCZOS)
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def _load(glb: bytes | str | os.PathLike) -> trimesh.Scene:
    """The GLB as a trimesh Scene; ValueError when it cannot be read."""
    import trimesh

    source = io.BytesIO(bytes(glb)) if isinstance(glb, (bytes, bytearray, memoryview)) else os.fspath(glb)
    try:
        scene = trimesh.load(source, file_type="glb", force="scene")
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a readable GLB"
        raise ValueError(f"The file is not a readable GLB model ({type(exc).__name__}).") from exc
    if not isinstance(scene, trimesh.Scene):
        raise ValueError("The file is not a readable GLB model.")
    return scene


def _world_triangles(scene: trimesh.Scene) -> tuple[np.ndarray, np.ndarray]:
    """All triangles in world space, shape (F, 3, 3), and their unshaded RGB colours (F, 3)."""
    import trimesh

    triangles: list[np.ndarray] = []
    colours: list[np.ndarray] = []
    for node in scene.graph.nodes_geometry:
        transform, name = scene.graph[node]
        mesh = scene.geometry.get(name)
        if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
            continue
        faces = np.asarray(mesh.faces, dtype=np.int64)
        vertices = np.asarray(mesh.vertices, dtype=np.float64)
        matrix = np.asarray(transform, dtype=np.float64)
        world = vertices @ matrix[:3, :3].T + matrix[:3, 3]
        if np.linalg.det(matrix[:3, :3]) < 0:  # a mirroring transform flips the winding
            faces = faces[:, ::-1]
        triangles.append(world[faces])
        colours.append(_face_colours(mesh))
    if not triangles:
        raise ValueError("The model contains no triangles.")
    return np.concatenate(triangles), np.concatenate(colours)


def _face_colours(mesh: trimesh.Trimesh) -> np.ndarray:
    """One RGB colour (0-255 floats) per face: texture, else vertex colours, else material, else grey."""
    import trimesh

    count = len(mesh.faces)
    visual = mesh.visual
    kind = getattr(visual, "kind", None)
    if isinstance(visual, trimesh.visual.TextureVisuals):
        material = visual.material
        texture = getattr(material, "baseColorTexture", None)
        if texture is None:
            texture = getattr(material, "image", None)  # SimpleMaterial
        uv = visual.uv
        if isinstance(texture, Image.Image) and uv is not None and len(uv) == len(mesh.vertices):
            # The texture alone, not texture x baseColorFactor: trimesh writes its default grey
            # diffuse (0.4) as the factor of textured models, which would darken them.
            return _sample_texture(texture, np.asarray(uv, dtype=np.float64)[mesh.faces].mean(axis=1))
        factor = _colour_factor(getattr(material, "baseColorFactor", None))
        if factor is None:
            diffuse = getattr(material, "diffuse", None)  # SimpleMaterial
            factor = _colour_factor(diffuse) if diffuse is not None else None
        if factor is not None:
            return np.tile(factor[:3], (count, 1))
        return np.tile(NEUTRAL_GREY, (count, 1))
    if kind == "vertex":
        vertex = np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3]
        return vertex[mesh.faces].mean(axis=1)
    if kind == "face":
        return np.asarray(visual.face_colors, dtype=np.float64)[:, :3]
    return np.tile(NEUTRAL_GREY, (count, 1))


def _colour_factor(value: object) -> np.ndarray | None:
    """An RGBA colour as 0-255 floats; trimesh stores uint8, glTF floats in 0-1."""
    if value is None:
        return None
    array = np.asarray(value).reshape(-1)
    if array.size < 3:
        return None
    if array.size == 3:
        array = np.append(array, 255 if array.dtype.kind in "iu" else 1.0)
    array = array[:4].astype(np.float64)
    if np.asarray(value).dtype.kind not in "iu":
        array = array * 255.0
    return np.clip(array, 0.0, 255.0)


def _sample_texture(texture: Image.Image, uv: np.ndarray) -> np.ndarray:
    """Nearest texel (RGB, 0-255 floats) at each UV; glTF v=0 is the image's bottom, UVs repeat."""
    pixels = np.asarray(texture.convert("RGB"), dtype=np.float64)
    height, width = pixels.shape[:2]
    uv = np.where((uv < 0.0) | (uv > 1.0), uv - np.floor(uv), uv)  # REPEAT wrapping
    uv = np.nan_to_num(uv, nan=0.0)
    cols = np.clip((uv[:, 0] * width).astype(np.int64), 0, width - 1)
    rows = np.clip(((1.0 - uv[:, 1]) * height).astype(np.int64), 0, height - 1)
    return pixels[rows, cols]


def _camera() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors (right, up, towards the camera) of the three-quarter view."""
    yaw, pitch = math.radians(YAW_DEGREES), math.radians(PITCH_DEGREES)
    towards = np.array([-math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
    right = np.cross(-towards, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, -towards)
    return right, up, towards


def _rasterise(
    triangles: np.ndarray, colours: np.ndarray, side: int, background: tuple[int, int, int, int]
) -> np.ndarray:
    """An RGBA array (side x side) of the shaded, fitted triangles over `background`."""
    right, up, towards = _camera()
    finite = np.isfinite(triangles).all(axis=(1, 2))
    triangles, colours = triangles[finite], colours[finite]
    canvas = np.empty((side, side, 4), dtype=np.uint8)
    canvas[:] = background
    if len(triangles) == 0:
        raise ValueError("The model contains no triangles.")

    # Fit every vertex's projection into the square, centred, with a margin.
    sx = triangles @ right
    sy = triangles @ up
    depth = triangles @ towards  # larger is nearer the camera
    lo_x, hi_x, lo_y, hi_y = sx.min(), sx.max(), sy.min(), sy.max()
    extent = max(hi_x - lo_x, hi_y - lo_y)
    scale = side * (1.0 - 2.0 * MARGIN) / extent if extent > 0 else 1.0
    px = (sx - (lo_x + hi_x) / 2.0) * scale + side / 2.0
    py = side / 2.0 - (sy - (lo_y + hi_y) / 2.0) * scale

    # Flat Lambert shading from face normals; faces turned away from the camera are skipped.
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    lengths = np.linalg.norm(normals, axis=1)
    keep = (lengths > 0) & (normals @ towards > 0)
    normals = normals[keep] / lengths[keep, None]
    shade = AMBIENT + DIFFUSE * np.clip(normals @ LIGHT, 0.0, None)
    shaded = np.clip(colours[keep] * shade[:, None], 0, 255).round().astype(np.uint8)
    winner = _zbuffer(px[keep], py[keep], depth[keep], side)

    covered = winner >= 0
    canvas.reshape(-1, 4)[covered, :3] = shaded[winner[covered]]
    canvas.reshape(-1, 4)[covered, 3] = 255
    return canvas


def _zbuffer(px: np.ndarray, py: np.ndarray, depth: np.ndarray, side: int) -> np.ndarray:
    """Index of the nearest triangle at each pixel (flattened, -1 where none).

    A vectorised scanline rasteriser: each triangle is split into the pixel rows whose
    centres it crosses, each row into the pixels whose centres lie inside it (half-open, so
    triangles sharing an edge neither overlap nor leave a gap), and the nearest depth wins.
    """
    zbuf = np.full(side * side, -np.inf)
    winner = np.full(side * side, -1, dtype=np.int64)
    # Depth plane z = a*x + b*y + c of each triangle, in pixel coordinates.
    e1x, e1y = px[:, 1] - px[:, 0], py[:, 1] - py[:, 0]
    e2x, e2y = px[:, 2] - px[:, 0], py[:, 2] - py[:, 0]
    det = e1x * e2y - e1y * e2x
    with np.errstate(divide="ignore", invalid="ignore"):
        dz1, dz2 = depth[:, 1] - depth[:, 0], depth[:, 2] - depth[:, 0]
        plane_a = (dz1 * e2y - dz2 * e1y) / det
        plane_b = (dz2 * e1x - dz1 * e2x) / det
    plane_c = depth[:, 0] - plane_a * px[:, 0] - plane_b * py[:, 0]

    # Each edge with its endpoints ordered by y, so a shared edge gives identical crossings.
    edges = []
    for i, j in ((0, 1), (1, 2), (2, 0)):
        swap = py[:, j] < py[:, i]
        y_lo = np.where(swap, py[:, j], py[:, i])
        y_hi = np.where(swap, py[:, i], py[:, j])
        x_lo = np.where(swap, px[:, j], px[:, i])
        x_hi = np.where(swap, px[:, i], px[:, j])
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = (x_hi - x_lo) / (y_hi - y_lo)
        edges.append((y_lo, y_hi, x_lo, slope))

    row_start = np.clip(np.ceil(py.min(axis=1) - 0.5), 0, side).astype(np.int64)
    row_end = np.clip(np.ceil(py.max(axis=1) - 0.5), 0, side).astype(np.int64)
    row_count = np.where(np.abs(det) > 1e-12, row_end - row_start, 0)

    for first, last in _chunks(row_count, _ROW_CHUNK):
        tri, offset = _expand(row_count[first:last])
        tri += first
        row = row_start[tri] + offset
        y = row + 0.5
        left = np.full(len(tri), np.inf)
        right = np.full(len(tri), -np.inf)
        for y_lo, y_hi, x_lo, slope in edges:
            lo, hi = y_lo[tri], y_hi[tri]
            crosses = (lo <= y) & (y < hi)
            x = np.where(crosses, x_lo[tri] + (y - lo) * np.where(crosses, slope[tri], 0.0), 0.0)
            left = np.where(crosses, np.minimum(left, x), left)
            right = np.where(crosses, np.maximum(right, x), right)
        valid = np.isfinite(left) & np.isfinite(right)
        col_start = np.clip(np.ceil(np.where(valid, left, 0.0) - 0.5), 0, side).astype(np.int64)
        col_end = np.clip(np.ceil(np.where(valid, right, 0.0) - 0.5), 0, side).astype(np.int64)
        pixel_count = np.where(valid, np.maximum(col_end - col_start, 0), 0)

        for span_first, span_last in _chunks(pixel_count, _PIXEL_CHUNK):
            span, column = _expand(pixel_count[span_first:span_last])
            span += span_first
            owner = tri[span]
            col = col_start[span] + column
            z = plane_a[owner] * (col + 0.5) + plane_b[owner] * y[span] + plane_c[owner]
            pixel = row[span] * side + col
            np.maximum.at(zbuf, pixel, z)
            nearest = z >= zbuf[pixel]
            winner[pixel[nearest]] = owner[nearest]
    return winner


def _chunks(counts: np.ndarray, limit: int) -> Iterator[tuple[int, int]]:
    """Consecutive index ranges whose counts sum to at most `limit` (or one item that exceeds it)."""
    total = np.cumsum(counts)
    first, done, n = 0, 0, len(counts)
    while first < n:
        last = int(np.searchsorted(total, done + limit, side="right"))
        last = max(last, first + 1)
        yield first, last
        done = int(total[last - 1])
        first = last


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For counts [2, 0, 3]: owners [0, 0, 2, 2, 2] and offsets [0, 1, 0, 1, 2]."""
    owners = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    offsets = np.arange(len(owners), dtype=np.int64) - starts[owners]
    return owners, offsets
