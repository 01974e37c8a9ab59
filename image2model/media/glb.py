"""Check a finished GLB and describe it from its JSON chunk, without loading its geometry.

Every result is checked before it is called done. Loading it into trimesh did that, but a
model as FAL makes them (300,000 faces, a 2048 px texture: 36 MB) cost 0.22 CPU s and 93 MB
each, so 25 photos finishing together held the web process's GIL for seconds and grew it past
1.7 GB. A GLB describes itself: a 12-byte header, a JSON chunk that lists every buffer, view,
accessor, mesh and node with their sizes, and a binary chunk. Checking that those sizes fit
inside each other and inside the file, and reading the counts and bounds from the JSON, finds
the same broken files (cut short, not a GLB, pointing outside its data, no triangles) while
reading only the JSON (kilobytes) and never the binary chunk. A Draco-compressed model,
which trimesh cannot read at all, is described from its accessors' counts like any other.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any, BinaryIO

from image2model.errors import AppError
from image2model.units import size_text

MAGIC = b"glTF"
JSON_CHUNK = 0x4E4F534A
BIN_CHUNK = 0x004E4942
MAX_JSON_BYTES = 8 * 1024 * 1024  # a FAL model's JSON is a few KB; this bounds what one check reads
COMPONENT_BYTES = {5120: 1, 5121: 1, 5122: 2, 5123: 2, 5125: 4, 5126: 4}
TYPE_COMPONENTS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
TRIANGLES, TRIANGLE_STRIP, TRIANGLE_FAN = 4, 5, 6


def invalid(why: str) -> AppError:
    return AppError("invalid_model", f"The model file is not a usable GLB: {why}.", 502)


def glb_stats(path: Path) -> dict[str, Any]:
    """Vertices, faces, triangle meshes, whether it has a texture, and its extents (None when
    the file gives no bounds); AppError `invalid_model` when the file is not a sound GLB."""
    with path.open("rb") as file:
        size = path.stat().st_size
        doc, bin_length = read_container(file, size)
    try:
        return describe(doc, bin_length)
    except (TypeError, KeyError, IndexError, ValueError, AttributeError) as exc:  # a malformed JSON chunk
        raise invalid(f"its description is malformed ({type(exc).__name__})") from exc


def read_container(file: BinaryIO, size: int) -> tuple[dict[str, Any], int | None]:
    """The JSON chunk, parsed, and the binary chunk's length (None when it has none)."""
    header = file.read(12)
    if len(header) < 12 or header[:4] != MAGIC:
        raise invalid("it does not start like one")
    version, declared = struct.unpack("<II", header[4:])
    if version != 2:
        raise invalid(f"it is glTF version {version}, not 2")
    if declared > size:
        raise invalid(f"its header says {size_text(declared)} and the file has {size_text(size)} (cut short?)")
    size = max(declared, 12)  # bytes after the declared end are not part of it
    json_length, kind = chunk_header(file, 12, size)
    if kind != JSON_CHUNK:
        raise invalid("its first chunk is not the JSON description")
    if json_length > MAX_JSON_BYTES:
        raise invalid(f"its description is {size_text(json_length)}, over {size_text(MAX_JSON_BYTES)}")
    try:
        doc = json.loads(file.read(json_length).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise invalid("its description is not readable JSON") from exc
    if not isinstance(doc, dict):
        raise invalid("its description is not a JSON object")
    bin_at = 20 + json_length
    if bin_at + 8 > size:
        return doc, None
    file.seek(bin_at)
    bin_length, kind = chunk_header(file, bin_at, size)
    return doc, bin_length if kind == BIN_CHUNK else None


def chunk_header(file: BinaryIO, at: int, size: int) -> tuple[int, int]:
    raw = file.read(8)
    if len(raw) < 8:
        raise invalid("it ends inside a chunk header")
    length, kind = struct.unpack("<II", raw)
    if at + 8 + length > size:
        raise invalid("a chunk runs past the end of the file (cut short?)")
    return length, kind


def describe(doc: dict[str, Any], bin_length: int | None) -> dict[str, Any]:
    buffers = buffer_lengths(doc, bin_length)
    check_views(doc, buffers)
    check_accessors(doc)
    accessors = doc.get("accessors") or []
    meshes = doc.get("meshes") or []
    instances = mesh_instances(doc)
    vertices = faces = triangle_meshes = 0
    textured = False
    corners: list[list[float]] = []
    bounded = True
    for mesh_index, worlds in sorted(instances.items()):
        for primitive in meshes[mesh_index].get("primitives") or []:
            counted = primitive_counts(primitive, accessors)
            if counted is None:
                continue
            vertices, faces, triangle_meshes = vertices + counted[0], faces + counted[1], triangle_meshes + 1
            textured = textured or has_texture(primitive, doc)
            position = accessors[primitive["attributes"]["POSITION"]]
            low, high = position.get("min"), position.get("max")
            if not (isinstance(low, list) and isinstance(high, list) and len(low) == len(high) == 3):
                bounded = False
                continue
            corners += [apply(world, corner) for world in worlds for corner in box_corners(low, high)]
    if faces == 0:
        raise AppError("invalid_model", "The model file contains no triangles.", 502)
    extents = None
    if bounded and corners:
        extents = [round(max(c[axis] for c in corners) - min(c[axis] for c in corners), 4) for axis in range(3)]
    return {"vertices": vertices, "faces": faces, "meshes": triangle_meshes, "textured": textured,
            "extents": extents}


def buffer_lengths(doc: dict[str, Any], bin_length: int | None) -> list[int | None]:
    """Each buffer's length where its bytes are known to be in this file; None for a
    placeholder a compression extension fills in (its views are not checked against it)."""
    lengths: list[int | None] = []
    for index, buffer in enumerate(doc.get("buffers") or []):
        declared = int(buffer["byteLength"])
        uri = buffer.get("uri")
        if uri is None and index == 0:
            if bin_length is None or declared > bin_length:
                raise invalid("its geometry is larger than the binary data it carries (cut short?)")
            lengths.append(declared)
        elif uri is None:
            lengths.append(None)
        elif str(uri).startswith("data:"):
            lengths.append(declared)
        else:
            raise invalid(f"it refers to a file outside it ({str(uri)[:60]})")
    return lengths


def check_views(doc: dict[str, Any], buffers: list[int | None]) -> None:
    for view in doc.get("bufferViews") or []:
        end = int(view.get("byteOffset", 0)) + int(view["byteLength"])
        length = buffers[int(view["buffer"])]
        if min(end, int(view.get("byteOffset", 0))) < 0 or (length is not None and end > length):
            raise invalid("a part of it points past its binary data")


def check_accessors(doc: dict[str, Any]) -> None:
    views = doc.get("bufferViews") or []
    for accessor in doc.get("accessors") or []:
        count = int(accessor["count"])
        element = COMPONENT_BYTES[int(accessor["componentType"])] * TYPE_COMPONENTS[accessor["type"]]
        if count < 0:
            raise invalid("an accessor has a negative count")
        if "bufferView" not in accessor or count == 0:
            continue  # all zeros, sparse, or decoded by an extension (Draco)
        view = views[int(accessor["bufferView"])]
        stride = int(view.get("byteStride") or element)
        end = int(accessor.get("byteOffset", 0)) + (count - 1) * stride + element
        if end > int(view["byteLength"]):
            raise invalid("an accessor reads past the data it points to")


def mesh_instances(doc: dict[str, Any]) -> dict[int, list[list[list[float]]]]:
    """Each mesh shown by the default scene, with the world matrix of every node showing it;
    every mesh once, untransformed, when the file has no scene. glTF's nodes form trees (a node
    has one parent at most), so a node reached twice is refused: a cycle or a shared child would
    otherwise be walked without end, or exponentially often."""
    nodes = doc.get("nodes") or []
    scenes = doc.get("scenes") or []
    if not scenes:
        return {index: [identity()] for index in range(len(doc.get("meshes") or []))}
    found: dict[int, list[list[list[float]]]] = {}
    seen: set[int] = set()
    pending = [(int(root), identity()) for root in scenes[int(doc.get("scene", 0))].get("nodes") or []]
    while pending:
        index, parent = pending.pop()
        if index in seen:
            raise invalid("its node tree is not a tree (a node with two parents, or its own ancestor)")
        seen.add(index)
        node = nodes[index]
        world = multiply(parent, local_matrix(node))
        if "mesh" in node:
            found.setdefault(int(node["mesh"]), []).append(world)
        pending += [(int(child), world) for child in node.get("children") or []]
    return found


def primitive_counts(primitive: dict[str, Any], accessors: list[dict[str, Any]]) -> tuple[int, int] | None:
    """(vertices, triangles) of a triangle primitive; None for points and lines."""
    mode = int(primitive.get("mode", TRIANGLES))
    if mode not in (TRIANGLES, TRIANGLE_STRIP, TRIANGLE_FAN) or "POSITION" not in primitive.get("attributes", {}):
        return None
    vertices = int(accessors[primitive["attributes"]["POSITION"]]["count"])
    corners = int(accessors[primitive["indices"]]["count"]) if "indices" in primitive else vertices
    triangles = corners // 3 if mode == TRIANGLES else max(0, corners - 2)
    return vertices, triangles


def has_texture(primitive: dict[str, Any], doc: dict[str, Any]) -> bool:
    """A base colour texture and the UVs to place it."""
    if "material" not in primitive or "TEXCOORD_0" not in primitive.get("attributes", {}):
        return False
    material = (doc.get("materials") or [])[int(primitive["material"])]
    pbr = material.get("pbrMetallicRoughness") or {}
    gloss = (material.get("extensions") or {}).get("KHR_materials_pbrSpecularGlossiness") or {}
    return "baseColorTexture" in pbr or "diffuseTexture" in gloss


# --- 4x4 matrices, row-major lists ------------------------------------------------------------
def identity() -> list[list[float]]:
    return [[1.0 if row == col else 0.0 for col in range(4)] for row in range(4)]


def multiply(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    return [[sum(a[row][k] * b[k][col] for k in range(4)) for col in range(4)] for row in range(4)]


def local_matrix(node: dict[str, Any]) -> list[list[float]]:
    """A node's `matrix` (column-major in the file), else translation x rotation x scale."""
    if "matrix" in node:
        m = [float(v) for v in node["matrix"]]
        if len(m) != 16:
            raise ValueError("a node matrix needs 16 numbers")
        return [[m[col * 4 + row] for col in range(4)] for row in range(4)]
    tx, ty, tz = (float(v) for v in node.get("translation", (0, 0, 0)))
    x, y, z, w = (float(v) for v in node.get("rotation", (0, 0, 0, 1)))
    sx, sy, sz = (float(v) for v in node.get("scale", (1, 1, 1)))
    norm = math.sqrt(x * x + y * y + z * z + w * w) or 1.0
    x, y, z, w = x / norm, y / norm, z / norm, w / norm
    rotation = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    scale = (sx, sy, sz)
    translation = (tx, ty, tz)
    return [[rotation[row][col] * scale[col] for col in range(3)] + [translation[row]] for row in range(3)] + \
        [[0.0, 0.0, 0.0, 1.0]]


def box_corners(low: list[Any], high: list[Any]) -> list[tuple[float, float, float]]:
    return [(float(x), float(y), float(z)) for x in (low[0], high[0]) for y in (low[1], high[1])
            for z in (low[2], high[2])]


def apply(m: list[list[float]], point: tuple[float, float, float]) -> list[float]:
    return [m[row][0] * point[0] + m[row][1] * point[1] + m[row][2] * point[2] + m[row][3] for row in range(3)]
