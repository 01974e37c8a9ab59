"""Output: place the model as glTF expects and write a textured GLB; the cut-out preview."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import trimesh
from PIL import Image

CUTOUT_MAX_SIDE = 512  # the preview is a thumbnail


def place(vertices: np.ndarray) -> np.ndarray:
    """Image pixels to glTF: Y up, front towards +Z, centred, largest dimension 1."""
    out = np.column_stack([vertices[:, 0], -vertices[:, 1], vertices[:, 2]])
    lo, hi = out.min(axis=0), out.max(axis=0)
    out -= (lo + hi) / 2
    return out / max(float((hi - lo).max()), 1e-12)


def split_seams(faces: np.ndarray, back_faces: np.ndarray, n_vertices: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Give the back its own copy of each vertex it shares with the front.

    Front and back sample different parts of the texture, so a vertex on the seam
    between them needs two UVs; glTF stores that as two vertices at one position (a UV
    seam, as in any textured model). Returns the new faces, each new vertex's original,
    and which new vertices belong to the back.
    """
    on_back = np.zeros(n_vertices, dtype=bool)
    on_back[faces[back_faces].ravel()] = True
    on_front = np.zeros(n_vertices, dtype=bool)
    on_front[faces[~back_faces].ravel()] = True
    shared = np.flatnonzero(on_back & on_front)
    copy_of = np.arange(n_vertices)
    copy_of[shared] = n_vertices + np.arange(len(shared))
    out = faces.copy()
    out[back_faces] = copy_of[faces[back_faces]]
    source = np.concatenate([np.arange(n_vertices), shared])
    is_back = np.concatenate([on_back & ~on_front, np.ones(len(shared), dtype=bool)])
    return out, source, is_back


def export_glb(placed: np.ndarray, source_xy: np.ndarray, faces: np.ndarray, back_faces: np.ndarray,
               uv_of: Callable[[np.ndarray, np.ndarray], np.ndarray], texture: Image.Image) -> bytes:
    """Textured GLB with a matte PBR material.

    `placed` are the welded vertices (one per position) as glTF expects them,
    `source_xy` where each lies on the photo; `uv_of(xy, back)` turns those into UVs.
    Normals come from the welded surface, so the UV seam does not show as a crease.
    """
    normals = trimesh.Trimesh(vertices=placed, faces=faces, process=False).vertex_normals
    split, source, is_back = split_seams(faces, back_faces, len(placed))
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=texture, metallicFactor=0.0, roughnessFactor=0.9, doubleSided=False)
    visual = trimesh.visual.TextureVisuals(uv=uv_of(source_xy[source], is_back), material=material)
    mesh = trimesh.Trimesh(vertices=placed[source], faces=split, vertex_normals=normals[source],
                           visual=visual, process=False, validate=False)
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
    thumb.save(buf, format="PNG", compress_level=3)  # a thumbnail: fast beats smallest
    return buf.getvalue()
