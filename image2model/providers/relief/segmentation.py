"""Finding the object on an ordinary photo: GrabCut candidates, scored, the best one kept.

The border-colour method only works on a plain backdrop. On a photo (a cup on a wooden
table, a cat, a person in a room) GrabCut separates far better, but it needs seeds and can
settle on the wrong thing, so several seedings are tried and each resulting mask is scored
on what an object mask looks like: a sensible size, compact, not hugging the frame (beyond
what a subject cut by one side does), a colour distribution unlike the rest of the photo,
and an outline that follows edges in the photo. No model weights are involved. A close-up
that fills the frame is found another way (focus.py, separation.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from image2model.providers.relief import focus

cv2.setNumThreads(1)  # an item gets one core (providers/local.py CPU_SLOTS); no thread pool of its own

GRABCUT_SIDE = 160  # long side GrabCut runs at: 2 px per mesh cell at default resolution; cheap
GRABCUT_ITERATIONS = 2
JUDGING_SIDE = 320  # long side candidates are scored at
MIN_FRACTION, MAX_FRACTION = 0.015, 0.85  # an object fills this share of the frame
PREFERRED_FRACTION = 0.25  # smaller masks are scored down: more likely a detail (an eye) than the subject
MIN_SCORE = 0.22  # below this no candidate looks like an object: use the whole frame


@dataclass(frozen=True)
class Candidate:
    mask: np.ndarray  # bool, at the size of the image it was scored on
    source: str  # "background" | "grabcut"
    score: float


def judging_size(shape: tuple[int, ...]) -> tuple[int, int]:
    """(width, height) of the copy candidates are scored on."""
    h, w = shape[:2]
    scale = min(1.0, JUDGING_SIDE / max(h, w))
    return max(8, round(w * scale)), max(8, round(h * scale))


def grabcut_candidates(rgb: np.ndarray, seed: np.ndarray | None,
                       out_shape: tuple[int, ...] | None = None) -> list[np.ndarray]:
    """Object masks from GrabCut on a downscaled copy, one per seeding, at `out_shape`
    (default: `rgb`'s size).

    `rgb` is float 0..1 (h, w, 3); `seed` is the border-colour method's mask, if any.
    Seedings: that mask, or without one background along the top and the upper sides only
    (a portrait: the person runs off the bottom and the lower sides); a centred rectangle,
    and one open at the bottom for things cut by the frame. Each GrabCut run is a tenth to
    a sixth of a second: no more seedings than win somewhere (a saliency seeding, used
    before the portrait one, won nowhere on the scikit-image set).
    """
    small = _grabcut_copy(rgb)
    bgr = np.ascontiguousarray(small[..., ::-1])
    sh, sw = small.shape[:2]
    size = (sw, sh)

    seeds: list[np.ndarray] = []
    if seed is not None and seed.any():
        seed_small = cv2.resize(seed.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        seeds.append(_seed_from_mask(seed_small))
    else:  # no backdrop all round: perhaps above, behind a subject cut by the bottom (a portrait)
        seeds.append(_seed_for_portrait(small.shape))
    my, mx = max(1, round(0.05 * sh)), max(1, round(0.05 * sw))
    for bottom in (sh - my, sh):  # inside the frame; or standing on (cut by) its bottom edge
        rect = np.full((sh, sw), cv2.GC_BGD, np.uint8)
        rect[my:bottom, mx:sw - mx] = cv2.GC_PR_FGD
        seeds.append(rect)

    masks = (_object_mask(_grabcut(bgr, init), out_shape or rgb.shape) for init in seeds)
    return [mask for mask in masks if mask is not None]


def grabcut_from_side(rgb: np.ndarray, side: str, out_shape: tuple[int, ...]) -> np.ndarray | None:
    """GrabCut told only that a strip along one side (focus.SIDES) is background.

    For a close-up whose subject runs off the other sides: every seeding above marks the
    whole frame edge as background, so it can only find a patch inside the subject.
    """
    small = _grabcut_copy(rgb)
    return _object_mask(_grabcut(np.ascontiguousarray(small[..., ::-1]), _seed_from_side(small.shape, side)), out_shape)


def _grabcut_copy(rgb: np.ndarray) -> np.ndarray:
    """The 8-bit copy GrabCut runs on, GRABCUT_SIDE on its long side."""
    h, w = rgb.shape[:2]
    scale = min(1.0, GRABCUT_SIDE / max(h, w))
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    return cv2.resize((rgb * 255).astype(np.uint8), size, interpolation=cv2.INTER_AREA)


def _object_mask(labels: np.ndarray | None, out_shape: tuple[int, ...]) -> np.ndarray | None:
    """GrabCut's (probable) object, at `out_shape`, its outline smoothly resampled."""
    if labels is None:
        return None
    fg = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
    out_h, out_w = out_shape[:2]
    return cv2.resize(fg, (out_w, out_h), interpolation=cv2.INTER_LINEAR) >= 0.5


def _grabcut(bgr: np.ndarray, init: np.ndarray) -> np.ndarray | None:
    """GrabCut from a label mask; None when the seeds leave one of the two classes empty."""
    fg = np.isin(init, (cv2.GC_FGD, cv2.GC_PR_FGD))
    if fg.sum() < 16 or (~fg).sum() < 16:
        return None
    labels = init.copy()
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut seeds its colour models with k-means: same photo, same mask
    try:
        cv2.grabCut(bgr, labels, None, bgd, fgd, GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # degenerate colour statistics (e.g. a flat image)
        return None
    return labels


def _seed_from_mask(mask: np.ndarray) -> np.ndarray:
    """Trust the inside of a found mask, let GrabCut decide near its edge."""
    init = np.full(mask.shape, cv2.GC_PR_BGD, np.uint8)
    init[mask] = cv2.GC_PR_FGD
    init[ndimage.binary_erosion(mask, iterations=3)] = cv2.GC_FGD
    init[_ring(mask.shape, 2) & ~mask] = cv2.GC_BGD
    return init


def _seed_from_side(shape: tuple[int, ...], side: str) -> np.ndarray:
    """Background along one side of the frame only; the rest is GrabCut's to decide."""
    init = np.full(shape[:2], cv2.GC_PR_FGD, np.uint8)
    init[focus.side_strip(shape, side, 0.05)] = cv2.GC_BGD
    return init


def _seed_for_portrait(shape: tuple[int, ...]) -> np.ndarray:
    """Background along the top and the upper halves of the sides: a person (or anything
    standing up close) runs off the bottom and the lower sides, as `_contact` forgives."""
    init = _seed_from_side(shape, "top")
    upper = np.zeros(shape[:2], dtype=bool)
    upper[: shape[0] // 2] = True
    init[upper & (focus.side_strip(shape, "left", 0.05) | focus.side_strip(shape, "right", 0.05))] = cv2.GC_BGD
    return init


def score(mask: np.ndarray, rgb: np.ndarray) -> float:
    """How much `mask` looks like one object: 0 (not at all) to about 1.

    The product of: colour contrast between inside and outside (histograms), solidity
    (area over convex hull area), how little of the frame edge it covers (the side it
    touches most is forgiven: objects stand on the bottom edge or are cut by it), a size
    preference, and whether the outline runs along edges in the photo (a cut through a
    texture does not). Zero when the size is outside MIN_FRACTION..MAX_FRACTION.
    """
    fraction = float(mask.mean())
    if not (MIN_FRACTION <= fraction <= MAX_FRACTION):
        return 0.0
    contrast = _contrast(mask, rgb)
    contact = _contact(mask)
    small = min(1.0, fraction / PREFERRED_FRACTION) ** 0.5  # a photo is rarely of a tiny detail
    edges = float(np.clip((edge_strength(mask, rgb) - 1.2) / 0.8, 0.0, 1.0))  # 1 at twice the average
    return contrast * _solidity(mask) * (1.0 - contact) * small * edges


def _contact(mask: np.ndarray) -> float:
    """How much of the frame's edge the mask covers (0..1), forgiving what a subject standing
    on, or cut by, one side does: that side; and when it is the bottom, the lower halves of
    the left and right sides too (a portrait's shoulders run off the frame near its bottom
    corners). Other sides get no such allowance: a table filling a frame hugs one side and
    runs along the two next to it."""
    sides = {"top": mask[0], "bottom": mask[-1], "left": mask[:, 0], "right": mask[:, -1]}
    forgiven = max(sides, key=lambda side: float(sides[side].mean()))
    if forgiven == "bottom":
        upper = mask.shape[0] // 2
        sides["left"], sides["right"] = mask[:upper, 0], mask[:upper, -1]
    return float(np.mean([float(edge.mean()) for side, edge in sides.items() if side != forgiven]))


def _contrast(mask: np.ndarray, rgb: np.ndarray) -> float:
    """How unlike its surroundings the masked region's colours are (0..1).

    The smaller of two histogram contrasts: against everything outside, and against the
    frame's edge (outside the mask): a patch of sky or table shares colours with the edge.
    """
    q = np.clip((rgb * 8).astype(np.int32), 0, 7)
    codes = q[..., 0] * 64 + q[..., 1] * 8 + q[..., 2]
    edge = _ring(mask.shape, max(2, round(0.04 * min(mask.shape)))) & ~mask
    inside = _histogram(codes[mask])
    against_all = 1.0 - np.minimum(inside, _histogram(codes[~mask])).sum()
    if edge.sum() < 16:
        return float(against_all)
    return float(min(against_all, 1.0 - np.minimum(inside, _histogram(codes[edge])).sum()))


def _histogram(codes: np.ndarray) -> np.ndarray:
    counts = np.bincount(codes, minlength=512).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def edge_strength(mask: np.ndarray, rgb: np.ndarray) -> float:
    """How much stronger the image's edges are along the mask's outline than on average.

    A real object's outline runs along edges in the photo; a cut through a texture or a
    colour gradient does not. The frame's own edge does not count.
    """
    grey = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (0, 0), 1.0)
    magnitude = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    outline = mask & ~ndimage.binary_erosion(mask, iterations=2)
    outline |= ~mask & ndimage.binary_dilation(mask, iterations=2)
    outline &= ~_ring(mask.shape, 3)
    if outline.sum() < 8:
        return 0.0
    return float(magnitude[outline].mean() / max(float(magnitude.mean()), 1e-6))


def _solidity(mask: np.ndarray) -> float:
    """Area over convex hull area: 1 for a convex blob, small for stripes or scattered bits."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return 0.0
    points = np.concatenate(contours)
    hull = cv2.contourArea(cv2.convexHull(points))
    return float(min(1.0, mask.sum() / max(hull, 1.0)))


def _ring(shape: tuple[int, ...], width: int) -> np.ndarray:
    ring = np.ones(shape[:2], dtype=bool)
    ring[width:-width, width:-width] = False
    return ring
