"""Solids of revolution for objects that are turned on a wheel: cups, vases, bottles, bowls.

A photo of such an object shows its profile: for each row, the distance from a vertical
axis to the outline. Spinning that profile around the axis gives the object's real depth
(as deep as it is wide) instead of a pillow. Parts that stick out of the spun body (a
mug's handle) are left for the relief builder, which makes them as flat pieces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# The spun body must explain this share of the silhouette for `shape=auto` to choose it.
AUTO_FIT = 0.78
# ... and, without its handle, be this close to its own mirror image about the axis (IoU).
# The drawn mug and vase and a bottle score 0.99+; the scikit-image cup on its saucer,
# seen from above, 0.92-0.97 (it varies with the cut-out), and spun it would be a lens:
# when unsure, a puffed relief never looks absurd, a wrongly spun model does.
AUTO_SYMMETRY = 0.975
# ... and not be much wider than tall. A cup on a saucer photographed from above has a
# symmetric outline too (an ellipse); spun, it would become a lens. From the outline alone
# it cannot be told from a bowl seen from the side, so wide, low outlines are puffed up.
AUTO_MAX_ASPECT = 1.2
_PIECE_MIN_SHARE = 0.02  # of the silhouette: smaller leftovers are outline noise, not a handle


@dataclass(frozen=True)
class Profile:
    """The spun body, in analysis-mask pixels (x right, y down)."""

    axis: float  # x of the axis
    top: int  # first mask row of the body
    radii: np.ndarray  # per row from `top`: distance from the axis to the outline (> 0)
    fit: float  # share of the silhouette inside the body
    body: np.ndarray  # bool mask of the body's silhouette
    twice_axis: int  # 2 * axis, exact (the axis may lie between two columns)


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel, the first and last column of its row's run of mask pixels."""
    cols = np.arange(mask.shape[1])
    left = np.maximum.accumulate(np.where(mask, 0, cols + 1), axis=1)
    right = np.minimum.accumulate(np.where(mask, mask.shape[1] - 1, cols - 1)[:, ::-1], axis=1)[:, ::-1]
    return left, right


def fit_profile(mask: np.ndarray) -> Profile | None:
    """The body of revolution about the silhouette's axis of mirror symmetry.

    Every row votes for the midpoint of its outline; the axis is the most agreed-on
    midpoint, so a handle (whose rows vote all over the place, as its outline curves)
    does not pull it over. The body is, row by row, as wide as fits inside the outline
    on both sides of the axis.
    """
    if mask.sum() < 16:
        return None
    w = mask.shape[1]
    filled = np.flatnonzero(mask.any(axis=1))
    left = mask[filled].argmax(axis=1)
    right = w - 1 - mask[filled, ::-1].argmax(axis=1)
    votes = np.bincount(left + right, minlength=2 * w)  # index: twice the midpoint
    twice = int(np.argmax(ndimage.gaussian_filter1d(votes.astype(float), max(1.0, 0.01 * w))))
    axis = twice / 2
    lo, hi = _runs(mask)
    col, col2 = int(np.floor(axis)), int(np.ceil(axis))
    inside = mask[:, col] & mask[:, col2]
    rows = np.where(inside, np.minimum(axis - lo[:, col], hi[:, col2] - axis) + 0.5, 0.0)
    labels, count = ndimage.label(rows > 0)
    if count == 0:
        return None
    piece = int(np.argmax(ndimage.sum(rows, labels, range(1, count + 1)))) + 1
    span = np.flatnonzero(labels == piece)
    top, radii = int(span[0]), rows[span[0]: span[-1] + 1]
    radii = ndimage.gaussian_filter1d(ndimage.median_filter(radii, size=5, mode="nearest"), 1.0, mode="nearest")
    cols = np.arange(w)
    body = np.zeros_like(mask)
    body[top: top + len(radii)] = np.abs(cols[None, :] - axis) < radii[:, None]
    fit = float((body & mask).sum() / mask.sum())
    return Profile(axis, top, radii, fit, body, twice)


def symmetry(mask: np.ndarray, profile: Profile) -> float:
    """IoU of the silhouette and its mirror image about the axis."""
    mirrored = _mirror(mask, profile.twice_axis)
    return float((mask & mirrored).sum() / max((mask | mirrored).sum(), 1))


def suits_revolve(mask: np.ndarray, profile: Profile, pieces: list[np.ndarray],
                  holes: np.ndarray | None = None) -> bool:
    """Turned on a wheel: one body, at most one handle, mirror-symmetric without it (and
    without the handle's eye), and not a wide, low outline."""
    if len(pieces) > 1 or profile.fit < AUTO_FIT:
        return False
    if 2 * float(profile.radii.max()) > AUTO_MAX_ASPECT * len(profile.radii):
        return False
    if not pieces:
        return symmetry(mask, profile) >= AUTO_SYMMETRY
    handle = pieces[0] if holes is None else pieces[0] | (holes & ~profile.body)
    return symmetry(mask & ~handle | profile.body, profile) >= AUTO_SYMMETRY


def _mirror(mask: np.ndarray, twice: int) -> np.ndarray:
    """The mask reflected about x = twice/2 (columns falling outside the frame are dropped)."""
    w = mask.shape[1]
    src = twice - np.arange(w)
    out = np.zeros_like(mask)
    ok = (src >= 0) & (src < w)
    out[:, ok] = mask[:, src[ok]]
    return out


def leftover_pieces(mask: np.ndarray, profile: Profile, holes: np.ndarray | None = None) -> list[np.ndarray]:
    """Parts of the silhouette outside the body big enough to model (a handle), each
    grown a little into the body so that the two overlap instead of touching.

    `holes` (background seen through the silhouette) are cut out of them: a handle's eye
    stays open. Inside the body they are left alone (a pale logo looks just like one).
    """
    rest = mask & ~profile.body
    if holes is not None:
        rest &= ~holes
    size = max(2, round(0.01 * max(mask.shape)))
    rest = ndimage.binary_opening(rest, iterations=size)  # slivers where the outline wobbles
    labels, count = ndimage.label(rest)
    pieces = []
    reach = max(2, round(0.25 * float(profile.radii.max())))
    for k in range(1, count + 1):
        piece = labels == k
        if piece.sum() < _PIECE_MIN_SHARE * mask.sum():
            continue
        grown = ndimage.binary_dilation(piece, iterations=reach) & (profile.body | piece)
        pieces.append(grown if holes is None else grown & ~holes)
    return pieces


@dataclass(frozen=True)
class Lathe:
    vertices: np.ndarray  # (n, 3) source pixels: x right, y down, z towards the viewer
    faces: np.ndarray  # (m, 3), outward in a y-up frame
    back_faces: np.ndarray  # (m,) bool: faces turned away from the camera (not in the photo)


def lathe_segments(resolution: int) -> int:
    """Steps around the axis: as fine as the relief's lattice, and a multiple of 4 so
    that the front/back seam lies on ring vertices."""
    return 4 * max(6, min(32, round(resolution / 10)))


def build_lathe(profile: Profile, scale: float, rows: int, segments: int) -> Lathe:
    """Spin the profile: `rows` rings down the body, capped top and bottom on the axis.

    `scale` converts analysis pixels to source pixels.
    """
    n = len(profile.radii)
    rows = max(2, min(rows, n))
    at = np.linspace(0.0, n - 1, rows)  # sample positions along the profile, in mask rows
    radius = np.interp(at, np.arange(n), profile.radii) * scale
    y = (profile.top + at + 0.5) * scale
    x_axis = (profile.axis + 0.5) * scale
    theta = 2 * np.pi * np.arange(segments) / segments  # 0 faces the viewer (+z)
    ring_x = x_axis + radius[:, None] * np.sin(theta)[None, :]
    ring_z = radius[:, None] * np.cos(theta)[None, :]
    ring_y = np.repeat(y[:, None], segments, axis=1)
    # the caps sit half a row beyond the end rings, so the end rows keep their radius
    top_cap = [x_axis, (profile.top) * scale, 0.0]
    bottom_cap = [x_axis, (profile.top + n) * scale, 0.0]
    vertices = np.vstack([np.column_stack([ring_x.ravel(), ring_y.ravel(), ring_z.ravel()]),
                          [top_cap, bottom_cap]])
    top_i, bottom_i = rows * segments, rows * segments + 1

    j = np.arange(segments)
    jn = (j + 1) % segments
    quads = []
    for r in range(rows - 1):
        a, b = r * segments + j, r * segments + jn  # this ring
        c, d = a + segments, b + segments  # the ring below
        quads.append(np.column_stack([a, c, b]))
        quads.append(np.column_stack([b, c, d]))
    last = (rows - 1) * segments
    faces = np.vstack(quads + [np.column_stack([np.full(segments, top_i), j, jn]),
                               np.column_stack([np.full(segments, bottom_i), last + jn, last + j])])
    # Winding: theta grows from +z towards +x; in the y-up frame that is clockwise seen
    # from above, which the order above turns outward. Checked by the tests (volume > 0).
    mid = np.concatenate([np.tile((j + 0.5) / segments, 2 * (rows - 1)), (j + 0.5) / segments,
                          (j + 0.5) / segments])
    back = np.cos(2 * np.pi * mid) < 0
    return Lathe(vertices, faces.astype(np.int64), back)
