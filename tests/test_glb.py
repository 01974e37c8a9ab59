"""The result check (media/glb.py): the same description trimesh gives, from the JSON chunk
alone, and a clear refusal of every broken file."""

from __future__ import annotations

import json
import os
import struct
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import trimesh
from PIL import Image
from trimesh import transformations as tf

from image2model.errors import AppError
from image2model.examples import EXAMPLES_DIR
from image2model.media.glb import glb_stats
from image2model.providers.relief import generate_relief, load_image
from tests.fakefal import sample_glb


# --- GLBs to check ------------------------------------------------------------------------------
def split(glb: bytes) -> tuple[dict[str, Any], bytes]:
    """(JSON description, binary chunk) of a GLB."""
    json_length = struct.unpack("<I", glb[12:16])[0]
    doc = json.loads(glb[20:20 + json_length])
    rest = glb[20 + json_length:]
    return doc, rest[8:8 + struct.unpack("<I", rest[:4])[0]] if rest else b""


def pack(doc: dict[str, Any], binary: bytes = b"", bin_length: int | None = None) -> bytes:
    """A GLB of this description and binary chunk (`bin_length`: what the chunk header says)."""
    text = json.dumps(doc).encode()
    text += b" " * (-len(text) % 4)
    body = struct.pack("<II", len(text), 0x4E4F534A) + text
    if binary or bin_length is not None:
        binary += b"\0" * (-len(binary) % 4)
        body += struct.pack("<II", len(binary) if bin_length is None else bin_length, 0x004E4942) + binary
    return b"glTF" + struct.pack("<II", 2, 12 + len(body)) + body


def transformed_scene() -> bytes:
    scene = trimesh.Scene()
    scene.add_geometry(trimesh.creation.box((1, 2, 3)),
                       transform=tf.rotation_matrix(0.7, [0, 0, 1]) @ tf.translation_matrix([5, 0, 0]))
    scene.add_geometry(trimesh.creation.icosphere(), transform=tf.scale_matrix(3.0))
    scene.add_geometry(trimesh.creation.cylinder(0.5, 4), transform=tf.rotation_matrix(1.1, [1, 1, 0]))
    return scene.export(file_type="glb")


def offline_model() -> bytes:
    return generate_relief(load_image(EXAMPLES_DIR / "duck.png")).glb


def unwelded_mesh() -> bytes:
    """Like FAL's models: one vertex per face corner, UVs, a texture."""
    rng = np.random.default_rng(1)
    sphere = trimesh.creation.icosphere(subdivisions=4)
    vertices = sphere.vertices[sphere.faces].reshape(-1, 3) * [1.0, 2.5, 0.5]
    visual = trimesh.visual.TextureVisuals(uv=rng.random((len(vertices), 2)), image=Image.new("RGB", (64, 64), "red"))
    return trimesh.Trimesh(vertices, np.arange(len(vertices)).reshape(-1, 3), visual=visual,
                           process=False).export(file_type="glb")


MODELS: dict[str, Callable[[], bytes]] = {
    "fake FAL's textured sphere": sample_glb,
    "a box": lambda: trimesh.creation.box((1, 2, 3)).export(file_type="glb"),
    "a scene of rotated, moved and scaled parts": transformed_scene,
    "the offline model of the duck example": offline_model,
    "an unwelded textured mesh": unwelded_mesh,
}


def trimesh_description(path: Path) -> dict[str, Any]:
    scene = trimesh.load(str(path), file_type="glb", force="scene")
    meshes = [g for g in scene.geometry.values() if isinstance(g, trimesh.Trimesh)]
    return {"vertices": sum(len(m.vertices) for m in meshes), "faces": sum(len(m.faces) for m in meshes),
            "meshes": len(meshes), "extents": [round(float(v), 4) for v in scene.extents]}


# --- the description ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_description_matches_what_trimesh_reads_from_the_whole_file(name: str, tmp_path: Path) -> None:
    path = tmp_path / "model.glb"
    path.write_bytes(MODELS[name]())
    stats = glb_stats(path)
    assert {key: stats[key] for key in ("vertices", "faces", "meshes")} == \
        {key: trimesh_description(path)[key] for key in ("vertices", "faces", "meshes")}
    assert stats["extents"] == pytest.approx(trimesh_description(path)["extents"], abs=1e-3)


def test_textured_means_a_colour_texture_and_uvs(tmp_path: Path) -> None:
    (tmp_path / "sphere.glb").write_bytes(sample_glb())
    (tmp_path / "box.glb").write_bytes(trimesh.creation.box().export(file_type="glb"))
    assert glb_stats(tmp_path / "sphere.glb")["textured"] is True
    assert glb_stats(tmp_path / "box.glb")["textured"] is False


def test_only_the_description_is_read_however_large_the_geometry(tmp_path: Path) -> None:
    """A GLB whose binary chunk is 512 MB (a sparse file: no disk used) is checked with a few
    KB of memory; loading it (trimesh did) would read all 512 MB."""
    doc, binary = split(trimesh.creation.box().export(file_type="glb"))
    big = 512 * 1024 * 1024
    glb = bytearray(pack(doc, binary, bin_length=big))
    struct.pack_into("<I", glb, 8, len(glb) - len(binary) + big)  # the header's total length
    path = tmp_path / "huge.glb"
    path.write_bytes(glb[:len(glb) - len(binary)] + binary)
    os.truncate(path, len(glb) - len(binary) + big)
    tracemalloc.start()
    try:
        stats = glb_stats(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert stats["faces"] == 12
    assert peak < 256 * 1024, f"checking the model allocated {peak / 1e6:.1f} MB"


def test_a_draco_compressed_model_is_described_from_its_counts(tmp_path: Path) -> None:
    """Draco primitives keep their accessors' counts and bounds but no views (trimesh cannot
    read them at all)."""
    doc = {
        "asset": {"version": "2.0"}, "extensionsUsed": ["KHR_draco_mesh_compression"],
        "buffers": [{"byteLength": 16}], "bufferViews": [{"buffer": 0, "byteLength": 16}],
        "accessors": [{"componentType": 5126, "count": 500, "type": "VEC3", "min": [-1, 0, -2], "max": [1, 3, 2]},
                      {"componentType": 5125, "count": 2991, "type": "SCALAR"}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1, "extensions": {
            "KHR_draco_mesh_compression": {"bufferView": 0, "attributes": {"POSITION": 0}}}}]}],
        "nodes": [{"mesh": 0}], "scenes": [{"nodes": [0]}], "scene": 0,
    }
    path = tmp_path / "draco.glb"
    path.write_bytes(pack(doc, b"\1" * 16))
    assert glb_stats(path) == {"vertices": 500, "faces": 997, "meshes": 1, "textured": False,
                               "extents": [2.0, 3.0, 4.0]}


# --- refusals -----------------------------------------------------------------------------------
def box_parts() -> tuple[dict[str, Any], bytes]:
    return split(trimesh.creation.box().export(file_type="glb"))


def edited(change: Callable[[dict[str, Any]], None]) -> bytes:
    doc, binary = box_parts()
    change(doc)
    return pack(doc, binary)


def set_path(doc: dict[str, Any], *path_and_value: Any) -> None:
    *path, last, value = path_and_value
    for key in path:
        doc = doc[key]
    doc[last] = value


BROKEN: dict[str, tuple[Callable[[], bytes], str]] = {
    "not a GLB at all": (lambda: b"this is not a glb file at all", "does not start like one"),
    "a GLB's magic and zeros": (lambda: b"glTF" + b"\0" * 64, "version 0"),
    "cut short": (lambda: sample_glb()[: len(sample_glb()) * 3 // 5], "cut short"),
    "glTF 1": (lambda: b"glTF" + struct.pack("<II", 1, 20) + b"\0" * 8, "version 1"),
    "a description that is not JSON": (
        lambda: b"glTF" + struct.pack("<II", 2, 28) + struct.pack("<II", 8, 0x4E4F534A) + b"{{{{{{{{",
        "not readable JSON"),
    "binary data first": (
        lambda: b"glTF" + struct.pack("<II", 2, 28) + struct.pack("<II", 8, 0x004E4942) + b"\0" * 8,
        "not the JSON description"),
    "geometry larger than its binary chunk": (
        lambda: edited(lambda d: set_path(d, "buffers", 0, "byteLength", d["buffers"][0]["byteLength"] + 4096)),
        "larger than the binary data"),
    "a view past its buffer": (
        lambda: edited(lambda d: set_path(d, "bufferViews", 0, "byteOffset", 10_000)), "points past"),
    "an accessor past its view": (
        lambda: edited(lambda d: set_path(d, "accessors", 0, "count", 100_000)), "reads past"),
    "a buffer in another file": (
        lambda: edited(lambda d: set_path(d, "buffers", 0, "uri", "../../etc/passwd")), "a file outside it"),
    "points only": (
        lambda: edited(lambda d: set_path(d, "meshes", 0, "primitives", 0, "mode", 0)), "no triangles"),
    "no meshes": (lambda: edited(lambda d: d.update(meshes=[], nodes=[{}])), "no triangles"),
    "a node that is its own child": (
        lambda: edited(lambda d: set_path(d, "nodes", 0, "children", [0])), "not a tree"),
    "a child shared by every level (2^60 paths)": (
        lambda: edited(lambda d: d.update(nodes=[{"children": [n + 1, n + 1]} for n in range(60)] + [{"mesh": 0}],
                                          scenes=[{"nodes": [0]}])), "not a tree"),
    "a description of the wrong shape": (
        lambda: edited(lambda d: d.update(accessors={"count": 3})), "malformed"),
    "a mesh index out of range": (
        lambda: edited(lambda d: set_path(d, "nodes", 0, "mesh", 7)), "malformed"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_model_is_refused_in_words(name: str, tmp_path: Path) -> None:
    make, words = BROKEN[name]
    path = tmp_path / "model.glb"
    path.write_bytes(make())
    with pytest.raises(AppError) as caught:
        glb_stats(path)
    assert caught.value.code == "invalid_model"
    assert words in caught.value.message, caught.value.message


def test_bytes_after_the_declared_end_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "padded.glb"
    path.write_bytes(sample_glb() + b"\0" * 100)
    assert glb_stats(path)["faces"] == 2304
