"""Convert a finished model to other formats (its check and description: glb.py)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from image2model.errors import AppError
from image2model.media.archive import entry

if TYPE_CHECKING:  # trimesh (and SciPy under it) is about 58 MB of RSS, loaded on first use
    import trimesh

CONVERSIONS = {"obj": "application/zip", "stl": "model/stl", "ply": "application/x-ply"}


def load_scene(path: Path) -> trimesh.Scene:
    import trimesh

    try:
        loaded = trimesh.load(str(path), file_type=path.suffix.lstrip(".") or "glb", force="scene")
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a usable model"
        raise AppError("invalid_model", f"The model file could not be read ({type(exc).__name__}).", 502) from exc
    return loaded


def convert(path: Path, fmt: str) -> tuple[bytes, str, str]:
    """(bytes, file name, content type) of the model in another format.

    OBJ is a ZIP of the .obj with its .mtl and texture images, since an OBJ alone loses them.
    """
    import trimesh

    fmt = fmt.lower()
    if fmt not in CONVERSIONS:
        raise AppError("unsupported_format", f"Cannot convert to '{fmt}'. Choose obj, stl or ply.", 400)
    scene = load_scene(path)
    stem = path.stem
    if fmt == "obj":
        _plain_materials(scene)
        files = trimesh.exchange.obj.export_obj(scene, include_texture=True, return_texture=True,
                                                 mtl_name=f"{stem}.mtl")
        text, textures = files if isinstance(files, tuple) else (files, {})
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(entry(f"{stem}.obj"), text, zipfile.ZIP_DEFLATED)
            for name, data in textures.items():
                archive.writestr(entry(name), data, zipfile.ZIP_DEFLATED)
        return buffer.getvalue(), f"{stem}.obj.zip", CONVERSIONS[fmt]
    if fmt == "ply":
        _texture_as_vertex_colours(scene)
    mesh = scene.to_mesh() if hasattr(scene, "to_mesh") else scene.dump(concatenate=True)
    data = mesh.export(file_type=fmt)
    if isinstance(data, str):
        data = data.encode()
    return data, f"{stem}.{fmt}", CONVERSIONS[fmt]


def _plain_materials(scene: trimesh.Scene) -> None:
    """The GLB's PBR materials as plain ones whose colour is the texture itself. trimesh's own
    conversion writes Kd 0.4, which viewers multiply with the texture: a model 40 % as bright."""
    from trimesh.visual.material import PBRMaterial, SimpleMaterial

    for geometry in scene.geometry.values():
        material = getattr(getattr(geometry, "visual", None), "material", None)
        if isinstance(material, PBRMaterial):
            factor = material.baseColorFactor if material.baseColorFactor is not None else [255, 255, 255, 255]
            geometry.visual.material = SimpleMaterial(image=material.baseColorTexture, diffuse=factor,
                                                      ambient=factor, specular=[0, 0, 0, 255], glossiness=1.0)


def _texture_as_vertex_colours(scene: trimesh.Scene) -> None:
    """PLY has no textures: each vertex takes its texture colour, so the model keeps its look."""
    for geometry in scene.geometry.values():
        visual = getattr(geometry, "visual", None)
        if getattr(visual, "kind", None) == "texture" and getattr(visual, "uv", None) is not None:
            geometry.visual = visual.to_color()
