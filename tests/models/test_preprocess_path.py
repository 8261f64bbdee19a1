"""The store's fast uint8 preprocessing path gives the model's own HF image processor's values (within 1e-6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CLIPImageProcessor, SiglipImageProcessor

from xaiclip_cli.models.hf import PATH_HF, PATH_TORCH, fast_plan, preprocess_path_for, run_image_processor


def _siglip(side: int, resample: int = 3) -> SiglipImageProcessor:
    return SiglipImageProcessor(size={"height": side, "width": side}, resample=resample, image_mean=[0.5, 0.4, 0.3],
                                image_std=[0.2, 0.3, 0.25])


@pytest.mark.parametrize("shape", [(28, 28), (56, 56), (60, 100), (500, 333)])
@pytest.mark.parametrize("resample", [3, 2])
def test_fast_path_equals_the_processor(shape: tuple[int, int], resample: int) -> None:
    proc = _siglip(56, resample)
    assert preprocess_path_for(proc) == PATH_TORCH
    imgs = list(np.random.default_rng(sum(shape)).integers(0, 256, (5, *shape, 3), dtype=np.uint8))
    ref = proc(images=imgs, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
    got = run_image_processor(proc, imgs, torch.device("cpu"))
    assert got.shape == ref.shape == (5, 3, 56, 56) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    assert float(ref.std()) > 0.1  # real content, not a constant (downscaled noise averages out)


def test_other_processors_and_inputs_keep_the_processor() -> None:
    clip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    assert fast_plan(clip) is None and preprocess_path_for(clip) == PATH_HF
    proc = _siglip(32)
    rng = np.random.default_rng(0)
    mixed = [rng.integers(0, 256, (20, 20, 3), dtype=np.uint8), rng.integers(0, 256, (30, 24, 3), dtype=np.uint8)]
    ref = proc(images=mixed, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
    torch.testing.assert_close(run_image_processor(proc, mixed, torch.device("cpu")), ref, atol=0, rtol=0)
    floats = [m.astype(np.float32) / 255 for m in mixed]
    ref = proc(images=floats, return_tensors="pt", input_data_format="channels_last", do_rescale=False)
    torch.testing.assert_close(run_image_processor(proc, floats, torch.device("cpu")), ref["pixel_values"], atol=0,
                               rtol=0)


def test_input_data_format_does_not_change_values() -> None:
    """The issue's question: with or without input_data_format='channels_last', the same pixels (measured)."""
    proc = _siglip(64)
    imgs = list(np.random.default_rng(1).integers(0, 256, (4, 28, 28, 3), dtype=np.uint8))
    a = proc(images=imgs, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
    b = proc(images=imgs, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(a, b, atol=0, rtol=0)
