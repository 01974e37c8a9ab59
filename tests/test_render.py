"""Tests for the CPU thumbnail renderer (image2model/media/render.py).

Every model is built here with known colours and shapes, exported to GLB by trimesh and
rendered; the tests judge the picture's pixels against what the model must look like.
"""

from __future__ import annotations

import io
import json
import struct
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh
from PIL import Image

from image2model.media.render import render_thumbnail

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "image2model" / "examples"

RED = (220, 30, 30)
BLUE = (30, 40, 220)


def glb_of(*meshes: trimesh.Trimesh, transforms: list[np.ndarray] | None = None) -> bytes:
    scene = trimesh.Scene()
    for i, mesh in enumerate(meshes):
        scene.add_geometry(mesh, node_name=f"node{i}", transform=None if transforms is None else transforms[i])
    return scene.export(file_type="glb")


def pixels(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.mode == "RGBA"
    return np.asarray(image).astype(int)


def covered(rgba: np.ndarray) -> np.ndarray:
    return rgba[..., 3] > 0


def solid(rgba: np.ndarray) -> np.ndarray:
    """Fully covered pixels (not the anti-aliased rim)."""
    return rgba[..., 3] == 255


def reddish(rgba: np.ndarray) -> np.ndarray:
    r, g, b = rgba[..., 0], rgba[..., 1], rgba[..., 2]
    return solid(rgba) & (r > 60) & (r > 2 * g) & (r > 2 * b)


def blueish(rgba: np.ndarray) -> np.ndarray:
    r, g, b = rgba[..., 0], rgba[..., 1], rgba[..., 2]
    return solid(rgba) & (b > 60) & (b > 2 * r) & (b > 2 * g)


def greenish(rgba: np.ndarray) -> np.ndarray:
    r, g, b = rgba[..., 0], rgba[..., 1], rgba[..., 2]
    return solid(rgba) & (g > 60) & (g > 2 * r) & (g > 2 * b)


def touches_edge(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def textured_box() -> trimesh.Trimesh:
    """A unit box whose texture is red on its left half (u < 0.5) and blue on the right."""
    box = trimesh.creation.box()
    box.unmerge_vertices()
    texture = Image.new("RGB", (64, 64), BLUE)
    texture.paste(RED, (0, 0, 32, 64))
    uv = np.column_stack([box.vertices[:, 0] + 0.5, np.full(len(box.vertices), 0.5)])
    box.visual = trimesh.visual.TextureVisuals(uv=uv, image=texture)
    return box


def upright(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """trimesh builds cylinders along Z; stand one up along glTF's up axis, +Y."""
    mesh.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    return mesh


def quad(z: float, half: float, colour: tuple[int, int, int], facing_camera: bool = True) -> trimesh.Trimesh:
    """A square at depth z facing +Z (towards the camera) or, with facing_camera=False, away."""
    vertices = [[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]]
    faces = [[0, 1, 2], [0, 2, 3]] if facing_camera else [[0, 2, 1], [0, 3, 2]]
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    mesh.visual.vertex_colors = np.tile([*colour, 255], (4, 1))
    return mesh


def empty_glb() -> bytes:
    """A valid GLB whose only node has no mesh (trimesh refuses to export empty scenes)."""
    doc = json.dumps({"asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}],
                      "nodes": [{"name": "empty"}]}).encode()
    doc += b" " * (-len(doc) % 4)
    return struct.pack("<4sII", b"glTF", 2, 12 + 8 + len(doc)) + struct.pack("<I4s", len(doc), b"JSON") + doc


def test_textured_box_shows_both_texture_halves_on_a_transparent_square():
    rgba = pixels(render_thumbnail(glb_of(textured_box())))
    assert rgba.shape == (256, 256, 4)
    share = covered(rgba).mean()
    assert 0.15 <= share <= 0.80, share
    assert reddish(rgba).sum() > 2000
    assert blueish(rgba).sum() > 2000
    for corner in (rgba[0, 0], rgba[0, -1], rgba[-1, 0], rgba[-1, -1]):
        assert tuple(corner) == (0, 0, 0, 0)
    # The box's left face (-X, u = 0) is seen on the picture's left, so red is left of blue.
    assert np.nonzero(reddish(rgba))[1].mean() < np.nonzero(blueish(rgba))[1].mean()


def test_texture_rows_follow_v_up():
    """v near 1 is the top of the texture image (trimesh's convention, kept through GLB)."""
    box = trimesh.creation.box()
    texture = Image.new("RGB", (8, 8), BLUE)
    texture.paste((30, 200, 40), (0, 0, 8, 4))  # top half green
    box.visual = trimesh.visual.TextureVisuals(uv=np.tile([0.5, 0.9], (len(box.vertices), 1)), image=texture)
    rgba = pixels(render_thumbnail(glb_of(box)))
    assert greenish(rgba).sum() > 0.9 * solid(rgba).sum()


def test_size_and_opaque_background():
    background = (255, 255, 255, 255)
    rgba = pixels(render_thumbnail(glb_of(textured_box()), size=96, background=background))
    assert rgba.shape == (96, 96, 4)
    for corner in (rgba[0, 0], rgba[0, -1], rgba[-1, 0], rgba[-1, -1]):
        assert tuple(corner) == background
    assert reddish(rgba).any() and blueish(rgba).any()


def test_path_and_str_inputs(tmp_path):
    data = glb_of(textured_box())
    path = tmp_path / "box.glb"
    path.write_bytes(data)
    expected = pixels(render_thumbnail(data))
    assert np.array_equal(pixels(render_thumbnail(path)), expected)
    assert np.array_equal(pixels(render_thumbnail(str(path))), expected)


def test_tall_thin_cylinder_is_fully_inside_and_fills_the_height():
    rgba = pixels(render_thumbnail(glb_of(upright(trimesh.creation.cylinder(radius=0.2, height=10)))))
    mask = covered(rgba)
    assert not touches_edge(mask)
    rows, cols = np.nonzero(mask)
    assert rows.max() - rows.min() + 1 >= 0.5 * 256
    assert cols.max() - cols.min() + 1 < 0.25 * 256  # still thin: not stretched to fill the width
    assert abs((rows.max() + rows.min()) / 2 - 127.5) < 4 and abs((cols.max() + cols.min()) / 2 - 127.5) < 4


def test_wide_flat_box_is_fully_inside_and_fills_the_width():
    rgba = pixels(render_thumbnail(glb_of(trimesh.creation.box(extents=[10, 0.2, 3]))))
    mask = covered(rgba)
    assert not touches_edge(mask)
    rows, cols = np.nonzero(mask)
    assert cols.max() - cols.min() + 1 >= 0.5 * 256
    assert rows.max() - rows.min() + 1 < 0.5 * 256
    assert abs((rows.max() + rows.min()) / 2 - 127.5) < 4 and abs((cols.max() + cols.min()) / 2 - 127.5) < 4


def test_sphere_is_brighter_on_the_lit_side():
    rgba = pixels(render_thumbnail(glb_of(trimesh.creation.icosphere(subdivisions=4))))
    mask = solid(rgba)
    rows, cols = np.nonzero(mask)
    # A sphere projects to a round disc: about pi/4 of its bounding square.
    disc = mask.sum() / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1))
    assert 0.72 < disc < 0.82, disc
    brightness = rgba[..., :3].mean(axis=2)
    cy = rows.mean()
    upper = mask & (np.arange(256)[:, None] < cy - 30)
    lower = mask & (np.arange(256)[:, None] > cy + 30)
    assert brightness[upper].mean() > brightness[lower].mean() + 40
    assert brightness[mask].max() - brightness[mask].min() > 80
    # Untextured, uncoloured: neutral grey.
    spread = rgba[..., :3][mask].max(axis=1) - rgba[..., :3][mask].min(axis=1)
    assert spread.max() <= 2


def test_vertex_colours_and_node_transforms_of_a_multi_mesh_scene():
    green = trimesh.creation.box()
    green.visual.vertex_colors = np.tile([30, 200, 40, 255], (len(green.vertices), 1))
    red = trimesh.creation.icosphere(subdivisions=2)
    red.visual.vertex_colors = np.tile([*RED, 255], (len(red.vertices), 1))
    left = trimesh.transformations.translation_matrix([-3, 0, 0])
    right = trimesh.transformations.translation_matrix([3, 0, 0])
    rgba = pixels(render_thumbnail(glb_of(green, red, transforms=[left, right])))
    assert greenish(rgba).sum() > 1000 and reddish(rgba).sum() > 1000
    assert np.nonzero(greenish(rgba))[1].max() < 128 < np.nonzero(reddish(rgba))[1].min()
    assert not touches_edge(covered(rgba))


def test_vertex_colours_are_averaged_per_face():
    box = trimesh.creation.box()
    colours = np.where(box.vertices[:, :1] < 0, [[*RED, 255]], [[*BLUE, 255]])
    box.visual.vertex_colors = colours.astype(np.uint8)
    rgba = pixels(render_thumbnail(glb_of(box)))
    # The -X face has only red vertices; faces spanning both sides mix to purple.
    assert reddish(rgba).sum() > 1000
    r, b = rgba[..., 0], rgba[..., 2]
    purple = solid(rgba) & (r > 60) & (b > 60) & (np.abs(r - b) < 0.5 * np.maximum(r, b))
    assert purple.sum() > 1000


def test_material_base_colour_factor():
    box = trimesh.creation.box()
    box.visual = trimesh.visual.TextureVisuals(
        material=trimesh.visual.material.PBRMaterial(baseColorFactor=[*BLUE, 255]))
    rgba = pixels(render_thumbnail(glb_of(box)))
    assert blueish(rgba).sum() > 0.95 * solid(rgba).sum() > 0


def test_back_facing_triangles_are_skipped():
    front = pixels(render_thumbnail(glb_of(quad(0.0, 1.0, RED))))
    assert reddish(front).sum() > 0.2 * 256 * 256
    back = pixels(render_thumbnail(glb_of(quad(0.0, 1.0, RED, facing_camera=False))))
    assert not covered(back).any()


@pytest.mark.parametrize("near_first", [True, False])
def test_nearer_faces_hide_farther_ones_whatever_their_order(near_first):
    near, far = quad(1.0, 0.5, RED), quad(-1.0, 1.0, BLUE)
    meshes = (near, far) if near_first else (far, near)
    rgba = pixels(render_thumbnail(glb_of(trimesh.util.concatenate(meshes))))
    red, blue = reddish(rgba), blueish(rgba)
    assert red.sum() > 2000  # drawn far-to-near or z-buffered, the near square is not hidden
    assert blue.sum() > 2000
    # Nothing blue shows inside the red square's outline (shrunk past its anti-aliased rim).
    hull = cv2.convexHull(np.argwhere(red)[:, ::-1].astype(np.int32))
    inside = np.zeros((256, 256), dtype=np.uint8)
    cv2.fillConvexPoly(inside, hull, 1)
    inside = cv2.erode(inside, np.ones((7, 7), np.uint8)).astype(bool)
    assert inside.sum() > 1500
    assert red[inside].mean() > 0.98
    assert not blue[inside].any()


def test_closed_mesh_has_no_pinholes():
    """Shared edges are rasterised once: a closed sphere shows no background inside it."""
    mesh = trimesh.creation.icosphere(subdivisions=5)
    rgba = pixels(render_thumbnail(glb_of(mesh), size=200))
    alpha = rgba[..., 3]
    rows, cols = np.nonzero(alpha)
    cy, cx = (rows.max() + rows.min()) / 2, (cols.max() + cols.min()) / 2
    radius = (rows.max() - rows.min()) / 2
    yy, xx = np.mgrid[:200, :200]
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 < (radius - 7) ** 2  # polygonal rim, Lanczos rings ~3 px in
    assert (alpha[inside] == 255).all()


def test_not_a_glb_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="not a readable GLB"):
        render_thumbnail(b"hello")
    path = tmp_path / "notes.glb"
    path.write_text("just text")
    with pytest.raises(ValueError, match="not a readable GLB"):
        render_thumbnail(path)
    with pytest.raises(ValueError, match="not a readable GLB"):
        render_thumbnail(tmp_path / "missing.glb")


def test_scene_without_triangles_raises_value_error():
    with pytest.raises(ValueError, match="no triangles"):
        render_thumbnail(empty_glb())
    points = trimesh.Scene(trimesh.PointCloud([[0, 0, 0], [1, 1, 1]])).export(file_type="glb")
    with pytest.raises(ValueError, match="no triangles"):
        render_thumbnail(points)


def test_bad_arguments_raise_value_error():
    data = glb_of(textured_box())
    with pytest.raises(ValueError):
        render_thumbnail(data, size=0)
    with pytest.raises(ValueError):
        render_thumbnail(data, background=(0, 0, 0))


def test_offline_generator_mug_renders_mostly_red():
    from image2model.providers.relief import generate_relief, load_image

    glb = generate_relief(load_image(EXAMPLES / "mug.png")).glb
    started = time.perf_counter()
    rgba = pixels(render_thumbnail(glb))
    print(f"mug render: {time.perf_counter() - started:.3f} s")
    assert 0.15 <= covered(rgba).mean() <= 0.85
    assert reddish(rgba).sum() > 0.5 * solid(rgba).sum()
    assert not touches_edge(covered(rgba))


def test_fifty_thousand_faces(capsys):
    mesh = trimesh.creation.uv_sphere(count=[113, 113])
    assert 50_000 <= len(mesh.faces) <= 52_000
    mesh.visual.vertex_colors = np.tile([*RED, 255], (len(mesh.vertices), 1))
    glb = glb_of(mesh)
    render_thumbnail(glb)  # warm up imports and caches
    started = time.perf_counter()
    rgba = pixels(render_thumbnail(glb))
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(f"\n{len(mesh.faces)}-face render: {elapsed:.3f} s")
    mask = solid(rgba)
    rows, cols = np.nonzero(mask)
    assert 0.72 < mask.sum() / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1)) < 0.82
    assert reddish(rgba).sum() > 0.95 * mask.sum()
