"""Output: place the shell as glTF expects and write a textured GLB; the cut-out preview."""

from __future__ import annotations

import io

import numpy as np
import trimesh
from PIL import Image

CUTOUT_MAX_SIDE = 512  # the preview is a thumbnail
_BACK_SHADE = 205  # vertex colour of the back (of 255): a slightly darker copy


def place(vertices: np.ndarray) -> np.ndarray:
    """Image pixels to glTF: Y up, front towards +Z, centred, largest dimension 1."""
    out = np.column_stack([vertices[:, 0], -vertices[:, 1], vertices[:, 2]])
    lo, hi = out.min(axis=0), out.max(axis=0)
    out -= (lo + hi) / 2
    return out / max(float((hi - lo).max()), 1e-12)


def export_glb(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray,
                is_back: np.ndarray, texture: Image.Image) -> bytes:
    """Textured GLB with a matte PBR material and the back shaded by vertex colours."""
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=texture, metallicFactor=0.0, roughnessFactor=0.9, doubleSided=False)
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    shade = np.where(is_back, _BACK_SHADE, 255).astype(np.uint8)
    visual.vertex_attributes["color"] = np.column_stack([shade, shade, shade, np.full_like(shade, 255)])
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, visual=visual, process=False, validate=False)
    return mesh.export(file_type="glb", include_normals=True)


def cutout_png(src: Image.Image, mask: np.ndarray | None) -> bytes:
    """The photo as the model saw it: background transparent, at most CUTOUT_MAX_SIDE (PNG).

    With no mask (the whole frame was used) it is the photo itself, fully opaque.
    """
    thumb = src.convert("RGB")
    thumb.thumbnail((CUTOUT_MAX_SIDE, CUTOUT_MAX_SIDE), Image.Resampling.BILINEAR)
    alpha = Image.new("L", thumb.size, 255)
    if mask is not None:
        alpha = Image.fromarray(mask.astype(np.uint8) * 255, "L").resize(thumb.size, Image.Resampling.BILINEAR)
    thumb.putalpha(alpha)
    buf = io.BytesIO()
    thumb.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
