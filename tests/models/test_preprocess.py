"""Shared preprocessing: the whole-batch fast path gives exactly the per-image path's values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xaiclip_cli.models.preprocess import preprocess_images


def _per_image(images: list[np.ndarray], *args) -> torch.Tensor:
    # A list with one float image forces the per-image path; uint8 → float/255 is what that path does first.
    return torch.cat([preprocess_images([im.astype(np.float32) / 255.0], *args) for im in images])


@pytest.mark.parametrize(("shape", "size", "channels"), [((40, 40, 3), 40, 3), ((28, 28, 3), 64, 3),
                                                          ((30, 20, 1), 32, 3), ((32, 32, 3), 32, 1),
                                                          ((16, 16, 4), 16, 3), ((16, 16, 1), 16, 1)])
def test_batch_fast_path_equals_per_image(shape: tuple[int, ...], size: int, channels: int) -> None:
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(5)]
    mean, std = [0.5, 0.4, 0.3][:channels], [0.2, 0.25, 0.3][:channels]
    fast = preprocess_images(np.stack(imgs), size, mean, std, "bicubic", channels)
    listed = preprocess_images(imgs, size, mean, std, "bicubic", channels)
    slow = _per_image(imgs, size, mean, std, "bicubic", channels)
    assert fast.shape == (5, channels, size, size)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-6)
    assert torch.equal(fast, listed)


def test_model_size_input_is_not_resampled() -> None:
    img = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(1, 4, 4, 3)
    out = preprocess_images(img, 4, [0.5] * 3, [0.5] * 3)
    expect = torch.from_numpy(img[0]).permute(2, 0, 1).float() / 255 * 2 - 1
    torch.testing.assert_close(out[0], expect, rtol=0, atol=1e-7)


def test_mixed_sizes_fall_back_to_per_image() -> None:
    imgs = [np.zeros((8, 8, 3), np.uint8), np.full((10, 6, 3), 255, np.uint8)]
    out = preprocess_images(imgs, 8, [0.5] * 3, [0.5] * 3)
    assert torch.equal(out[0], torch.full((3, 8, 8), -1.0))  # at model size: untouched
    torch.testing.assert_close(out[1], torch.full((3, 8, 8), 1.0), rtol=0, atol=1e-6)  # resampled constant
