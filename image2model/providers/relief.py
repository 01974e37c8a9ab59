"""Offline "relief" generator: one image in, a closed, textured, puffed-up 3D model (GLB) out.

Pure CPU (numpy, scipy, Pillow, trimesh); no model weights, no network. The pipeline:

1. Separate the object: the alpha channel if the image has a meaningful one, otherwise
   background removal grown in from the border; a whole-frame plate when neither works.
2. Build the mesh on a regular lattice over the frame: a front sheet and a mirrored back
   sheet that share their boundary vertices (the silhouette), so the result is closed.
   Each mask cell is a fan of 8 triangles around its centre; that layout has no edge
   joining two silhouette vertices across the inside, so the shell is always manifold.
3. Inflate: height follows a rounded profile of the distance to the silhouette, plus an
   optional luminance relief on the front.
4. Texture: the front shows the image (UV = image position); the back uses the same UVs,
   which a viewer shows mirrored, darkened with vertex colours. Sharing UVs keeps the
   silhouette vertices welded in the GLB, so the file itself stays watertight.
5. Place as glTF expects (Y up, facing +Z, centred, largest dimension 1) and export GLB.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pillow_heif
import trimesh
from PIL import Image, ImageOps
from scipy import ndimage

__all__ = ["RELIEF_PARAMS", "ReliefResult", "generate_relief", "load_image"]

RELIEF_PARAMS: list[dict] = [
    {
        "name": "resolution",
        "type": "int",
        "default": 160,
        "minimum": 32,
        "maximum": 512,
        "step": 8,
        "help": "Grid cells along the image's long side; more cells give finer geometry and more faces.",
    },
    {
        "name": "inflation",
        "type": "float",
        "default": 0.35,
        "minimum": 0.05,
        "maximum": 1.0,
        "step": 0.05,
        "help": "Thickness relative to the object's width: 1 makes round shapes spherical, small values flat.",
    },
    {
        "name": "detail",
        "type": "float",
        "default": 0.15,
        "minimum": 0.0,
        "maximum": 1.0,
        "step": 0.05,
        "help": "Fine relief on the front from the image's brightness (bright is raised); 0 turns it off.",
    },
    {
        "name": "bg_tolerance",
        "type": "float",
        "default": 0.12,
        "minimum": 0.01,
        "maximum": 0.5,
        "step": 0.01,
        "help": "Colour distance (0..1) within which pixels count as background when removing it.",
    },
]
_PARAMS = {p["name"]: p for p in RELIEF_PARAMS}

STAGES = ("Separating the object", "Building the mesh", "Texturing", "Writing the model")

SOURCE_MAX_SIDE = 2048  # working copy of the input; the texture is cropped from it
TEXTURE_MAX_SIDE = 1024
_BACK_SHADE = 205  # vertex colour of the back (of 255): a slightly darker copy
_RIM_SWEEPS = 20  # smoothing sweeps for the lattice rows next to the rim
_RELAX_ITERATIONS = 30  # ridge softening of the distance field, in lattice sweeps
_DETAIL_DEPTH = 0.6  # relief of a white pixel at detail=1, relative to the half-thickness
_PLATE_THICKNESS = 0.08  # full-frame plate: half-thickness per unit inflation, of the long side
_RESAMPLABLE = {"RGB", "RGBA", "L", "LA", "I", "F", "CMYK", "RGBX", "RGBa", "La", "YCbCr", "LAB", "HSV"}


@dataclass(frozen=True)
class ReliefResult:
    glb: bytes
    vertices: int
    faces: int
    mask_source: str  # "alpha" | "background" | "full_frame"


# --------------------------------------------------------------------------- input


def load_image(path: str | os.PathLike, *, max_side: int = SOURCE_MAX_SIDE) -> Image.Image:
    """Open an image file upright and no bigger than needed.

    JPEGs are decoded at a reduced DCT scale (`draft`), so a 48-megapixel photo never
    exists in memory at full size; other formats are reduced right after decoding.
    """
    pillow_heif.register_heif_opener()
    with Image.open(path) as im:
        w, h = im.size
        scale = max_side / max(w, h)
        if scale < 1 and im.format == "JPEG":
            im.draft(im.mode, (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
        im.load()
        upright = _upright(_shrink(im, max_side))
        return upright.copy() if upright is im else upright  # must outlive the open file


def _shrink(img: Image.Image, max_side: int) -> Image.Image:
    """Downscale so the long side is at most `max_side` (cheaply: reduce, then resample)."""
    w, h = img.size
    if max(w, h) <= max_side:
        return img
    if img.mode not in _RESAMPLABLE:
        img = _to_8bit(img)
    scale = max_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def _to_8bit(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB, or RGBA when the image carries transparency."""
    mode = img.mode
    if mode in ("RGB", "RGBA"):
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _scale_to_l(img).convert("RGB")
    if mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    if "A" in mode or "a" in mode or "transparency" in img.info:
        return img.convert("RGBA")
    return img.convert("RGB")


def _scale_to_l(img: Image.Image) -> Image.Image:
    """High-bit-depth greyscale to 8 bits: 16-bit ranges divide by 257, others stretch."""
    a = np.asarray(img, dtype=np.float64)
    finite = a[np.isfinite(a)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if img.mode.startswith("I;16"):
        scaled = a / 257.0
    elif img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        scaled = a * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        scaled = a
    elif lo >= 0.0 and hi <= 65535.0:
        scaled = a / 257.0
    else:
        scaled = (a - lo) * (255.0 / max(hi - lo, 1e-12))
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def _prepare_source(image: Image.Image) -> Image.Image:
    """The working copy: upright, 8-bit RGB/RGBA, long side at most SOURCE_MAX_SIDE.

    EXIF orientation is applied again in case the caller did not: that is a no-op for
    an image already transposed, since exif_transpose drops the tag.
    """
    return _to_8bit(_upright(_shrink(image, SOURCE_MAX_SIDE)))


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the image as it is."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # Pillow raises various errors on malformed EXIF
        return img


# --------------------------------------------------------------------------- validation


def _validate(resolution: object, inflation: object, detail: object, bg_tolerance: object) -> None:
    """Raise ValueError naming the first parameter that is of the wrong type or out of range."""
    for name, value in (("resolution", resolution), ("inflation", inflation),
                        ("detail", detail), ("bg_tolerance", bg_tolerance)):
        spec = _PARAMS[name]
        lo, hi = spec["minimum"], spec["maximum"]
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name} must be a number between {lo} and {hi}, got {value!r}")
        if spec["type"] == "int" and float(value) != int(value):
            raise ValueError(f"{name} must be a whole number between {lo} and {hi}, got {value!r}")
        if not (lo <= float(value) <= hi):  # also rejects NaN
            raise ValueError(f"{name} must be between {lo} and {hi}, got {value!r}")


# --------------------------------------------------------------------------- separation


@dataclass(frozen=True)
class _Separation:
    mask: np.ndarray | None  # bool at analysis size, None for the full-frame plate
    source: str
    # Pixels whose colour belongs to the object (no closing, so no background caught in
    # concave corners); the texture takes colours only from these. None: use the mask.
    colour_mask: np.ndarray | None = None


def _analysis_side(resolution: int) -> int:
    """Long side of the image used for mask analysis: a few pixels per grid cell."""
    return max(256, 4 * resolution)


def _separate(src: Image.Image, resolution: int, tolerance: float) -> _Separation:
    """Find the object: alpha first, then background removal, else the whole frame."""
    small = _shrink(src, _analysis_side(resolution))
    if small.mode == "RGBA":
        alpha = np.asarray(small.getchannel("A"))
        if (alpha < 128).mean() > 0.001:
            mask = _keep_object(_clean(alpha >= 128))
            return _Separation(mask, "alpha") if _plausible(mask, 0.0005) else _Separation(None, "full_frame")
    rgb = np.asarray(small.convert("RGB"), dtype=np.float32) / 255.0
    found = _remove_background(rgb, tolerance)
    if found is not None and _plausible(found[0], 0.005):
        return _Separation(found[0], "background", found[1])
    return _Separation(None, "full_frame")


def _plausible(mask: np.ndarray, min_fraction: float) -> bool:
    """An object mask is usable unless it is (almost) empty or (almost) the whole frame."""
    fraction = float(mask.mean())
    return min_fraction <= fraction <= 0.97 and int(mask.sum()) >= 4


def _border(a: np.ndarray, width: int) -> np.ndarray:
    """Boolean ring of `width` pixels around the frame."""
    ring = np.ones(a.shape[:2], dtype=bool)
    ring[width:-width, width:-width] = False
    return ring


def _remove_background(rgb: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Object mask by growing the border's colour inward, or None if the border is not uniform.

    Returns the cleaned shape mask and, within it, the pixels not reached by the
    background (the texture trusts only those).

    The background is modelled as a colour plane (constant plus linear gradient) fitted
    to the border, so soft studio lighting gradients still count as background.
    """
    h, w, _ = rgb.shape
    if min(h, w) < 4:
        return None
    smooth = ndimage.gaussian_filter(rgb, sigma=(1.0, 1.0, 0.0), mode="nearest")
    ring = _border(smooth, max(1, round(0.02 * min(h, w))))
    ys, xs = np.nonzero(ring)
    colours = smooth[ring]
    design = np.column_stack([np.ones_like(xs, dtype=np.float32), xs / w - 0.5, ys / h - 0.5])
    inliers = _colour_distance(colours, np.median(colours, axis=0)) < 2 * tolerance
    for _ in range(2):
        if inliers.sum() < 3:
            return None
        coef, *_ = np.linalg.lstsq(design[inliers], colours[inliers], rcond=None)
        inliers = _colour_distance(colours, design @ coef) < tolerance
    if inliers.mean() < 0.5:
        return None  # the border is not one colour: a full-frame photo

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    background = coef[0] + (xx / w - 0.5)[..., None] * coef[1] + (yy / h - 0.5)[..., None] * coef[2]
    close = _colour_distance(smooth, background) < tolerance
    labels, _ = ndimage.label(close)
    touching = np.unique(labels[_border(labels, 1)])
    touching = touching[touching > 0]
    obj = ~np.isin(labels, touching)
    shape = _keep_object(_clean(obj))
    return shape, shape & obj


def _colour_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean RGB distance scaled to 0..1."""
    return np.sqrt(((a - b) ** 2).sum(axis=-1)) / math.sqrt(3.0)


def _clean(mask: np.ndarray) -> np.ndarray:
    """Remove specks and close hairline gaps; the frame edge counts as 'same as next pixel'."""
    padded = np.pad(mask, 2, mode="edge")
    square = np.ones((3, 3), dtype=bool)
    padded = ndimage.binary_opening(padded, structure=square)
    padded = ndimage.binary_closing(padded, structure=square)
    return padded[2:-2, 2:-2]


def _keep_object(mask: np.ndarray) -> np.ndarray:
    """Fill holes and keep the largest piece (object and background both 4-connected)."""
    mask = ndimage.binary_fill_holes(mask)
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


# --------------------------------------------------------------------------- grid mask


def _grid_shape(width: int, height: int, resolution: int) -> tuple[int, int]:
    """Mask cells (columns, rows); each mask cell becomes 2x2 lattice cells.

    `resolution` counts lattice cells along the long side, but a mask cell never gets
    smaller than a source pixel: a 16-pixel icon has nothing finer to show.
    """
    long_cells = max(2, min(round(resolution / 2), max(width, height)))
    short_cells = max(1, round(long_cells * min(width, height) / max(width, height)))
    return (long_cells, short_cells) if width >= height else (short_cells, long_cells)


def _cell_mask(sep: _Separation, cols: int, rows: int) -> np.ndarray:
    """Object mask on the cell grid: one 4-connected piece without holes.

    That also rules out pinch points (two cells meeting only at a corner), which would
    make the shell non-manifold there: two separate pieces are never both kept, and a
    piece touching itself at a corner encloses one of the two empty cells there, which
    is then a hole (the background is 4-connected too) and gets filled.
    """
    if sep.mask is None:
        return np.ones((rows, cols), dtype=bool)
    img = Image.fromarray(sep.mask.astype(np.uint8) * 255, "L")
    cells = np.asarray(img.resize((cols, rows), Image.Resampling.BILINEAR)) >= 128
    return _keep_object(cells)


# --------------------------------------------------------------------------- mesh


# The 3x3 lattice nodes of one mask cell, around its centre (row, column offsets).
_RING = ((0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0))


@dataclass(frozen=True)
class _Shell:
    vertices: np.ndarray  # (n, 3) image pixel units: x right, y down, z towards the viewer
    faces: np.ndarray  # (m, 3) int, outward winding in a y-up frame
    is_back: np.ndarray  # (n,) bool, back-sheet vertices (for the darker shade)


def _lattice_nodes(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Used lattice nodes, and interior ones (all four lattice cells around them inside).

    The lattice has 2x2 cells per mask cell; a used node that is not interior lies on
    the silhouette.
    """
    fine = cells.repeat(2, axis=0).repeat(2, axis=1)
    pad = np.pad(fine, 1).astype(np.uint8)
    touching = pad[:-1, :-1] + pad[:-1, 1:] + pad[1:, :-1] + pad[1:, 1:]
    return touching > 0, touching == 4


class _Outline:
    """Smooth signed distance to the object's outline (positive inside), in source pixels.

    Built from the analysis mask, which is finer than the mesh grid, so the mesh can put
    its silhouette on the true outline instead of on the grid's staircase.
    """

    def __init__(self, mask: np.ndarray, frame: tuple[int, int]):
        padded = np.pad(mask, 1)  # the frame edge is an outline too
        inside = ndimage.distance_transform_edt(padded) - 0.5
        outside = ndimage.distance_transform_edt(~padded) - 0.5
        sdf = ndimage.gaussian_filter(np.where(padded, inside, -outside), 1.5)
        self._sdf = sdf
        self._gy, self._gx = np.gradient(sdf)
        # source pixels per analysis pixel (the analysis image keeps the aspect ratio)
        self._scale = frame[0] / mask.shape[1]

    def _coords(self, xy: np.ndarray) -> np.ndarray:
        # source pixel position -> padded analysis array index (pixel centres at integers)
        return np.stack([xy[:, 1] / self._scale + 0.5, xy[:, 0] / self._scale + 0.5])

    def distance(self, xy: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(self._sdf, self._coords(xy), order=1, mode="nearest") * self._scale

    def gradient(self, xy: np.ndarray) -> np.ndarray:
        coords = self._coords(xy)
        gx = ndimage.map_coordinates(self._gx, coords, order=1, mode="nearest")
        gy = ndimage.map_coordinates(self._gy, coords, order=1, mode="nearest")
        return np.column_stack([gx, gy])


def _fit_silhouette(xy: np.ndarray, seam: np.ndarray, interior: np.ndarray, outline: _Outline,
                    step: tuple[float, float], faces: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """Move the silhouette nodes from the grid staircase onto the true outline.

    Silhouette nodes go onto the outline and the row just inside to one lattice step in
    (Newton steps along the distance gradient, at most one mask cell), so the steep rim
    between them is sampled evenly and shades without ripples. A band further in relaxes
    towards its neighbours' average, so the rows bend to follow the rim. Any move that
    would fold a triangle is undone.
    """
    limit = 2.0 * min(step)  # the grid's staircase strays up to about one mask cell
    moved = xy.copy()
    first_row = interior & ndimage.binary_dilation(seam, structure=np.ones((3, 3), dtype=bool))
    for nodes, level in ((seam.ravel(), 0.0), (first_row.ravel(), min(step))):
        moved[nodes] = _move_to_level(outline, xy[nodes], level, limit)
    moved[:, 0] = np.clip(moved[:, 0], 0.0, bounds[0])
    moved[:, 1] = np.clip(moved[:, 1], 0.0, bounds[1])

    band = interior & ~first_row & (ndimage.distance_transform_edt(~seam, sampling=step) <= 2.0 * limit)
    grid = moved.reshape(*seam.shape, 2)
    for _ in range(_RIM_SWEEPS):
        p = np.pad(grid, ((1, 1), (1, 1), (0, 0)), mode="edge")
        avg = 0.25 * (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:])
        grid = np.where(band[..., None], avg, grid)
    return _undo_folds(xy, grid.reshape(-1, 2), faces, 0.05 * step[0] * step[1] / 2)


def _move_to_level(outline: _Outline, pts: np.ndarray, level: float, limit: float) -> np.ndarray:
    """Two Newton steps along the distance gradient towards distance `level`, moving at most `limit`."""
    start = pts
    for _ in range(2):
        grad = outline.gradient(pts)
        norm2 = np.maximum((grad ** 2).sum(axis=1), 1e-6)
        pts = pts - ((outline.distance(pts) - level) / norm2)[:, None] * grad
    move = pts - start
    length = np.maximum(np.linalg.norm(move, axis=1), 1e-12)
    return start + move * np.minimum(1.0, limit / length)[:, None]


def _soften_ridges(dist: np.ndarray, interior: np.ndarray, rim: float) -> np.ndarray:
    """Round off the ridges a distance field has along the object's medial axis.

    Interior values are averaged with their lattice neighbours (silhouette held at 0),
    which turns facets meeting at creases into one smooth bulge. Near the rim the true
    distance is kept, so the rim's slope matches its shape and shades evenly.
    """
    d = np.where(interior, dist, 0.0)
    for _ in range(_RELAX_ITERATIONS):
        p = np.pad(d, 1)
        avg = 0.25 * (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:])
        d = np.where(interior, avg, 0.0)
    t = np.clip(dist / rim, 0.0, 1.0)
    w = t * t * (3.0 - 2.0 * t)
    return np.where(interior, (1.0 - w) * dist + w * d, 0.0)


def _heights(dist: np.ndarray, step: tuple[float, float], long_side: float, full_frame: bool,
             inflation: float, detail: float, lum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Front and back height (>= 0, both zero on the silhouette) from the inward distance.

    The object bulges like a pillow: a quarter-circle profile of the distance to the
    silhouette. The plate has constant thickness with a rounded rim.
    """
    if full_frame:
        thickness = _PLATE_THICKNESS * inflation * long_side
        radius = max(thickness, 1.5 * max(step))
    else:
        radius = max(float(dist.max()), 1e-9)
        thickness = inflation * radius
    t = np.minimum(dist / radius, 1.0)
    back = thickness * np.sqrt(1.0 - (1.0 - t) ** 2)
    ramp = max(0.3 * radius, 1.5 * max(step))
    s = np.minimum(dist / ramp, 1.0)
    fade = s * s * (3.0 - 2.0 * s)  # smoothstep: relief is zero on the silhouette
    front = back + detail * _DETAIL_DEPTH * thickness * lum * fade
    return front, back


def _undo_folds(original: np.ndarray, moved: np.ndarray, faces: np.ndarray, min_area: float) -> np.ndarray:
    """Pull back the moved nodes of any triangle that became too small or flipped.

    Each round halves the offending nodes' moves; after a few rounds they go back to the
    lattice, where every triangle is valid, so this always ends with a valid mesh.
    """
    out = moved.copy()
    for attempt in range(6):
        bad = _signed_area(out, faces) < min_area
        if not bad.any():
            return out
        nodes = np.unique(faces[bad])
        keep = 0.5 if attempt < 5 else 0.0
        out[nodes] = original[nodes] + keep * (out[nodes] - original[nodes])
    return out if not (_signed_area(out, faces) < min_area).any() else original


def _signed_area(xy: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Triangle areas in a y-up frame (xy is y-down, hence the sign)."""
    a, b, c = xy[faces[:, 0]], xy[faces[:, 1]], xy[faces[:, 2]]
    return -0.5 * ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))


def _build_shell(cells: np.ndarray, width: int, height: int, outline: _Outline | None,
                 inflation: float, detail: float, lum: np.ndarray) -> _Shell:
    """Closed two-sided shell over the cell mask (see module docstring for the layout)."""
    rows, cols = cells.shape
    used, interior = _lattice_nodes(cells)
    node_rows, node_cols = used.shape
    step = (height / (2 * rows), width / (2 * cols))  # (y, x) lattice spacing in pixels

    # Each mask cell: 8 triangles from its centre node to its ring of 8 nodes.
    ci, cj = np.nonzero(cells)
    base = (2 * ci) * node_cols + 2 * cj
    ring = np.array([r * node_cols + c for r, c in _RING])
    centre = np.repeat(base + node_cols + 1, len(_RING))
    here = (base[:, None] + ring[None, :]).ravel()
    after = (base[:, None] + np.roll(ring, -1)[None, :]).ravel()
    front_nodes = np.column_stack([centre, after, here])  # counter-clockwise seen from +z
    back_nodes = np.column_stack([centre, here, after])

    # Vertex numbering: every used node has a front vertex; only interior nodes get a
    # separate back vertex, silhouette nodes are shared, which closes the shell.
    used_flat, interior_flat = used.ravel(), interior.ravel()
    n_front = int(used_flat.sum())
    front_index = np.full(used_flat.size, -1, dtype=np.int64)
    front_index[used_flat] = np.arange(n_front)
    back_index = front_index.copy()
    back_index[interior_flat] = n_front + np.arange(int(interior_flat.sum()))

    rr, cc = np.mgrid[0:node_rows, 0:node_cols]
    xy = np.column_stack([cc.ravel() * step[1], rr.ravel() * step[0]]).astype(np.float64)
    if outline is None:
        dist = ndimage.distance_transform_edt(interior, sampling=step)
    else:
        seam = used & ~interior
        xy = _fit_silhouette(xy, seam, interior, outline, step, front_nodes, (width, height))
        floor = 0.35 * min(step)
        dist = np.maximum(outline.distance(xy), floor).reshape(used.shape)
        dist = _soften_ridges(dist, interior, 4.0 * max(step))
    front_h, back_h = _heights(dist, step, max(width, height), outline is None, inflation, detail, lum)

    front_nodes_used = np.flatnonzero(used_flat)
    back_nodes_used = np.flatnonzero(interior_flat)
    vertices = np.concatenate([
        np.column_stack([xy[front_nodes_used], front_h.ravel()[front_nodes_used]]),
        np.column_stack([xy[back_nodes_used], -back_h.ravel()[back_nodes_used]]),
    ])
    faces = np.concatenate([front_index[front_nodes], back_index[back_nodes]])
    is_back = np.arange(len(vertices)) >= n_front
    return _Shell(vertices, faces, is_back)


def _node_luminance(src: Image.Image, node_cols: int, node_rows: int) -> np.ndarray:
    """Image brightness (0..1) sampled at the lattice nodes, smoothed by the downscale."""
    grey = src.convert("L").resize((node_cols, node_rows), Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=np.float64) / 255.0


# --------------------------------------------------------------------------- texture


def _texture_box(cells: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel box around the object (plus one cell), so the texture spends pixels on it."""
    rows, cols = cells.shape
    r, c = np.nonzero(cells)
    cell_w, cell_h = width / cols, height / rows
    left = max(0, math.floor((c.min() - 1) * cell_w))
    top = max(0, math.floor((r.min() - 1) * cell_h))
    right = min(width, math.ceil((c.max() + 2) * cell_w))
    bottom = min(height, math.ceil((r.max() + 2) * cell_h))
    return left, top, right, bottom


def _make_texture(src: Image.Image, sep: _Separation, cells: np.ndarray,
                  box: tuple[int, int, int, int]) -> Image.Image:
    """RGB texture of the box, at most TEXTURE_MAX_SIDE, with object colours bled outward.

    Bleeding replaces background pixels by the nearest object colour, so the rim and
    the texture's mipmaps never pick up the removed background.
    """
    crop = _shrink(src.crop(box), TEXTURE_MAX_SIDE)
    rgb = np.asarray(crop.convert("RGB"))
    if sep.mask is None:
        return Image.fromarray(rgb, "RGB")
    size = crop.size
    if sep.source == "alpha":
        valid = np.asarray(crop.getchannel("A")) >= 128
    else:
        valid = _resize_mask(sep.colour_mask if sep.colour_mask is not None else sep.mask, src.size, box, size)
    near_object = ndimage.binary_dilation(_resize_mask(cells, src.size, box, size), iterations=2)
    # Edge pixels mix object and background (blur, JPEG ringing, and the mask errs a
    # little outward), so only colours from a few pixels inside are trusted.
    texels_per_mask_pixel = size[0] / ((box[2] - box[0]) * sep.mask.shape[1] / src.size[0])
    margin = 1 + math.ceil(1.5 * texels_per_mask_pixel)
    valid &= near_object
    trusted = ndimage.binary_erosion(valid, iterations=margin)
    valid = trusted if trusted.any() else valid  # a sliver of an object: use what there is
    if not valid.any():
        return Image.fromarray(rgb, "RGB")
    iy, ix = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return Image.fromarray(rgb[iy, ix], "RGB")


def _resize_mask(mask: np.ndarray, frame: tuple[int, int], box: tuple[int, int, int, int],
                 size: tuple[int, int]) -> np.ndarray:
    """The part of `mask` (covering the whole frame) under `box`, resampled to `size`."""
    sx, sy = mask.shape[1] / frame[0], mask.shape[0] / frame[1]
    region = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    img = Image.fromarray(mask.astype(np.uint8) * 255, "L")
    return np.asarray(img.resize(size, Image.Resampling.BILINEAR, box=region)) >= 128


def _jpeg(image: Image.Image) -> Image.Image:
    """Round-trip through JPEG: trimesh embeds a JPEG-format image as JPEG (re-encoded at
    its default quality, 75) instead of PNG, which would be several times bigger."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out


# --------------------------------------------------------------------------- export


def _place(vertices: np.ndarray) -> np.ndarray:
    """Image pixels to glTF: Y up, front towards +Z, centred, largest dimension 1."""
    out = np.column_stack([vertices[:, 0], -vertices[:, 1], vertices[:, 2]])
    lo, hi = out.min(axis=0), out.max(axis=0)
    out -= (lo + hi) / 2
    return out / max(float((hi - lo).max()), 1e-12)


def _export_glb(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray,
                is_back: np.ndarray, texture: Image.Image) -> bytes:
    """Textured GLB with a matte PBR material and the back shaded by vertex colours."""
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=texture, metallicFactor=0.0, roughnessFactor=0.9, doubleSided=False)
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    shade = np.where(is_back, _BACK_SHADE, 255).astype(np.uint8)
    visual.vertex_attributes["color"] = np.column_stack([shade, shade, shade, np.full_like(shade, 255)])
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, visual=visual, process=False, validate=False)
    return mesh.export(file_type="glb", include_normals=True)


# --------------------------------------------------------------------------- entry point


def generate_relief(image: Image.Image, *, resolution: int = 160, inflation: float = 0.35,
                    detail: float = 0.15, bg_tolerance: float = 0.12,
                    progress: Callable[[float, str], None] | None = None) -> ReliefResult:
    """Turn one image into a closed, textured, puffed-up model of its main object (GLB bytes)."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"image must be a PIL image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError("image must not be empty")
    _validate(resolution, inflation, detail, bg_tolerance)
    resolution, inflation, detail, bg_tolerance = int(resolution), float(inflation), float(detail), float(bg_tolerance)
    report = progress or (lambda fraction, message: None)

    report(0.0, STAGES[0])
    src = _prepare_source(image)
    width, height = src.size
    sep = _separate(src, resolution, bg_tolerance)
    cells = _cell_mask(sep, *_grid_shape(width, height, resolution))
    if not cells.any():
        sep = _Separation(None, "full_frame")
        cells = np.ones_like(cells)

    report(0.3, STAGES[1])
    lum = _node_luminance(src, 2 * cells.shape[1] + 1, 2 * cells.shape[0] + 1)
    outline = None if sep.mask is None else _Outline(sep.mask, (width, height))
    shell = _build_shell(cells, width, height, outline, inflation, detail, lum)

    report(0.55, STAGES[2])
    box = _texture_box(cells, width, height)
    texture = _jpeg(_make_texture(src, sep, cells, box))
    uv = np.column_stack([
        (shell.vertices[:, 0] - box[0]) / (box[2] - box[0]),
        1.0 - (shell.vertices[:, 1] - box[1]) / (box[3] - box[1]),
    ]).clip(0.0, 1.0)

    report(0.8, STAGES[3])
    glb = _export_glb(_place(shell.vertices), shell.faces, uv, shell.is_back, texture)
    return ReliefResult(glb=glb, vertices=len(shell.vertices), faces=len(shell.faces), mask_source=sep.source)
