"""The pipeline's driver: each stage in turn (see the package docstring), one photo in, one GLB out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from image2model.providers.relief.export import cutout_png, export_glb, place
from image2model.providers.relief.loading import (
    prepare_source,
)
from image2model.providers.relief.mesh import (
    Outline,
    build_shell,
    cell_mask,
    grid_shape,
    node_luminance,
)
from image2model.providers.relief.params import validate
from image2model.providers.relief.separation import Separation, separate
from image2model.providers.relief.revolve import (
    build_lathe,
    fit_profile,
    lathe_segments,
    leftover_pieces,
    suits_revolve,
)
from image2model.providers.relief.texture import as_jpeg, make_atlas

STAGES = ("Separating the object", "Building the mesh", "Texturing", "Writing the model")


@dataclass(frozen=True)
class ReliefResult:
    glb: bytes
    vertices: int
    faces: int
    mask_source: str  # "alpha" | "background" | "grabcut" | "full_frame"
    cutout: bytes = b""  # "what the model saw": PNG, the photo with the background made transparent
    shape: str = "relief"  # "relief" (puffed up) | "revolve" (turned round an upright axis)

    @property
    def separated(self) -> bool:
        """False when nothing stood out and the whole photo became a plate."""
        return self.mask_source != "full_frame"


@dataclass(frozen=True)
class _Part:
    vertices: np.ndarray  # source pixels: x right, y down, z towards the viewer
    faces: np.ndarray
    back_faces: np.ndarray


def generate_relief(image: Image.Image, *, resolution: int = 160, inflation: float = 0.5,
                    detail: float = 0.15, bg_tolerance: float = 0.12, background: str = "auto",
                    shape: str = "auto", progress: Callable[[float, str], None] | None = None) -> ReliefResult:
    """Turn one image into a closed, textured model of its main object (GLB bytes)."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"image must be a PIL image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError("image must not be empty")
    validate(resolution, inflation, detail, bg_tolerance, background, shape)
    resolution, inflation, detail, bg_tolerance = int(resolution), float(inflation), float(detail), float(bg_tolerance)
    report = progress or (lambda fraction, message: None)

    report(0.0, STAGES[0])
    src = prepare_source(image)
    width, height = src.size
    sep = separate(src, resolution, bg_tolerance, background)
    grid = grid_shape(width, height, resolution)
    cells = cell_mask(sep, *grid)
    if not cells.any():
        sep = Separation(None, "full_frame")
        cells = np.ones_like(cells)

    report(0.3, STAGES[1])
    parts, sep = _revolved(src, sep, grid, resolution, inflation, detail, shape)
    made = "revolve" if parts else "relief"
    if not parts:
        outline = None if sep.mask is None else Outline(sep.mask, (width, height))
        parts = [_puffed(src, cells, outline, inflation, detail)]

    report(0.55, STAGES[2])
    atlas = make_atlas(src, sep, cells)
    texture = as_jpeg(atlas.image)

    report(0.8, STAGES[3])
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts])
    vertices = np.concatenate([p.vertices for p in parts])
    faces = np.concatenate([p.faces + o for p, o in zip(parts, offsets, strict=False)])
    back_faces = np.concatenate([p.back_faces for p in parts])
    glb = export_glb(place(vertices), vertices[:, :2], faces, back_faces, atlas.uv, texture)
    return ReliefResult(glb=glb, vertices=len(vertices), faces=len(faces), mask_source=sep.source,
                        cutout=cutout_png(src, sep.mask), shape=made)


def _puffed(src: Image.Image, cells: np.ndarray, outline: Outline | None, inflation: float,
            detail: float) -> _Part:
    lum = node_luminance(src, 2 * cells.shape[1] + 1, 2 * cells.shape[0] + 1)
    shell = build_shell(cells, src.width, src.height, outline, inflation, detail, lum)
    return _Part(shell.vertices, shell.faces, shell.back_faces)


def _revolved(src: Image.Image, sep: Separation, grid: tuple[int, int], resolution: int,
              inflation: float, detail: float, shape: str) -> tuple[list[_Part], Separation]:
    """The spun body and its puffed-up handles, or [] when the object is not made round.

    Also returns the separation as the texture should see it: a handle's open eye is
    background, so its colour is not spread onto the handle.
    """
    if sep.mask is None or shape == "relief":
        return [], sep
    profile = fit_profile(sep.mask)
    if profile is None:
        return [], sep
    pieces = leftover_pieces(sep.mask, profile, sep.holes)
    if shape == "auto" and not suits_revolve(sep.mask, profile, pieces, sep.holes):
        return [], sep
    scale = src.width / sep.mask.shape[1]
    rows = round(resolution * len(profile.radii) * scale / max(src.size))
    lathe = build_lathe(profile, scale, rows, lathe_segments(resolution))
    parts = [_Part(lathe.vertices, lathe.faces, lathe.back_faces)]
    for piece in pieces:
        cells = cell_mask(Separation(piece, sep.source), *grid)
        if cells.sum() >= 4:
            parts.append(_puffed(src, cells, Outline(piece, src.size), inflation, detail))
    if sep.holes is not None and sep.source != "alpha":
        colours = sep.colour_mask if sep.colour_mask is not None else sep.mask
        sep = replace(sep, colour_mask=colours & ~(sep.holes & ~profile.body))
    return parts, sep
