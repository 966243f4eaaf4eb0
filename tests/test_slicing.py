import pytest
from PIL import Image

from sicog.model.slicing import fit_long_side, plan_slices, slice_image


@pytest.mark.parametrize(
    "size, grid, slice_size, source",
    [
        ((1024, 768), (3, 2), (308, 350), (378, 280)),
        ((640, 480), (2, 2), (378, 280), (378, 280)),
        ((500, 375), (2, 1), (266, 406), (378, 280)),
        ((1024, 100), None, None, None),
    ],
)
def test_published_geometry(size, grid, slice_size, source):
    plan = plan_slices(*size)
    assert plan.grid == grid
    assert plan.slice_size == slice_size
    if source:
        assert plan.source_size == source
    for side in plan.source_size + (plan.slice_size or ()):
        assert side % 14 == 0


def test_slices_are_row_major_and_sized():
    image = Image.new("RGB", (1024, 768))
    image.paste((255, 0, 0), (0, 0, 100, 100))  # top-left red mark lands in the first slice
    plan = plan_slices(*image.size)
    source, slices = slice_image(image, plan)
    assert source.size == plan.source_size
    assert len(slices) == 6 and all(s.size == plan.slice_size for s in slices)
    assert slices[0].getpixel((5, 5))[0] > 200 and slices[1].getpixel((5, 5))[0] < 50


@pytest.mark.parametrize("size", [(1, 4000), (4000, 1), (14, 14), (2000, 2000)])
def test_extreme_sizes_plan_cleanly(size):
    plan = plan_slices(*size)
    assert plan.num_slices <= 7
    assert all(s >= 14 and s % 14 == 0 for s in plan.source_size)


def test_zero_size_is_a_clear_error():
    with pytest.raises(ValueError, match="zero size"):
        plan_slices(0, 10)


def test_tie_break_is_deterministic():
    assert plan_slices(672, 672).grid == plan_slices(672, 672).grid == (2, 2)


@pytest.mark.parametrize("size, resized", [((2100, 2), (1024, 1)), ((2, 2100), (1, 1024))])
def test_images_more_elongated_than_the_inference_side_keep_one_pixel(size, resized, tiny_model_factory):
    """Possible only with a raised --max-aspect-ratio: the short side must not be truncated to nothing."""
    assert fit_long_side(*size, 1024) == resized
    _, processor = tiny_model_factory(inference_long_side=1024)
    encoded = processor.encode([{"from": "human", "value": "<image>\nWhat?"}], [Image.new("RGB", size)], train=False)
    assert encoded.input_ids.count(processor.image_token_id) == processor.image_token_count(*size, inference=True)
