"""Offline "relief" generator: one image in, a closed, textured, puffed-up 3D model (GLB) out.

Pure CPU (numpy, scipy, Pillow, trimesh); no model weights, no network. The pipeline:

1. Separate the object (separation.py, segmentation.py): the alpha channel if the image
   has a meaningful one; otherwise the best-scoring of background removal grown in from
   the border and GrabCut seedings; a whole-frame plate when nothing stands out.
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

One module per stage: loading, separation (+ segmentation), mesh, texture, export; the
parameters and their checks live in params.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from image2model.providers.relief.export import cutout_png, export_glb, place
from image2model.providers.relief.loading import (
    SOURCE_MAX_SIDE,
    load_image,
    prepare_source,
)
from image2model.providers.relief.mesh import (
    Outline,
    build_shell,
    cell_mask,
    grid_shape,
    node_luminance,
)
from image2model.providers.relief.params import RELIEF_PARAMS, validate
from image2model.providers.relief.separation import Separation, separate
from image2model.providers.relief.texture import (
    TEXTURE_MAX_SIDE,
    as_jpeg,
    make_texture,
    texture_box,
)

__all__ = ["RELIEF_PARAMS", "SOURCE_MAX_SIDE", "STAGES", "TEXTURE_MAX_SIDE", "ReliefResult", "generate_relief", "load_image"]

STAGES = ("Separating the object", "Building the mesh", "Texturing", "Writing the model")


@dataclass(frozen=True)
class ReliefResult:
    glb: bytes
    vertices: int
    faces: int
    mask_source: str  # "alpha" | "background" | "grabcut" | "full_frame"
    cutout: bytes = b""  # "what the model saw": PNG, the photo with the background made transparent

    @property
    def separated(self) -> bool:
        """False when nothing stood out and the whole photo became a plate."""
        return self.mask_source != "full_frame"


def generate_relief(image: Image.Image, *, resolution: int = 160, inflation: float = 0.35,
                    detail: float = 0.15, bg_tolerance: float = 0.12, background: str = "auto",
                    progress: Callable[[float, str], None] | None = None) -> ReliefResult:
    """Turn one image into a closed, textured, puffed-up model of its main object (GLB bytes)."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"image must be a PIL image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError("image must not be empty")
    validate(resolution, inflation, detail, bg_tolerance, background)
    resolution, inflation, detail, bg_tolerance = int(resolution), float(inflation), float(detail), float(bg_tolerance)
    report = progress or (lambda fraction, message: None)

    report(0.0, STAGES[0])
    src = prepare_source(image)
    width, height = src.size
    sep = separate(src, resolution, bg_tolerance, background)
    cells = cell_mask(sep, *grid_shape(width, height, resolution))
    if not cells.any():
        sep = Separation(None, "full_frame")
        cells = np.ones_like(cells)

    report(0.3, STAGES[1])
    lum = node_luminance(src, 2 * cells.shape[1] + 1, 2 * cells.shape[0] + 1)
    outline = None if sep.mask is None else Outline(sep.mask, (width, height))
    shell = build_shell(cells, width, height, outline, inflation, detail, lum)

    report(0.55, STAGES[2])
    box = texture_box(cells, width, height)
    texture = as_jpeg(make_texture(src, sep, cells, box))
    uv = np.column_stack([
        (shell.vertices[:, 0] - box[0]) / (box[2] - box[0]),
        1.0 - (shell.vertices[:, 1] - box[1]) / (box[3] - box[1]),
    ]).clip(0.0, 1.0)

    report(0.8, STAGES[3])
    glb = export_glb(place(shell.vertices), shell.faces, uv, shell.is_back, texture)
    return ReliefResult(glb=glb, vertices=len(shell.vertices), faces=len(shell.faces), mask_source=sep.source,
                        cutout=cutout_png(src, sep.mask))
