"""The tiny CLIP of smdl.md §14 (transformers CLIPModel from a config, random weights) as a ClipBackend + prototypes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tests.oracle.smdl_ref import CLIP_MEAN, CLIP_STD
from xaiclip_cli.models.base import ClipBackend


def tiny_clip_model() -> nn.Module:
    """torch.manual_seed(0); vision 64/2 layers/2 heads/patch 32/224 px; text 64/2 layers/vocab 1000; projection 32."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        vision_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "patch_size": 32, "image_size": 224},
        text_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "vocab_size": 1000, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 2,
                     "pad_token_id": 1},
        projection_dim=32,
    )
    return CLIPModel(cfg).eval()


def unit_image_features(model: nn.Module) -> Any:
    """pixels → L2-normalised get_image_features (transformers 5: .pooler_output), fp32."""

    def f(x: torch.Tensor) -> torch.Tensor:
        out = model.get_image_features(pixel_values=x)
        out = getattr(out, "pooler_output", out)
        return out / out.norm(dim=-1, keepdim=True)

    return f


def random_prototypes(model: nn.Module, c: int = 10, length: int = 8) -> torch.Tensor:
    """C unit text features from random token ids (seed 1)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 1000, (c, length), generator=g)
    with torch.no_grad():
        out = model.get_text_features(input_ids=ids, attention_mask=torch.ones_like(ids))
    out = getattr(out, "pooler_output", out)
    return F.normalize(out.float(), dim=-1)


class TinyHFClip(ClipBackend):
    """The tiny CLIPModel behind the backend protocol; preprocess = ToTensor (/255) → Normalize, like the oracle."""

    name = "tiny-hf-clip"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.embed_dim = 32
        self.image_size = 224
        self._feat = unit_image_features(model)

    def provenance(self) -> dict[str, Any]:
        return {"model": "tiny-hf-clip"}

    def preprocess(self, images: Any) -> torch.Tensor:
        arrs = [images] if isinstance(images, np.ndarray) and images.ndim == 3 else list(images)
        m = torch.tensor(CLIP_MEAN).view(-1, 1, 1)
        s = torch.tensor(CLIP_STD).view(-1, 1, 1)
        out = [(torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float().div(255) - m) / s for a in arrs]
        return torch.stack(out)

    def tokenize(self, texts: Sequence[str], max_length: int | None = None):
        raise NotImplementedError

    def encode_image(self, pixels: torch.Tensor):
        return self._feat(pixels), None

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor):
        raise NotImplementedError

    def vision_module(self) -> nn.Module:
        return self.model.vision_model

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> TinyHFClip:
        self.model.to(device)
        self.device = torch.device(device)
        return self

    @property
    def raw_logit_scale(self) -> float:
        return float(np.log(10.0))
