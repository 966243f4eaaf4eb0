"""Drawing toy scenes with Pillow, deterministically (no fonts, no metadata, no timestamps).

Scenes are drawn at four times their size and box-downsampled, which gives smooth edges so shapes stay
recognisable when the model's global view shrinks an image to about 64x64. Digits are drawn as seven
segments with lines rather than with a font: a font's rasterisation depends on the FreeType build,
and the world must come out byte-identical for a given seed.
"""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

from sicog.toy.world import BACKGROUNDS, COLORS, Scene, SceneObject

SUPERSAMPLE = 4
# Digit height as a fraction of the object's side; the cross's arms are wide enough to hold it.
DIGIT_HEIGHT = 0.42
CROSS_ARM = 0.46
DARK_DIGIT_ON = ("yellow", "orange")

# Seven segments: a top, b top right, c bottom right, d bottom, e bottom left, f top left, g middle.
_SEGMENTS = {
    "a": ((0, 0), (1, 0)),
    "b": ((1, 0), (1, 0.5)),
    "c": ((1, 0.5), (1, 1)),
    "d": ((0, 1), (1, 1)),
    "e": ((0, 0.5), (0, 1)),
    "f": ((0, 0), (0, 0.5)),
    "g": ((0, 0.5), (1, 0.5)),
}
_DIGITS = {
    0: "abcdef",
    1: "bc",
    2: "abged",
    3: "abgcd",
    4: "fgbc",
    5: "afgcd",
    6: "afgedc",
    7: "abc",
    8: "abcdefg",
    9: "abcdfg",
}


def render(scene: Scene) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``scene.width x scene.height`` pixels."""
    s = SUPERSAMPLE
    canvas = Image.new("RGB", (scene.width * s, scene.height * s), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(canvas)
    short = min(scene.width, scene.height)
    if scene.border:
        width = max(1, round(0.03 * short)) * s
        draw.rectangle((0, 0, scene.width * s - 1, scene.height * s - 1), outline=COLORS[scene.border], width=width)
    for obj in scene.objects:
        _draw_object(draw, scene, obj)
    if scene.mark:
        diameter = max(4.0, 0.09 * short) * s
        margin = max(2.0, 0.05 * short) * s
        x = margin if scene.mark.corner.endswith("left") else scene.width * s - margin - diameter
        y = margin if scene.mark.corner.startswith("top") else scene.height * s - margin - diameter
        draw.ellipse((x, y, x + diameter, y + diameter), fill=COLORS[scene.mark.color])
    return canvas.reduce(s)


def _draw_object(draw: ImageDraw.ImageDraw, scene: Scene, obj: SceneObject) -> None:
    s = SUPERSAMPLE
    x0, y0, x1, y1 = (v * s for v in scene.object_box(obj))
    side, cx, cy = x1 - x0, (x0 + x1) / 2, (y0 + y1) / 2
    fill = COLORS[obj.color]
    digit_cy = cy
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
        digit_cy = y0 + 0.68 * side  # the centre of the triangle's inscribed circle
    elif obj.shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif obj.shape == "cross":
        arm = CROSS_ARM * side / 2
        draw.rectangle((x0, cy - arm, x1, cy + arm), fill=fill)
        draw.rectangle((cx - arm, y0, cx + arm, y1), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")
    if obj.label is not None:
        color = (0, 0, 0) if obj.color in DARK_DIGIT_ON else (255, 255, 255)
        _draw_digit(draw, obj.label, cx, digit_cy, DIGIT_HEIGHT * side, color)


def _draw_digit(draw: ImageDraw.ImageDraw, digit: int, cx: float, cy: float, height: float, color: tuple) -> None:
    width = 0.55 * height
    line = max(SUPERSAMPLE, round(height / 6))
    left, top = cx - width / 2, cy - height / 2
    for segment in _DIGITS[digit]:
        (ax, ay), (bx, by) = _SEGMENTS[segment]
        draw.line((left + ax * width, top + ay * height, left + bx * width, top + by * height), fill=color, width=line)


def png_bytes(image: Image.Image) -> bytes:
    """Encode ``image`` as PNG with no metadata, so equal images give equal bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=9)
    return buffer.getvalue()
