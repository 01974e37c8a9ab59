"""Finding the object: the alpha channel; else background removal from the border when the
border is plain; else a close-up's sharp subject (focus.py); else background removal or GrabCut
(segmentation.py), whichever looks most like an object; else none (the whole frame)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

from image2model.providers.relief import focus, segmentation
from image2model.providers.relief.loading import shrink

# A border-colour mask scoring this well is a plain backdrop: taken as it is, no GrabCut.
BACKDROP_SCORE = 0.6
# A border whose colour model fits this share of it is a backdrop (a night sky, a wall):
# what its colour does not reach is the object, however thin (a rocket between towers,
# which GrabCut trades for a patch of sky). Below, the border is a mix (a uniform below, a
# flag above) and GrabCut's candidates compete.
PLAIN_BORDER = 0.8
PLAIN_MIN_EDGES = 3.0  # objects on a backdrop: 4 to 24 on the photos tried; a cut through fur: 1.9
# A candidate holding NESTED_SHARE of the best one and scoring NESTED_SCORE of it is preferred.
NESTED_SHARE, NESTED_SCORE = 0.9, 0.9
# A close-up's subject may fill nearly all the frame but must leave some background.
CLOSEUP_MAX_FRACTION = 0.97


@dataclass(frozen=True)
class Separation:
    mask: np.ndarray | None  # bool at analysis size, None for the full-frame plate
    source: str
    # Pixels whose colour belongs to the object (no closing, so no background caught in
    # concave corners); the texture takes colours only from these. None: use the mask.
    colour_mask: np.ndarray | None = None
    # Background seen through the object (a mug handle's eye), or a pale logo: `mask` has
    # them filled. Only a part that stands out of a turned body gets them cut (revolve.py).
    holes: np.ndarray | None = None


def _analysis_side(resolution: int) -> int:
    """Long side of the image used for mask analysis: a few pixels per grid cell."""
    return max(256, 4 * resolution)


def separate(src: Image.Image, resolution: int, tolerance: float, background: str = "auto") -> Separation:
    """Find the object: alpha first; else the best-scoring of background removal and GrabCut.

    `background="keep"` skips removal (the whole frame), `"remove"` takes the best
    candidate even when it scores too low to be trusted on its own.
    """
    small = shrink(src, _analysis_side(resolution))
    if background == "keep":
        return Separation(None, "full_frame")
    if small.mode == "RGBA":
        alpha = np.asarray(small.getchannel("A"))
        if (alpha < 128).mean() > 0.001:
            opaque = _clean(alpha >= 128)
            mask = keep_object(opaque)
            if not _plausible(mask, 0.0005):
                return Separation(None, "full_frame")
            return Separation(mask, "alpha", holes=_sizeable(mask & ~opaque, mask))
    rgb = np.asarray(small.convert("RGB"), dtype=np.float32) / 255.0
    # Candidates are judged on a smaller copy (scoring at full analysis size cost half the
    # time of a 12 MP photo and chose the same masks); only the winner is made at full size.
    judge = cv2.resize(rgb, segmentation.judging_size(rgb.shape), interpolation=cv2.INTER_AREA)
    fit = _fit_border(ndimage.gaussian_filter(rgb, sigma=(1.0, 1.0, 0.0), mode="nearest"), tolerance)
    plain = _on_plain_border(judge, tolerance, fit) if fit is not None else None
    if plain is not None:
        return plain
    # A border less than half of which fits one colour is no backdrop: a full-frame photo.
    found = _grow_border(fit, tolerance) if fit is not None and fit.agreement >= 0.5 else None
    seed = found.shape if found is not None and _plausible(found.shape, 0.005) else None
    candidates: list[segmentation.Candidate] = []
    if seed is not None:
        backdrop = segmentation.Candidate(seed, "background", segmentation.score(_resized(seed, judge.shape), judge))
        if backdrop.score >= BACKDROP_SCORE:
            return Separation(seed, "background", found.colour, found.holes)  # a clean cut-out: exact as it is
        candidates.append(backdrop)
    for mask in segmentation.grabcut_candidates(rgb, seed, judge.shape):
        mask = keep_object(_clean(mask))
        candidates.append(segmentation.Candidate(mask, "grabcut", segmentation.score(mask, judge)))
    best = _best(candidates)
    closeup = _closeup(rgb, judge, best)
    if closeup is not None:
        return Separation(keep_object(_clean(_resized(closeup, rgb.shape))), "grabcut")
    if best is None or best.score <= 0.0 or (best.score < segmentation.MIN_SCORE and background != "remove"):
        return Separation(None, "full_frame")
    if best.source == "background" and found is not None:
        return Separation(seed, best.source, found.colour, found.holes)
    return Separation(keep_object(_clean(_resized(best.mask, rgb.shape))), best.source)


def _best(candidates: list[segmentation.Candidate]) -> segmentation.Candidate | None:
    """The top scorer, unless a bigger candidate holding it scores nearly as well (NESTED_SCORE).

    The smaller of two nested masks is most often a part of the object (a suit without the
    helmet its wearer holds), and the scores of such pairs differ by less than a photo's
    JPEG compression moves them.
    """
    best = max(candidates, key=lambda c: c.score, default=None)
    if best is None:
        return None
    holders = [c for c in candidates if c.mask.sum() > best.mask.sum() and c.score >= NESTED_SCORE * best.score
               and (c.mask & best.mask).sum() >= NESTED_SHARE * best.mask.sum()]
    return max(holders, key=lambda c: c.mask.sum(), default=best)


def _on_plain_border(judge: np.ndarray, tolerance: float, fit: BorderFit) -> Separation | None:
    """On a plain border (PLAIN_BORDER), what a curved backdrop surface leaves: the object.

    Unless its outline runs through texture rather than along edges (PLAIN_MIN_EDGES): then
    the "plain" border was fur or grass that one colour surface happens to fit.
    """
    if fit.agreement < PLAIN_BORDER:
        return None
    bent = _fit_border(fit.smooth, tolerance, curved=True)
    if bent is None:
        return None
    curved = _grow_border(bent, tolerance, keep=_standing_piece)
    if not _plausible(curved.shape, segmentation.MIN_FRACTION):
        return None
    if segmentation.edge_strength(_resized(curved.shape, judge.shape), judge) < PLAIN_MIN_EDGES:
        return None
    return Separation(curved.shape, "background", curved.colour, curved.holes)


def _standing_piece(mask: np.ndarray) -> np.ndarray:
    """On a backdrop, of the pieces clear of the top and the sides (they may stand on the
    bottom) and at least half the largest piece's size, the one nearest the frame's centre,
    holes filled; without such a piece, the largest.

    A backdrop's surface fits less well where the frame cuts it: a patch of sky brightening
    towards the horizon can be as big as a thin rocket standing in the middle.
    """
    labels, sizes = _pieces(mask)
    if len(sizes) <= 2:  # one piece or none
        return labels > 0
    against_frame = set(np.unique(np.concatenate([labels[0], labels[:, 0], labels[:, -1]])).tolist())
    standing = [i for i in range(1, len(sizes)) if i not in against_frame and sizes[i] >= 0.5 * sizes.max()]
    if not standing:
        return labels == int(np.argmax(sizes))
    centres = ndimage.center_of_mass(labels > 0, labels, standing)
    h, w = mask.shape
    off_centre = [abs(x / w - 0.5) + abs(y / h - 0.5) for y, x in centres]
    return labels == standing[int(np.argmin(off_centre))]


def _closeup(rgb: np.ndarray, judge: np.ndarray, best: segmentation.Candidate | None) -> np.ndarray | None:
    """The subject of a close-up with a blurred background, when the photo is one (focus.py).

    Taken over the scored candidates, which cannot reach the frame's edge, when it is the
    sharp part of the photo: MIN_FOCUS_RATIO times sharper than the rest, and sharper than
    the best candidate's inside (a flower on blurred leaves that does not fill the frame is
    found better by the candidates). A fur cut-out's outline is soft, so no edge test.
    """
    fine = focus.fine_detail(judge)
    side = focus.defocused_side(judge, fine)
    if side is None:
        return None
    mask = segmentation.grabcut_from_side(rgb, side, judge.shape)
    if mask is None:
        return None
    mask = keep_object(_clean(mask))
    if not (segmentation.MIN_FRACTION <= mask.mean() <= CLOSEUP_MAX_FRACTION):
        return None
    ratio = focus.focus_ratio(mask, fine)
    rival = focus.focus_ratio(best.mask, fine) if best is not None and best.score > 0 else 0.0
    if ratio < focus.MIN_FOCUS_RATIO or ratio <= rival:
        return None
    return mask


def _resized(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A mask at another size (rows, columns of `shape`), its outline smoothly resampled."""
    size = (shape[1], shape[0])
    return cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) >= 0.5


def _plausible(mask: np.ndarray, min_fraction: float) -> bool:
    """An object mask is usable unless it is (almost) empty or (almost) the whole frame."""
    fraction = float(mask.mean())
    return min_fraction <= fraction <= 0.97 and int(mask.sum()) >= 4


def border(a: np.ndarray, width: int) -> np.ndarray:
    """Boolean ring of `width` pixels around the frame."""
    ring = np.ones(a.shape[:2], dtype=bool)
    ring[width:-width, width:-width] = False
    return ring


@dataclass(frozen=True)
class BorderFit:
    """A colour surface fitted to the frame's border: the backdrop as the border shows it."""
    smooth: np.ndarray  # the photo, lightly blurred (what is compared with the surface)
    coef: np.ndarray  # (terms, 3): the surface's colour per _surface_terms term
    curved: bool
    agreement: float  # share of the border the surface fits: 1 for a plain backdrop


@dataclass(frozen=True)
class BorderGrown:
    """What growing the border's colour inward found (all bool, at the analysis size)."""
    shape: np.ndarray  # the object: what the border's colour did not reach, cleaned, holes filled
    colour: np.ndarray  # within it, the pixels truly unlike the border (the texture trusts only these)
    holes: np.ndarray  # patches of the border's colour the object encloses (a handle's eye)


def _fit_border(smooth: np.ndarray, tolerance: float, curved: bool = False) -> BorderFit | None:
    """The backdrop's colour surface, fitted to the border of `smooth` (the photo, lightly
    blurred) robustly, twice; None for a photo too small or too few border pixels to fit.

    A colour plane (constant plus linear gradient), so soft studio lighting gradients still
    count as background; `curved` adds squared terms, for a sky brightening towards the
    horizon. Only a plain border gets those: fitted to a mixed one, they bend through the
    middle of the photo.
    """
    h, w, _ = smooth.shape
    if min(h, w) < 4:
        return None
    ring = border(smooth, max(1, round(0.02 * min(h, w))))
    ys, xs = np.nonzero(ring)
    colours = smooth[ring]
    design = np.column_stack(_surface_terms(xs / w - 0.5, ys / h - 0.5, curved))
    inliers = colour_distance(colours, np.median(colours, axis=0)) < 2 * tolerance
    for _ in range(2):
        if inliers.sum() < 3:
            return None
        coef, *_ = np.linalg.lstsq(design[inliers], colours[inliers], rcond=None)
        inliers = colour_distance(colours, design @ coef) < tolerance
    return BorderFit(smooth, coef.astype(np.float32), curved, float(inliers.mean()))


def _grow_border(fit: BorderFit, tolerance: float,
                 keep: Callable[[np.ndarray], np.ndarray] | None = None) -> BorderGrown:
    """Object mask by growing the fitted backdrop's colour in from the frame; `keep` picks
    the object among what is left (by default keep_object: the largest piece)."""
    smooth = fit.smooth
    h, w = smooth.shape[:2]
    u = (np.arange(w, dtype=np.float32) / w - 0.5)[None, :, None]
    v = (np.arange(h, dtype=np.float32) / h - 0.5)[:, None, None]
    # Term by term, broadcast: a matrix product here would start BLAS threads (an item gets one core).
    background = sum(term * c for term, c in zip(_surface_terms(u, v, fit.curved), fit.coef))
    close = colour_distance(smooth, background) < tolerance
    labels, _ = ndimage.label(close)
    touching = np.unique(labels[border(labels, 1)])
    touching = touching[touching > 0]
    obj = ~np.isin(labels, touching)
    shape = (keep or keep_object)(_clean(obj))
    return BorderGrown(shape, shape & obj, _sizeable(shape & close, shape))


def _surface_terms(u: np.ndarray, v: np.ndarray, curved: bool) -> list[np.ndarray]:
    """The terms of the background's colour surface at positions (u, v), -0.5..0.5 (arrays
    of one shape, or a row and a column that broadcast to the grid)."""
    return [np.ones_like(u), u, v] + ([u * u, v * v] if curved else [])


def _sizeable(patches: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The patches big enough to be a real opening (specks and seams along edges are not)."""
    opened = ndimage.binary_opening(patches, iterations=max(1, round(0.005 * max(mask.shape))))
    labels, count = ndimage.label(opened)
    if count == 0:
        return opened
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return np.isin(labels, np.flatnonzero(sizes >= max(9, 0.002 * mask.sum())))


def colour_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean RGB distance scaled to 0..1."""
    return np.sqrt(((a - b) ** 2).sum(axis=-1)) / math.sqrt(3.0)


def _clean(mask: np.ndarray) -> np.ndarray:
    """Remove specks and close hairline gaps; the frame edge counts as 'same as next pixel'."""
    padded = np.pad(mask, 2, mode="edge")
    square = np.ones((3, 3), dtype=bool)
    padded = ndimage.binary_opening(padded, structure=square)
    padded = ndimage.binary_closing(padded, structure=square)
    return padded[2:-2, 2:-2]


def keep_object(mask: np.ndarray) -> np.ndarray:
    """Fill holes and keep the largest piece (object and background both 4-connected)."""
    labels, sizes = _pieces(mask)
    return labels == int(np.argmax(sizes)) if len(sizes) > 2 else labels > 0


def _pieces(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mask's pieces, holes filled: their labels (0 outside) and sizes by label (0 for 0)."""
    labels, _ = ndimage.label(ndimage.binary_fill_holes(mask))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels, sizes

