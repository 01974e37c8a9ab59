"""Draw the example photos with Pillow: `python -m image2model.examples.make_examples`.

Colourful, clearly separated objects on a plain background, so the offline relief model
gives a recognisable result. Drawn at 2x and scaled down for smooth edges.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from image2model.examples import EXAMPLES_DIR

SIZE = 320
SCALE = 2
BACKGROUND = (248, 247, 243)


def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw, Callable[[float], float]]:
    img = Image.new("RGB", (SIZE * SCALE, SIZE * SCALE), BACKGROUND)
    return img, ImageDraw.Draw(img), lambda v: v * SCALE


def _shaded_ellipse(img: Image.Image, box: tuple[float, float, float, float], colour: tuple[int, int, int],
                    light: tuple[int, int, int]) -> None:
    """An ellipse with a soft highlight towards the top left, so it reads as round."""
    x0, y0, x1, y1 = box
    ImageDraw.Draw(img).ellipse(box, fill=colour)
    glow = Image.new("L", img.size, 0)
    w, h = x1 - x0, y1 - y0
    ImageDraw.Draw(glow).ellipse((x0 + w * 0.15, y0 + h * 0.12, x0 + w * 0.55, y0 + h * 0.5), fill=150)
    glow = glow.filter(ImageFilter.GaussianBlur(w * 0.08))
    shape = Image.new("L", img.size, 0)
    ImageDraw.Draw(shape).ellipse(box, fill=255)
    glow = Image.composite(glow, Image.new("L", img.size, 0), shape)
    img.paste(Image.new("RGB", img.size, light), (0, 0), glow)


def duck() -> Image.Image:
    img, draw, s = _canvas()
    yellow, light, orange = (250, 200, 30), (255, 240, 150), (240, 120, 20)
    _shaded_ellipse(img, (s(40), s(150), s(270), s(280)), yellow, light)  # body
    draw.polygon([(s(40), s(190)), (s(20), s(150)), (s(75), s(175))], fill=yellow)  # tail
    _shaded_ellipse(img, (s(150), s(50), s(260), s(165)), yellow, light)  # head
    draw.polygon([(s(250), s(100)), (s(305), s(112)), (s(250), s(128))], fill=orange)  # beak
    draw.ellipse((s(212), s(82), s(228), s(98)), fill=(30, 30, 40))  # eye
    draw.arc((s(90), s(180), s(200), s(250)), 200, 340, fill=(225, 170, 20), width=s(6))  # wing
    return img.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def mug() -> Image.Image:
    img, draw, s = _canvas()
    red, dark = (205, 40, 45), (150, 25, 30)
    draw.ellipse((s(205), s(120), s(290), s(230)), fill=red)  # handle
    draw.ellipse((s(228), s(145), s(268), s(205)), fill=BACKGROUND)
    draw.rounded_rectangle((s(60), s(80), s(240), s(280)), radius=s(22), fill=red)  # body
    draw.rectangle((s(60), s(80), s(240), s(100)), fill=dark)  # rim
    draw.rounded_rectangle((s(80), s(110), s(105), s(255)), radius=s(10), fill=(235, 110, 110))  # shine
    draw.ellipse((s(125), s(150), s(195), s(220)), fill=(250, 245, 235))  # white heart-ish logo
    draw.polygon([(s(130), s(195)), (s(160), s(235)), (s(190), s(195))], fill=(250, 245, 235))
    return img.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def vase() -> Image.Image:
    img, draw, s = _canvas()
    teal, light = (20, 140, 160), (120, 215, 220)
    _shaded_ellipse(img, (s(75), s(130), s(245), s(295)), teal, light)  # belly
    draw.rectangle((s(130), s(45), s(190), s(160)), fill=teal)  # neck
    draw.ellipse((s(110), s(30), s(210), s(65)), fill=(15, 110, 125))  # lip
    for y, colour in ((190, (250, 200, 60)), (225, (240, 120, 40))):  # painted bands
        draw.arc((s(85), s(y - 40), s(235), s(y + 40)), 20, 160, fill=colour, width=s(8))
    return img.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def star() -> Image.Image:
    """A two-tone star cookie on transparency (an RGBA PNG, like a cut-out product shot)."""
    import math

    img = Image.new("RGBA", (SIZE * SCALE, SIZE * SCALE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    c, outer, inner = SIZE * SCALE / 2, SIZE * SCALE * 0.46, SIZE * SCALE * 0.2
    points = [(c + (outer if k % 2 == 0 else inner) * math.cos(-math.pi / 2 + k * math.pi / 5),
               c + 15 + (outer if k % 2 == 0 else inner) * math.sin(-math.pi / 2 + k * math.pi / 5))
              for k in range(10)]
    draw.polygon(points, fill=(235, 150, 40, 255))
    left = Image.new("L", img.size, 0)
    ImageDraw.Draw(left).rectangle((0, 0, c, SIZE * SCALE), fill=255)
    tint = Image.new("RGBA", img.size, (120, 60, 200, 255))
    img.paste(tint, (0, 0), Image.composite(img.getchannel("A"), Image.new("L", img.size, 0), left))
    for x, y in ((c - 40, c - 10), (c + 30, c + 20), (c - 10, c + 60)):
        draw.ellipse((x - 10, y - 10, x + 10, y + 10), fill=(255, 250, 235, 255))  # sprinkles
    return img.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


MAKERS: dict[str, Callable[[], Image.Image]] = {"duck.png": duck, "mug.png": mug, "vase.png": vase,
                                                "star.png": star}


def side_by_side(paths: list[Path]) -> Image.Image:
    """One picture of a set of photos, for the examples gallery (each photo squeezed to a strip)."""
    strip = SIZE // len(paths)
    sheet = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    for n, path in enumerate(paths):
        photo = Image.open(path).convert("RGB")
        photo.thumbnail((strip, SIZE))
        sheet.paste(photo, (n * strip + (strip - photo.width) // 2, (SIZE - photo.height) // 2))
    return sheet


def main(directory: Path = EXAMPLES_DIR) -> None:
    from image2model.examples import EXAMPLES

    for name, make in MAKERS.items():
        target = directory / name
        make().save(target, optimize=True)
        print(f"{target} ({target.stat().st_size // 1024} KB)")
    for example in EXAMPLES:
        if len(example.files) > 1:
            side_by_side([directory / name for name in example.files]).save(directory / example.sheet, optimize=True)


if __name__ == "__main__":
    main()
