"""Tests for the offline relief generator: one image in, a closed, textured GLB out.

The inputs are synthetic (tests/imagefactory.py), so every test knows the true object
mask and colours and can judge the model against them rather than against itself.
"""

from __future__ import annotations

import inspect
import io
import json
import math
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image, ImageDraw

from image2model.providers import relief
from image2model.providers.relief import RELIEF_PARAMS, ReliefResult, generate_relief, load_image
from tests import imagefactory as factory
from tests.engine_helpers import welded

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "image2model" / "examples"


# --------------------------------------------------------------------------- helpers


def load_glb(glb: bytes) -> trimesh.Trimesh:
    return trimesh.load(io.BytesIO(glb), file_type="glb", force="mesh")


def assert_closed(mesh: trimesh.Trimesh) -> None:
    """A closed, consistently wound, outward-facing shell without degenerate triangles
    (once its UV seams are joined, see welded)."""
    mesh = welded(mesh)
    assert mesh.is_watertight, "mesh has open or non-manifold edges"
    assert mesh.is_winding_consistent, "faces are not consistently wound"
    assert mesh.volume > 0, "normals point inward (negative volume)"
    assert trimesh.triangles.area(mesh.triangles).min() > 1e-10, "degenerate triangle"
    # One piece, topologically a sphere: a vertex where two sheets only touch (a pinch)
    # keeps every edge manifold but changes the Euler number.
    assert mesh.body_count == 1 and mesh.euler_number == 2, "pinched or split surface"


def front_silhouette(mesh: trimesh.Trimesh, size: tuple[int, int]) -> np.ndarray:
    """Rasterise the +Z-facing triangles, their XY bounding box stretched to `size` (w, h)."""
    w, h = size
    (x0, y0, _), (x1, y1, _) = mesh.bounds
    tri = mesh.triangles
    facing = mesh.face_normals[:, 2] > 0
    px = (tri[facing, :, 0] - x0) / (x1 - x0) * w
    py = (y1 - tri[facing, :, 1]) / (y1 - y0) * h  # +Y is up, image rows go down
    img = Image.new("L", size, 0)
    draw = ImageDraw.Draw(img)
    for xs, ys in zip(px, py, strict=True):
        draw.polygon(list(zip(xs, ys, strict=True)), fill=255)
    return np.asarray(img) >= 128


def mask_iou(mesh: trimesh.Trimesh, truth: np.ndarray) -> float:
    """IoU of the model's front projection and the true mask, both in the mask's bounding box."""
    rows, cols = np.nonzero(truth)
    crop = truth[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    projected = front_silhouette(mesh, (crop.shape[1], crop.shape[0]))
    return float((crop & projected).sum() / (crop | projected).sum())


def mask_aspect(truth: np.ndarray) -> float:
    rows, cols = np.nonzero(truth)
    return (cols.max() - cols.min() + 1) / (rows.max() - rows.min() + 1)


def texture_at(mesh: trimesh.Trimesh, vertex_ids: np.ndarray) -> np.ndarray:
    """Texture colour (RGB float) under the given vertices' UVs."""
    tex = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"), dtype=np.float64)
    uv = mesh.visual.uv[vertex_ids]
    h, w = tex.shape[:2]
    rows = np.clip(((1.0 - uv[:, 1]) * h).astype(int), 0, h - 1)
    cols = np.clip((uv[:, 0] * w).astype(int), 0, w - 1)
    return tex[rows, cols]


def front_vertices(mesh: trimesh.Trimesh) -> np.ndarray:
    """Vertices on the front (+Z) side that face the viewer, away from the rim."""
    return np.flatnonzero((mesh.vertices[:, 2] > 0) & (mesh.vertex_normals[:, 2] > 0.7))


def object_mean_colour(syn: factory.Synthetic) -> np.ndarray:
    rgb = np.asarray(syn.open().convert("RGB"), dtype=np.float64)
    return rgb[syn.mask].mean(axis=0)


def run(syn: factory.Synthetic, tmp_path: Path, **params) -> tuple[ReliefResult, trimesh.Trimesh]:
    result = generate_relief(load_image(syn.save(tmp_path)), **params)
    return result, load_glb(result.glb)


# --------------------------------------------------------------------------- inputs and shape

# name -> (factory call, expected mask source)
SEPARABLE = {
    "rgba_star": (factory.rgba_star, "alpha"),
    "product_photo": (factory.product_photo, "background"),
    "greyscale": (factory.greyscale, "background"),
    "palette": (factory.palette_png, "background"),
    "palette_transparent": (lambda: factory.palette_png(transparent=True), "alpha"),
    "png16": (factory.png16, "background"),
    "exif_6": (lambda: factory.exif_rotated_jpeg(6), "background"),
    "exif_8": (lambda: factory.exif_rotated_jpeg(8), "background"),
}


@pytest.mark.parametrize("name", sorted(SEPARABLE))
def test_object_is_separated_closed_and_matches_the_true_mask(name: str, tmp_path: Path) -> None:
    make, source = SEPARABLE[name]
    syn = make()
    result, mesh = run(syn, tmp_path)

    assert result.mask_source == source
    assert_closed(mesh)
    assert (result.vertices, result.faces) == (len(welded(mesh).vertices), len(mesh.faces))
    assert mask_iou(mesh, syn.mask) >= 0.9
    extents = mesh.extents
    assert extents[0] / extents[1] == pytest.approx(mask_aspect(syn.mask), rel=0.1)


@pytest.mark.parametrize("seed", range(6))
def test_lacy_shapes_never_pinch(seed: int) -> None:
    """Thin strokes and diagonal contacts still give a single closed manifold shell."""
    image = factory.lace_rgba(seed).open()
    for resolution in (40, 96, 160):
        result = generate_relief(image, resolution=resolution)
        assert result.mask_source == "alpha"
        assert_closed(load_glb(result.glb))


def test_input_modes_all_work(tmp_path: Path) -> None:
    """Every PIL mode converts; the colour photo's object is still found in each."""
    syn = factory.product_photo(size=(400, 300))
    photo = syn.open()
    for mode in ("L", "LA", "P", "I;16", "I", "F", "CMYK", "RGBA", "YCbCr"):
        image = factory.with_mode(photo, mode)
        assert image.mode == mode
        result = generate_relief(image)
        mesh = load_glb(result.glb)
        assert_closed(mesh)
        assert result.mask_source == "background", mode
        assert mask_iou(mesh, syn.mask) >= 0.9, mode


def test_full_frame_photo_becomes_a_closed_plate(tmp_path: Path) -> None:
    syn = factory.full_frame_photo()
    result, mesh = run(syn, tmp_path)

    assert result.mask_source == "full_frame"
    assert_closed(mesh)
    x, y, z = mesh.extents
    assert x / y == pytest.approx(syn.size[0] / syn.size[1], rel=0.02)
    assert 0.01 < z < 0.2, "a plate is thin"
    # Constant thickness with rounded edges fills its bounding box almost completely;
    # an inflated pillow (thickness falling to zero at the edge) would fill about half.
    assert mesh.volume / (x * y * z) > 0.85
    assert mask_iou(mesh, np.ones(syn.size[::-1], dtype=bool)) >= 0.98


def test_uniform_and_transparent_images_fall_back_to_the_frame() -> None:
    for image in (Image.new("RGB", (300, 200), "white"), Image.new("RGBA", (300, 200), (0, 0, 0, 0))):
        result = generate_relief(image)
        assert result.mask_source == "full_frame"
        assert_closed(load_glb(result.glb))


def test_opaque_alpha_is_ignored_in_favour_of_background_removal() -> None:
    syn = factory.product_photo(size=(400, 300))
    result = generate_relief(syn.open().convert("RGBA"))
    assert result.mask_source == "background"


@pytest.mark.parametrize("size", [(16, 16), (1, 1), (3, 200), (2000, 12)])
def test_tiny_and_extreme_images_still_give_a_closed_model(size: tuple[int, int], tmp_path: Path) -> None:
    if size == (16, 16):
        syn = factory.tiny()
        image = load_image(syn.save(tmp_path))
    else:
        rng = np.random.default_rng(0)
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    result = generate_relief(image)
    mesh = load_glb(result.glb)
    assert_closed(mesh)
    x, y, _ = mesh.extents
    assert x / y == pytest.approx(size[0] / size[1], rel=0.1)


# --------------------------------------------------------------------------- placement


def test_placed_as_gltf_expects_centred_unit_size(tmp_path: Path) -> None:
    _, mesh = run(factory.product_photo(), tmp_path)
    lo, hi = mesh.bounds
    assert np.allclose((lo + hi) / 2, 0.0, atol=1e-6), "centred at the origin"
    assert mesh.extents.max() == pytest.approx(1.0, abs=1e-6), "largest dimension is 1"


def test_image_top_is_plus_y(tmp_path: Path) -> None:
    """The bottle is red on top and blue below: the model's top (+Y) must be red."""
    _, mesh = run(factory.product_photo(), tmp_path)
    front = front_vertices(mesh)
    y = mesh.vertices[front, 1]
    top = texture_at(mesh, front[y > 0.3]).mean(axis=0)
    bottom = texture_at(mesh, front[y < -0.3]).mean(axis=0)
    assert np.abs(top - factory.RED).max() < 40 and np.abs(bottom - factory.BLUE).max() < 40


def test_front_faces_plus_z_not_mirrored(tmp_path: Path) -> None:
    """Seen from +Z (a glTF viewer's default camera) the star's left half is orange."""
    _, mesh = run(factory.rgba_star(), tmp_path)
    front = front_vertices(mesh)
    x = mesh.vertices[front, 0]
    left = texture_at(mesh, front[x < -0.15]).mean(axis=0)
    right = texture_at(mesh, front[x > 0.15]).mean(axis=0)
    assert np.abs(left - factory.ORANGE).max() < 30
    assert np.abs(right - factory.TEAL).max() < 30
    # And the +Z side really is the outside: its faces' normals point to +Z.
    centre = np.abs(mesh.triangles_center[:, :2]).max(axis=1) < 0.05
    up = mesh.triangles_center[:, 2] > 0
    assert (mesh.face_normals[centre & up, 2] > 0.5).all()


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_orientation_is_applied(orientation: int, tmp_path: Path) -> None:
    syn = factory.exif_rotated_jpeg(orientation)
    assert Image.open(syn.save(tmp_path)).size == syn.size[::-1], "stored pixels are sideways"
    _, mesh = run(syn, tmp_path)
    x, y, _ = mesh.extents
    assert y > 2 * x, "upright, the object is a tall rectangle"
    front = front_vertices(mesh)
    top = texture_at(mesh, front[mesh.vertices[front, 1] > 0.25]).mean(axis=0)
    assert np.abs(top - factory.RED).max() < 40


def test_exif_orientation_is_applied_to_images_passed_directly() -> None:
    syn = factory.exif_rotated_jpeg(6)
    raw = syn.open()  # not transposed
    mesh = load_glb(generate_relief(raw).glb)
    assert mesh.extents[1] > 2 * mesh.extents[0]


# --------------------------------------------------------------------------- texture


def test_texture_comes_from_the_image(tmp_path: Path) -> None:
    for syn in (factory.rgba_star(), factory.product_photo()):
        _, mesh = run(syn, tmp_path)
        texture = mesh.visual.material.baseColorTexture
        assert texture is not None and max(texture.size) <= relief.TEXTURE_MAX_SIDE
        sampled = texture_at(mesh, front_vertices(mesh)).mean(axis=0)
        assert np.abs(sampled - object_mean_colour(syn)).max() < 20, syn.name


def test_texture_is_capped_for_big_photos() -> None:
    image = factory.full_frame_photo(size=(1800, 1350)).open()
    mesh = load_glb(generate_relief(image).glb)
    assert relief.TEXTURE_MAX_SIDE - 32 <= max(mesh.visual.material.baseColorTexture.size) <= relief.TEXTURE_MAX_SIDE


def test_rim_carries_object_colour_not_background(tmp_path: Path) -> None:
    """Background colour must not bleed onto the silhouette (the product sits on white)."""
    _, mesh = run(factory.product_photo(), tmp_path)
    rim = np.flatnonzero(np.abs(mesh.vertex_normals[:, 2]) < 0.2)  # the side wall
    colours = texture_at(mesh, rim)
    whiteish = (colours.min(axis=1) > 200).mean()
    assert len(rim) > 100 and whiteish < 0.02


def back_vertices(mesh: trimesh.Trimesh) -> np.ndarray:
    return np.flatnonzero((mesh.vertices[:, 2] < 0) & (mesh.vertex_normals[:, 2] < -0.7))


def test_the_back_is_not_a_mirrored_copy_of_the_photo(tmp_path: Path) -> None:
    """The star is orange on the left and teal on the right. Seen from behind, a mirrored
    copy would show teal on the viewer's left; instead each row of the back has one colour,
    the row's median, so left and right of the back agree, in the object's colours."""
    _, mesh = run(factory.rgba_star(), tmp_path, shape="relief")
    back = back_vertices(mesh)
    x, y = mesh.vertices[back, 0], mesh.vertices[back, 1]
    band = np.abs(y) < 0.1
    left = texture_at(mesh, back[band & (x < -0.15)]).mean(axis=0)
    right = texture_at(mesh, back[band & (x > 0.15)]).mean(axis=0)
    assert np.abs(left - right).max() < 12
    low = np.minimum(factory.ORANGE, factory.TEAL) - 15
    high = np.maximum(factory.ORANGE, factory.TEAL) + 15
    assert ((low <= left) & (left <= high)).all()


def test_a_mugs_logo_stays_on_the_front() -> None:
    """The drawn mug has a white logo on a red body: the back is red all over."""
    result = generate_relief(load_image(EXAMPLES / "mug.png"))
    mesh = load_glb(result.glb)
    front, back = front_vertices(mesh), back_vertices(mesh)
    whitish = lambda colours: (colours.min(axis=1) > 200).mean()  # noqa: E731
    assert whitish(texture_at(mesh, front)) > 0.05  # the logo is there, in front
    assert whitish(texture_at(mesh, back)) == 0.0
    assert (texture_at(mesh, back)[:, 0] > 120).mean() > 0.95  # red


def glb_attribute(glb: bytes, name: str) -> np.ndarray:
    """A vertex attribute of the GLB's one primitive, as stored (loaders may recompute normals)."""
    length = int.from_bytes(glb[12:16], "little")
    header = json.loads(glb[20: 20 + length])
    (primitive,) = header["meshes"][0]["primitives"]
    accessor = header["accessors"][primitive["attributes"][name]]
    view = header["bufferViews"][accessor["bufferView"]]
    start = 20 + length + 8 + view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    width = {"VEC2": 2, "VEC3": 3}[accessor["type"]]
    return np.frombuffer(glb, np.float32, accessor["count"] * width, start).reshape(-1, width)


def test_uv_seams_only_split_the_texture_not_the_surface() -> None:
    """A vertex stored twice (front and back UV) has one position and one normal, so the
    seam neither opens the surface nor shows as a crease."""
    for syn in (factory.rgba_star(), factory.product_photo()):
        glb = generate_relief(syn.open()).glb
        positions, normals, uv = (glb_attribute(glb, n) for n in ("POSITION", "NORMAL", "TEXCOORD_0"))
        _, group, count = np.unique(np.round(positions, 6), axis=0, return_inverse=True, return_counts=True)
        group = group.ravel()
        twins = np.flatnonzero(count[group] > 1)
        assert len(twins) > 50, syn.name  # the seam runs all round the object
        order = twins[np.argsort(group[twins], kind="stable")]
        first = order[np.r_[True, group[order][1:] != group[order][:-1]]]
        lead = first[np.searchsorted(group[first], group[order])]
        assert np.allclose(normals[order], normals[lead], atol=1e-5), syn.name
        assert (np.abs(uv[order] - uv[lead]).max(axis=1)[order != lead] > 1e-3).all(), syn.name


def test_glb_is_small_with_embedded_jpeg_texture() -> None:
    syn = factory.product_photo(size=(1155, 866))  # one megapixel
    start = time.perf_counter()
    result = generate_relief(syn.open())
    elapsed = time.perf_counter() - start
    assert len(result.glb) < 3_000_000
    assert elapsed < 1.0
    header = json.loads(result.glb[20: 20 + int.from_bytes(result.glb[12:16], "little")])
    assert [img["mimeType"] for img in header["images"]] == ["image/jpeg"]
    material = header["materials"][0]["pbrMetallicRoughness"]
    assert "baseColorTexture" in material and material["metallicFactor"] == 0.0


# --------------------------------------------------------------------------- parameters


def test_face_count_follows_resolution(tmp_path: Path) -> None:
    image = load_image(factory.product_photo().save(tmp_path))
    faces = [generate_relief(image, resolution=r).faces for r in (64, 128, 256)]
    assert faces[0] < faces[1] < faces[2]
    assert 2.5 < faces[1] / faces[0] < 6 and 2.5 < faces[2] / faces[1] < 6  # ~ resolution squared


def test_face_count_follows_object_area(tmp_path: Path) -> None:
    syn = factory.product_photo()
    product = generate_relief(syn.open()).faces
    frame = generate_relief(factory.full_frame_photo(size=syn.size).open()).faces
    assert product / frame == pytest.approx(syn.mask.mean(), rel=0.25)


def test_inflation_and_detail_change_the_shape(tmp_path: Path) -> None:
    image = factory.rgba_star().open()
    thin = load_glb(generate_relief(image, inflation=0.1, detail=0.0).glb)
    thick = load_glb(generate_relief(image, inflation=0.8, detail=0.0).glb)
    assert thick.extents[2] > 4 * thin.extents[2]
    flat = load_glb(generate_relief(image, detail=0.0).glb)
    relief_ = load_glb(generate_relief(image, detail=1.0).glb)
    # Detail only raises the front: the back stays, the front comes forward.
    assert relief_.extents[2] > flat.extents[2]


def test_catalog_describes_the_parameters() -> None:
    by_name = {p["name"]: p for p in RELIEF_PARAMS}
    assert list(by_name) == ["resolution", "inflation", "detail", "bg_tolerance", "background", "shape"]
    for name, choices in (("background", ["auto", "remove", "keep"]), ("shape", ["auto", "relief", "revolve"])):
        assert (by_name[name]["type"], by_name[name]["choices"]) == ("choice", choices)
        assert by_name[name]["default"] == inspect.signature(generate_relief).parameters[name].default == "auto"
    expected = {"resolution": ("int", 32, 512, 8), "inflation": ("float", 0.05, 1.0, None),
                "detail": ("float", 0.0, 1.0, None), "bg_tolerance": ("float", 0.01, 0.5, None)}
    signature = inspect.signature(generate_relief).parameters
    for name, (kind, lo, hi, step) in expected.items():
        spec = by_name[name]
        assert set(spec) == {"name", "type", "default", "minimum", "maximum", "step", "help"}
        assert (spec["type"], spec["minimum"], spec["maximum"]) == (kind, lo, hi)
        assert step is None or spec["step"] == step
        assert spec["default"] == signature[name].default and lo <= spec["default"] <= hi
        assert spec["help"].strip()


@pytest.mark.parametrize("name, value", [
    ("resolution", 31), ("resolution", 513), ("resolution", 100.5), ("resolution", "160"),
    ("resolution", True), ("inflation", 0.0), ("inflation", 1.5), ("inflation", math.nan),
    ("detail", -0.1), ("detail", 1.01), ("bg_tolerance", 0.0), ("bg_tolerance", 0.6),
    ("bg_tolerance", None), ("background", "off"), ("background", None), ("shape", "sphere"), ("shape", 1),
])
def test_invalid_parameters_raise_naming_the_parameter(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        generate_relief(Image.new("RGB", (32, 32)), **{name: value})


def test_boundary_parameter_values_are_accepted() -> None:
    image = factory.rgba_star(size=(160, 120)).open()
    for params in ({"resolution": 32, "inflation": 0.05, "detail": 0.0, "bg_tolerance": 0.01},
                   {"resolution": 512, "inflation": 1.0, "detail": 1.0, "bg_tolerance": 0.5}):
        assert_closed(load_glb(generate_relief(image, **params).glb))


def test_not_an_image_is_rejected() -> None:
    with pytest.raises(ValueError, match="image"):
        generate_relief(np.zeros((8, 8, 3)))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- behaviour


def test_deterministic_byte_identical_output(tmp_path: Path) -> None:
    syn = factory.product_photo()
    first = generate_relief(syn.open()).glb
    second = generate_relief(load_image(syn.save(tmp_path))).glb  # a fresh decode
    assert first == second


def test_progress_stages_in_order() -> None:
    calls: list[tuple[float, str]] = []
    generate_relief(factory.rgba_star().open(), progress=lambda f, m: calls.append((f, m)))
    assert [m for _, m in calls] == ["Separating the object", "Building the mesh", "Texturing",
                                     "Writing the model"]
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and len(set(fractions)) == 4
    assert all(0.0 <= f <= 1.0 for f in fractions)


def test_heif_files_load(tmp_path: Path) -> None:
    syn = factory.product_photo(size=(400, 300))
    path = tmp_path / "photo.heic"
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        syn.open().save(path, format="HEIF", quality=90)
    except Exception as exc:  # encoder missing from this libheif build
        pytest.skip(f"cannot write HEIF here: {exc}")
    result = generate_relief(load_image(path))
    assert result.mask_source == "background"
    assert mask_iou(load_glb(result.glb), syn.mask) >= 0.9


# --------------------------------------------------------------------------- large input


@pytest.fixture(scope="module")
def huge_path(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, factory.Synthetic]:
    syn = factory.huge_jpeg()
    return syn.save(tmp_path_factory.mktemp("huge")), syn


_MEASURE = textwrap.dedent("""
    import json, sys, time
    from PIL import Image
    from image2model.providers.relief import generate_relief, load_image

    def peak_mb():
        # VmHWM: this process's own peak RSS (ru_maxrss would include the parent's,
        # inherited across fork and exec).
        with open("/proc/self/status") as status:
            line = next(l for l in status if l.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024

    path, how = sys.argv[1], sys.argv[2]
    before = peak_mb()
    start = time.perf_counter()
    image = load_image(path) if how == "load_image" else Image.open(path)
    result = generate_relief(image)
    print(json.dumps({"seconds": time.perf_counter() - start, "before_mb": before,
                      "peak_mb": peak_mb(), "size": list(image.size),
                      "source": result.mask_source, "faces": result.faces}))
""")


def measure(path: Path, how: str) -> dict:
    """Run one generation in a fresh process, so its peak memory is its own."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path), how], cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS read from /proc (Linux)")
def test_48_megapixel_jpeg_loads_small_and_fast(huge_path: tuple[Path, factory.Synthetic]) -> None:
    """load_image decodes at reduced DCT scale: the 144 MB full-size bitmap never exists."""
    path, syn = huge_path
    figures = measure(path, "load_image")
    assert max(figures["size"]) <= relief.SOURCE_MAX_SIDE
    assert figures["source"] == "background"
    assert figures["seconds"] < 5.0
    # Measured ~85 MB; a full-size decode alone would add 144 MB (~240 MB in all).
    assert figures["peak_mb"] - figures["before_mb"] < 150, figures


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS read from /proc (Linux)")
def test_48_megapixel_image_in_memory_is_downscaled_first(huge_path: tuple[Path, factory.Synthetic]) -> None:
    path, syn = huge_path
    figures = measure(path, "open")  # full decode, then generate_relief on 48 MP
    assert figures["size"] == list(syn.size)
    assert figures["source"] == "background"
    assert figures["seconds"] < 8.0


# --------------------------------------------------------------------------- volume and shape


def example(name: str) -> ReliefResult:
    return generate_relief(load_image(EXAMPLES / f"{name}.png"))


def depth_over_width(result: ReliefResult) -> float:
    extents = welded(load_glb(result.glb)).extents
    return float(extents[2] / extents[0])


@pytest.mark.parametrize("name", ["mug", "vase", "duck"])
def test_round_compact_objects_are_at_least_a_third_as_deep_as_wide(name: str) -> None:
    assert depth_over_width(example(name)) >= 1 / 3


def test_a_compact_object_on_a_photo_gets_depth_too() -> None:
    coffee = pytest.importorskip("skimage.data").coffee()
    assert depth_over_width(generate_relief(Image.fromarray(coffee))) >= 1 / 3
    assert depth_over_width(generate_relief(factory.product_photo().open())) >= 1 / 3


def test_revolve_is_chosen_for_turned_objects_only() -> None:
    shapes = {name: example(name).shape for name in ("mug", "vase", "duck", "star")}
    assert shapes == {"mug": "revolve", "vase": "revolve", "duck": "relief", "star": "relief"}
    assert generate_relief(factory.product_photo().open()).shape == "revolve"  # a bottle
    assert generate_relief(factory.full_frame_photo().open()).shape == "relief"


def test_a_revolved_body_is_round_in_every_cross_section() -> None:
    mesh = welded(load_glb(example("vase").glb))
    assert depth_over_width(example("vase")) == pytest.approx(1.0, abs=0.02)
    rings = 0
    for y in np.unique(np.round(mesh.vertices[:, 1], 5)):
        ring = mesh.vertices[np.abs(mesh.vertices[:, 1] - y) < 1e-5]
        if len(ring) < 16:
            continue  # a cap's centre
        radius = np.hypot(ring[:, 0] - ring[:, 0].mean(), ring[:, 2] - ring[:, 2].mean())
        assert radius.max() - radius.min() < 0.01 * max(radius.mean(), 0.05)
        rings += 1
    assert rings > 50


def test_the_mug_keeps_its_handle_beside_a_revolved_body() -> None:
    result = example("mug")
    assert result.shape == "revolve"
    bodies = sorted(welded(load_glb(result.glb)).split(only_watertight=False), key=lambda b: b.volume)
    assert len(bodies) == 2
    for body in bodies:
        assert body.is_watertight and body.is_winding_consistent and body.volume > 0
    handle, cup = bodies
    assert handle.volume < 0.2 * cup.volume
    assert handle.bounds[1][0] > cup.bounds[1][0] + 0.1  # sticks out to the right, as drawn
    assert handle.bounds[0][0] < cup.bounds[1][0]  # and reaches into the body


def test_the_shape_can_be_forced_either_way() -> None:
    vase = load_image(EXAMPLES / "vase.png")
    puffed = generate_relief(vase, shape="relief")
    assert puffed.shape == "relief" and depth_over_width(puffed) < 0.8
    duck = generate_relief(load_image(EXAMPLES / "duck.png"), shape="revolve")
    assert duck.shape == "revolve"
    for body in welded(load_glb(duck.glb)).split(only_watertight=False):
        assert body.is_watertight and body.volume > 0
    # nothing stands out: there is no object to turn, so the photo stays a plate
    plate = generate_relief(factory.full_frame_photo().open(), shape="revolve")
    assert (plate.shape, plate.mask_source) == ("relief", "full_frame")


def test_the_mugs_handle_has_an_open_eye() -> None:
    """Looking straight at the model, the background shows through the handle's eye
    (drawn at x 240-268, y 145-205 of the 320-pixel photo), and the handle is around it."""
    box = (60, 80, 290, 280)  # the mug's outline in the photo: body and handle
    seen = front_silhouette(welded(load_glb(example("mug").glb)), (box[2] - box[0], box[3] - box[1]))

    def hit(px: int, py: int) -> bool:
        return bool(seen[py - box[1], px - box[0]])

    assert not hit(254, 175) and not hit(254, 160) and not hit(254, 190)
    assert hit(280, 175) and hit(254, 135) and hit(254, 215) and hit(150, 175)


def test_a_cup_on_a_saucer_seen_from_above_is_not_spun_into_a_lens() -> None:
    """Its outline is a wide symmetric ellipse; spun, it would become a lens."""
    coffee = pytest.importorskip("skimage.data").coffee()
    assert generate_relief(Image.fromarray(coffee)).shape == "relief"
    # the same outline, drawn: a wide ellipse on white
    img = Image.new("RGB", (400, 300), (250, 250, 250))
    ImageDraw.Draw(img).ellipse((40, 70, 360, 250), fill=(180, 60, 30))
    assert generate_relief(img).shape == "relief"
    tall = Image.new("RGB", (300, 400), (250, 250, 250))
    ImageDraw.Draw(tall).ellipse((70, 40, 250, 360), fill=(180, 60, 30))
    assert generate_relief(tall).shape == "revolve"  # an egg stands up: turned
