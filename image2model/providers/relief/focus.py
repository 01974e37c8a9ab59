"""Depth of field: telling a close-up's sharp subject from its blurred background.

A photo of a pet or a face taken close often fills the frame: the subject runs off three
sides, and only one side shows background, out of focus. Every other cue here assumes a
background all round (the border's colour, GrabCut seeded from the frame edge), so such a
subject was cut down to a patch of its face. Focus tells them apart without model weights:
the background side keeps its coarse shapes but loses its fine detail, the subject keeps both.
A flat side (a plain sky, a studio backdrop) has neither and says nothing about focus.
"""

from __future__ import annotations

import cv2
import numpy as np

SIDES = ("top", "left", "right")  # the bottom is where subjects stand or are cut by the frame
STRIP = 0.08  # width of the strip a side is judged on, as a share of the short side
MAX_FINE = 0.15  # a defocused side has at most this much of the centre's fine detail ...
MIN_COARSE = 0.25  # ... yet at least this much of its coarse structure (else it is just flat)
MIN_FOCUS_RATIO = 4.0  # a close-up's subject is this many times sharper than what it leaves out


def fine_detail(rgb: np.ndarray) -> np.ndarray:
    """Local energy of the finest detail (|Laplacian|, averaged over a few pixels): focus."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.GaussianBlur(np.abs(cv2.Laplacian(grey, cv2.CV_32F, ksize=1)), (0, 0), 3.0)


def coarse_structure(rgb: np.ndarray) -> np.ndarray:
    """Gradient of the blurred lightness: shapes that survive defocus (and flat areas lack)."""
    lightness = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)[..., 0], (0, 0), 3.0)
    return np.hypot(cv2.Sobel(lightness, cv2.CV_32F, 1, 0), cv2.Sobel(lightness, cv2.CV_32F, 0, 1))


def side_strip(shape: tuple[int, ...], side: str, share: float = STRIP) -> np.ndarray:
    """Boolean strip along one side of the frame."""
    h, w = shape[:2]
    width = max(2, round(share * min(h, w)))
    strip = np.zeros((h, w), dtype=bool)
    if side == "top":
        strip[:width] = True
    elif side == "left":
        strip[:, :width] = True
    else:
        strip[:, -width:] = True
    return strip


def defocused_side(rgb: np.ndarray, fine: np.ndarray | None = None) -> str | None:
    """The side of the frame showing an out-of-focus background, or None.

    A side counts when its strip has little of the centre's fine detail but a good part of
    its coarse structure; of several, the one with the least fine detail. `fine` is
    fine_detail(rgb), when the caller has it already.
    """
    h, w = rgb.shape[:2]
    fine = fine_detail(rgb) if fine is None else fine
    coarse = coarse_structure(rgb)
    centre = (slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4))
    centre_fine, centre_coarse = float(fine[centre].mean()), float(coarse[centre].mean())
    if centre_fine <= 1e-6 or centre_coarse <= 1e-6:
        return None
    found: list[tuple[float, str]] = []
    for side in SIDES:
        strip = side_strip(rgb.shape, side)
        fine_share = float(fine[strip].mean()) / centre_fine
        coarse_share = float(coarse[strip].mean()) / centre_coarse
        if fine_share <= MAX_FINE and coarse_share >= MIN_COARSE:
            found.append((fine_share, side))
    return min(found)[1] if found else None


def focus_ratio(mask: np.ndarray, fine: np.ndarray) -> float:
    """How many times sharper the masked part is than the rest (0 for an empty side)."""
    if not mask.any() or mask.all():
        return 0.0
    return float(fine[mask].mean()) / max(float(fine[~mask].mean()), 1e-6)
