"""Random-translation augmentation of the CLIP trainer: ``shift_batch`` against a NumPy reflect-pad oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xaiclip_cli.train.clip_data import shift_batch


def _oracle(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """out[i, j] = img[reflect(i - dy), reflect(j - dx)] (numpy's 'reflect' = edge not repeated, like torch)."""
    h, w = img.shape[-2:]
    p = max(abs(dy), abs(dx))
    padded = np.pad(img, ((0, 0), (p, p), (p, p)), mode="reflect")
    return padded[:, p - dy:p - dy + h, p - dx:p - dx + w]


def test_shift_batch_matches_reflect_pad_oracle_per_image() -> None:
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6)
    shifts = torch.tensor([[1, -2], [0, 3]])
    out = shift_batch(x, shifts)
    for b, (dy, dx) in enumerate(shifts.tolist()):
        np.testing.assert_array_equal(out[b].numpy(), _oracle(x[b].numpy(), dy, dx))
    # Content moves by (dy, dx): pixel (0, 2) of image 0 lands at (1, 0).
    assert out[0, 0, 1, 0] == x[0, 0, 0, 2]


def test_zero_shift_is_identity_and_too_large_a_shift_fails() -> None:
    x = torch.rand(3, 1, 4, 4)
    assert torch.equal(shift_batch(x, torch.zeros(3, 2, dtype=torch.long)), x)
    with pytest.raises(ValueError, match="smaller than the image side"):
        shift_batch(x, torch.tensor([[4, 0], [0, 0], [0, 0]]))
