"""Tiny ClipBackends for CAM tests: timm towers from configs (random weights) and a bag-of-words text tower."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xaiclip_cli.models.base import ClipBackend
from xaiclip_cli.models.preprocess import preprocess_images


class BagText(nn.Module):
    """Hashes words into a small vocabulary and averages their embeddings (enough to give each prompt a vector)."""

    def __init__(self, dim: int, vocab: int = 257) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.vocab = vocab

    def ids(self, text: str, length: int) -> list[int]:
        words = text.lower().split()[:length]
        out = [1 + int(hashlib.md5(w.encode()).hexdigest(), 16) % (self.vocab - 1) for w in words]
        return out + [0] * (length - len(out))


class Tower(nn.Module):
    """Image tower: a timm trunk (features → embed_dim head) under the name ``trunk``."""

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)


class TinyBackend(ClipBackend):
    """A ClipBackend around any image module returning [B, D]."""

    def __init__(self, vision: nn.Module, dim: int, image_size: int, token_grid=None, prefix: int = 0,
                 logit_scale: float = float(np.log(20.0)), bias: float | None = None, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.vision = vision.eval()
        self.text = BagText(dim).eval()
        self.embed_dim = dim
        self.image_size = image_size
        self.token_grid = token_grid
        self.num_prefix_tokens = prefix
        self.context_length = 16
        self._scale = logit_scale
        self._bias = bias
        if bias is not None:
            self.score_family = "sigmoid"
        self.name = "tiny"

    def provenance(self) -> dict[str, Any]:
        return {"model": "tiny"}

    def preprocess(self, images: Any) -> torch.Tensor:
        return preprocess_images(images, self.image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear")

    def tokenize(self, texts: Sequence[str], max_length: int | None = None):
        L = max_length or self.context_length
        ids = torch.tensor([self.text.ids(t, L) for t in texts], dtype=torch.long)
        return ids, (ids > 0).long()

    def encode_image(self, pixels: torch.Tensor):
        return F.normalize(self.vision(pixels.to(self.device)), dim=-1), None

    def encode_image_unnormalized(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision(pixels.to(self.device))

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor):
        e = self.text.emb(ids) * mask[..., None]
        return F.normalize(e.sum(1) / mask.sum(1, keepdim=True).clamp(min=1), dim=-1), None

    def vision_module(self) -> nn.Module:
        return self.vision

    @property
    def raw_logit_scale(self) -> float:
        return self._scale

    @property
    def raw_logit_bias(self) -> float | None:
        return self._bias

    def to(self, device, dtype=None):
        self._place(nn.ModuleList([self.vision, self.text]), device, dtype)  # the production placement rules
        return self


def timm_backend(arch: str, image_size: int = 64, dim: int = 16, seed: int = 0, **kwargs: Any) -> TinyBackend:
    """A tiny random timm tower (``arch`` with overrides) as a backend; ViTs get their grid and prefix."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=dim, **kwargs)
    grid = None
    prefix = 0
    if hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens"):
        grid = tuple(model.patch_embed.grid_size)
        prefix = int(model.num_prefix_tokens)
    return TinyBackend(Tower(model), dim, image_size, token_grid=grid, prefix=prefix, seed=seed)


def tiny_cnn_backend(seed: int = 0) -> TinyBackend:
    """resnet-shaped tiny CNN (timm resnet with 1 block per stage, narrow)."""
    return timm_backend("resnet18", image_size=64, seed=seed, layers=[1, 1, 1, 1], channels=[8, 8, 16, 16])


def tiny_vit_backend(seed: int = 0, **kw: Any) -> TinyBackend:
    """CLS ViT: 32 px, patch 8 → 4x4 grid, width 32, depth 2."""
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    args.update(kw)
    return timm_backend("vit_tiny_patch16_224", image_size=args["img_size"], seed=seed, **args)


def load_tiny(model: str | None = None, revision: str | None = None, device: str = "auto",
              **kwargs: Any) -> TinyBackend:
    """Registry-style loader used by CLI tests in place of the toy backend (``model``: tiny-cnn or tiny-vit)."""
    b = tiny_cnn_backend() if (model or "tiny-cnn") == "tiny-cnn" else tiny_vit_backend()
    return b.to("cpu")
