"""Image corruptions: deterministic per seed, visible, size-preserving (rotation swaps), fast."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from sicog.generate.corrupt import (
    CORRUPTIONS,
    chosen_methods,
    corrupt,
    mask,
    parse_methods,
    record_methods,
    record_rng,
)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A 1024x768 image with smooth gradients, edges and noise (blur and jitter must show on it)."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:768, 0:1024].astype(np.float32)
    array = np.stack([xs / 4, ys / 3, (xs + ys) / 7 % 255], axis=-1)
    array[200:400, 300:700] = (230, 30, 40)
    array += rng.normal(0, 12, array.shape)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_same_seed_same_image_other_seed_other_image(photo, name):
    first, params = corrupt(photo, [name], np.random.default_rng(7))
    again, params_again = corrupt(photo, [name], np.random.default_rng(7))
    assert params == params_again and first.tobytes() == again.tobytes()
    others = [corrupt(photo, [name], np.random.default_rng(seed)) for seed in (8, 9, 10)]
    assert any(image.tobytes() != first.tobytes() for image, _ in others)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_is_visible_and_keeps_the_size(photo, name):
    for seed in range(4):
        out, (params,) = corrupt(photo, [name], np.random.default_rng(seed))
        assert out.mode == "RGB" and params["method"] == name
        if name == "mirror_rotation":
            assert out.size == (photo.height, photo.width)
            back = Image.Transpose.ROTATE_90 if params["rotation"] == 270 else Image.Transpose.ROTATE_270
            undone = out.transpose(back)
            assert undone.transpose(Image.Transpose.FLIP_LEFT_RIGHT).tobytes() == photo.tobytes()
            continue
        assert out.size == photo.size
        change = np.abs(pixels(out) - pixels(photo)).mean()
        assert change > 3.0, f"{name} seed {seed}: mean change {change:.2f} of 255 is not visible"


def test_blur_sigma_and_jitter_ranges_follow_the_published_settings(photo):
    small = photo.resize((64, 48))
    for seed in range(50):
        (blur,) = corrupt(small, ["gaussian_blur"], np.random.default_rng(seed))[1]
        (jitter,) = corrupt(small, ["color_jitter"], np.random.default_rng(seed))[1]
        assert 3.0 <= blur["sigma"] <= 5.0
        assert all(0.2 <= jitter[k] <= 1.8 for k in ("brightness", "contrast", "saturation"))
        assert -0.2 <= jitter["hue"] <= 0.2
        assert sorted(jitter["order"]) == ["brightness", "contrast", "hue", "saturation"]


def test_mask_covers_a_half_plane_of_25_to_35_percent_with_the_mean_colour_it_hides():
    """As the published apply_mask: the half-plane is filled with the mean colour of the pixels it covers
    (on a colour gradient that differs from the whole image's mean)."""
    ys, xs = np.mgrid[0:90, 0:120]
    gradient = np.stack([xs * 1.8, ys * 2.4, 215 - xs * 1.8], axis=-1)
    base = (gradient + np.random.default_rng(1).integers(0, 40, (90, 120, 3))).astype(np.uint8)
    image = Image.fromarray(base)
    for seed in range(40):
        out, params = mask(image, np.random.default_rng(seed))
        array = np.asarray(out)
        covered = np.any(array != base, axis=-1)  # a covered pixel that already had the fill colour is missed
        share = covered.mean()
        assert 0.24 <= share <= 0.36 and abs(share - params["fraction"]) < 0.01
        (fill,) = np.unique(array[covered], axis=0)
        assert np.abs(fill - base[covered].mean(axis=0)).max() <= 1.0
        # A half-plane: every covered pixel lies beyond every uncovered one along the mask's direction.
        angle = math.radians(params["angle_degrees"])
        projection = (xs + 0.5) * math.cos(angle) + (ys + 0.5) * math.sin(angle)
        assert projection[covered].min() >= projection[~covered].max() - 0.05  # the angle is stored rounded


def test_mask_terminates_on_tiny_and_flat_images():
    for size in [(1, 1), (2, 1), (3, 500), (7, 7)]:
        out, params = mask(Image.new("RGB", size, (10, 20, 30)), np.random.default_rng(0))
        assert out.size == size and 0 < params["fraction"] <= 1


def test_record_stream_depends_on_seed_and_id_only():
    draw = lambda seed, rid: record_rng(seed, rid).random(3).tolist()  # noqa: E731
    assert draw(0, "a") == draw(0, "a")
    assert draw(0, "a") != draw(0, "b") and draw(0, "a") != draw(1, "a")


def test_methods_compose_in_order_and_unknown_names_fail(photo):
    assert parse_methods("gaussian_blur, mask") == ("gaussian_blur", "mask")
    assert parse_methods(None) == parse_methods("") == parse_methods("none") == ()
    # The seed README writes the methods as a quoted list.
    assert parse_methods('"gaussian_blur", "color_jitter"') == ("gaussian_blur", "color_jitter")
    assert parse_methods("['mask']") == ("mask",)
    with pytest.raises(ValueError, match="unknown corruption.*'blurr'.*gaussian_blur"):
        parse_methods("blurr")
    # Two rotations would undo the swap of width and height that planning counts on.
    with pytest.raises(ValueError, match=r"\['mirror_rotation'\] given more than once"):
        parse_methods("mirror_rotation, mirror_rotation")
    out, applied = corrupt(photo, ["mirror_rotation", "mask"], np.random.default_rng(3))
    assert [a["method"] for a in applied] == ["mirror_rotation", "mask"] and out.size == (768, 1024)


def test_one_corruption_per_record_drawn_from_the_seed_and_id_as_released():
    methods = tuple(CORRUPTIONS)
    ids = [f"rec{i}" for i in range(400)]
    picks = [record_methods(methods, 0, rid) for rid in ids]
    assert all(len(pick) == 1 and pick[0] in methods for pick in picks)
    assert picks == [record_methods(methods, 0, rid) for rid in ids]  # deterministic under the seed
    assert picks != [record_methods(methods, 1, rid) for rid in ids]
    counts = {name: sum(pick == (name,) for pick in picks) for name in methods}
    assert all(60 <= count <= 140 for count in counts.values()), counts  # each about a quarter of 400
    # apply_all keeps every method in the given order; one method is used without a draw.
    assert record_methods(("mask", "gaussian_blur"), 0, "a", apply_all=True) == ("mask", "gaussian_blur")
    rng, untouched = np.random.default_rng(5), np.random.default_rng(5)
    assert chosen_methods(("mask",), rng) == ("mask",) and rng.random() == untouched.random()
    assert chosen_methods((), np.random.default_rng(0)) == ()
