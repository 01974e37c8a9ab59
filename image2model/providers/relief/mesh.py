"""The closed shell: a front and a back sheet on a lattice over the object's cells."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from image2model.providers.relief.separation import Separation, keep_object

_RIM_SWEEPS = 20  # smoothing sweeps for the lattice rows next to the rim
_RELAX_ITERATIONS = 30  # ridge softening of the distance field, in lattice sweeps
_DETAIL_DEPTH = 0.6  # relief of a white pixel at detail=1, relative to the half-thickness
_PLATE_THICKNESS = 0.08  # full-frame plate: half-thickness per unit inflation, of the long side


# --------------------------------------------------------------------------- grid mask


def grid_shape(width: int, height: int, resolution: int) -> tuple[int, int]:
    """Mask cells (columns, rows); each mask cell becomes 2x2 lattice cells.

    `resolution` counts lattice cells along the long side, but a mask cell never gets
    smaller than a source pixel: a 16-pixel icon has nothing finer to show.
    """
    long_cells = max(2, min(round(resolution / 2), max(width, height)))
    short_cells = max(1, round(long_cells * min(width, height) / max(width, height)))
    return (long_cells, short_cells) if width >= height else (short_cells, long_cells)


def cell_mask(sep: Separation, cols: int, rows: int) -> np.ndarray:
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
    return keep_object(cells)


# --------------------------------------------------------------------------- mesh


# The 3x3 lattice nodes of one mask cell, around its centre (row, column offsets).
_RING = ((0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0))


@dataclass(frozen=True)
class Shell:
    vertices: np.ndarray  # (n, 3) image pixel units: x right, y down, z towards the viewer
    faces: np.ndarray  # (m, 3) int, outward winding in a y-up frame
    back_faces: np.ndarray  # (m,) bool, faces of the back sheet (not in the photo)


def _lattice_nodes(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Used lattice nodes, and interior ones (all four lattice cells around them inside).

    The lattice has 2x2 cells per mask cell; a used node that is not interior lies on
    the silhouette.
    """
    fine = cells.repeat(2, axis=0).repeat(2, axis=1)
    pad = np.pad(fine, 1).astype(np.uint8)
    touching = pad[:-1, :-1] + pad[:-1, 1:] + pad[1:, :-1] + pad[1:, 1:]
    return touching > 0, touching == 4


class Outline:
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


def _fit_silhouette(xy: np.ndarray, seam: np.ndarray, interior: np.ndarray, outline: Outline,
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


def _move_to_level(outline: Outline, pts: np.ndarray, level: float, limit: float) -> np.ndarray:
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
    silhouette, reaching its full height where the object is thickest. How high that is
    follows the object's overall size (the radius of a disc of the same area), not just
    its thickest point, so a compact but elongated object (a duck, a cat's head) gets a
    body rather than a biscuit; at most the thickest point's full width, so thin things
    stay round in section instead of becoming fins. The plate has constant thickness
    with a rounded rim.
    """
    if full_frame:
        thickness = _PLATE_THICKNESS * inflation * long_side
        radius = max(thickness, 1.5 * max(step))
    else:
        radius = max(float(dist.max()), 1e-9)
        disc_radius = math.sqrt(float((dist > 0).sum()) * step[0] * step[1] / math.pi)
        thickness = inflation * min(disc_radius, 2.0 * radius)
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


def build_shell(cells: np.ndarray, width: int, height: int, outline: Outline | None,
                 inflation: float, detail: float, lum: np.ndarray) -> Shell:
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
    back_faces = np.arange(len(faces)) >= len(front_nodes)
    return Shell(vertices, faces, back_faces)


def node_luminance(src: Image.Image, node_cols: int, node_rows: int) -> np.ndarray:
    """Image brightness (0..1) sampled at the lattice nodes, smoothed by the downscale."""
    grey = src.convert("L").resize((node_cols, node_rows), Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=np.float64) / 255.0
