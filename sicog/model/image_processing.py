"""`SicogImageProcessor`: LLaVA-UHD slicing and CLIP normalisation of images into the model's views."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from .configuration import SicogConfig
from .image_io import load_image
from .slicing import SlicePlan, fit_long_side, plan_slices, slice_image

ImageLike = str | os.PathLike | Image.Image | np.ndarray
# The settings the image processor takes from its model's config (config.json, their one source).
SETTINGS = ("scale_resolution", "patch_size", "max_slice_nums", "inference_long_side", "image_mean", "image_std")


class SicogImageProcessor(BaseImageProcessor):
    """Slice each image (grid of slices + one global view) and normalise every view into a tensor.

    The settings are those of :class:`SicogConfig` (build with :meth:`from_config`). ``pixel_values``
    is a flat list in placeholder order: a sliced image gives its ``(rows, cols, 3, h, w)`` grid, then
    its ``(3, H, W)`` global view; an unsliced one only the global view. ``image_grids`` holds each
    image's ``(cols, rows)`` grid (None: unsliced).
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        *,
        scale_resolution: int,
        patch_size: int,
        max_slice_nums: int,
        inference_long_side: int | None = None,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.scale_resolution = scale_resolution
        self.patch_size = patch_size
        self.max_slice_nums = max_slice_nums
        self.inference_long_side = inference_long_side
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)

    @classmethod
    def from_config(cls, config: SicogConfig, **overrides: object) -> SicogImageProcessor:
        """The image processor of a model with this config, ``overrides`` replacing some of its :data:`SETTINGS`."""
        return cls(**{**{name: getattr(config, name) for name in SETTINGS}, **overrides})

    def differences(self, config: SicogConfig) -> list[str]:
        """The :data:`SETTINGS` where this processor differs from ``config``, each as ``name (ours, config's)``."""
        return [f"{name} ({getattr(self, name)!r}, config {getattr(config, name)!r})" for name in SETTINGS
                if _plain(getattr(self, name)) != _plain(getattr(config, name))]

    def plan(self, width: int, height: int, *, never_split: bool = False) -> SlicePlan:
        """How an image of ``width x height`` pixels (after any inference resize) is sliced."""
        return plan_slices(
            width,
            height,
            scale_resolution=self.scale_resolution,
            patch_size=self.patch_size,
            max_slice_nums=self.max_slice_nums,
            never_split=never_split,
        )

    def inference_size(self, width: int, height: int) -> tuple[int, int]:
        """Size an image is resized to before slicing at inference: long side ``inference_long_side``
        (the published generation scripts use 1024), aspect ratio kept; unchanged when that is unset."""
        side = self.inference_long_side
        return (width, height) if side is None else fit_long_side(width, height, side)

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """A ``(3, h, w)`` float tensor of an RGB image, normalised with ``image_mean`` / ``image_std``."""
        mean = np.asarray(self.image_mean, dtype=np.float32)
        std = np.asarray(self.image_std, dtype=np.float32)
        array = (np.asarray(image, dtype=np.float32) / 255.0 - mean) / std
        return torch.from_numpy(array.transpose(2, 0, 1).copy())

    def process(
        self, image: ImageLike, *, never_split: bool = False, inference: bool = False
    ) -> tuple[list[torch.Tensor], tuple[int, int] | None]:
        """One image -> its views (slice grid if sliced, then the global view) and its grid.

        ``inference``: resize first as :meth:`inference_size` says (generation and evaluation).
        """
        image = load_image(image)
        if inference and (size := self.inference_size(image.width, image.height)) != image.size:
            image = image.resize(size, Image.Resampling.BICUBIC)
        plan = self.plan(image.width, image.height, never_split=never_split)
        source, slices = slice_image(image, plan)
        views = [self.to_tensor(source)]
        if plan.grid is not None:
            cols, rows = plan.grid
            stacked = torch.stack([self.to_tensor(s) for s in slices])
            views.insert(0, stacked.reshape(rows, cols, *stacked.shape[1:]))
        return views, plan.grid

    def preprocess(
        self,
        images: ImageLike | Sequence,
        *,
        never_split: bool = False,
        inference: bool = True,
        return_tensors: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Views of one image or of a (possibly nested, per-sample) list of images, in order.

        ``return_tensors`` is accepted for the transformers calling convention; the views are always
        tensors and stay a list (their sizes differ from image to image).
        """
        del return_tensors, kwargs
        views: list[torch.Tensor] = []
        grids: list[tuple[int, int] | None] = []
        for image in flat_images(images):
            image_views, grid = self.process(image, never_split=never_split, inference=inference)
            views += image_views
            grids.append(grid)
        return BatchFeature({"pixel_values": views, "image_grids": grids})


def flat_images(images) -> list:
    """One image, a list of images, or a per-sample list of lists -> a flat list (None entries dropped)."""
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return [image for entry in images for image in flat_images(entry)]
    return [images]


def _plain(value: object) -> object:
    """A setting as compared: a tuple of numbers and the list of them alike."""
    return list(value) if isinstance(value, (list, tuple)) else value
