"""Tiny ConceptCLIP replica implementing the remote model's interface (conceptclip.md §2) exactly."""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel, PreTrainedModel

from .configuration_conceptclip_replica import ConceptCLIPReplicaConfig


class TimmVisionTower(nn.Module):
    """open_clip ``TimmModel`` shape: ``trunk`` is the timm ViT; returns (pooled cls, raw trunk tokens)."""

    def __init__(self, config: ConceptCLIPReplicaConfig):
        super().__init__()
        self.trunk = timm.create_model(
            config.timm_model_name, pretrained=False, num_classes=0, global_pool="map",
            img_size=config.image_size, patch_size=config.patch_size, embed_dim=config.vision_width,
            depth=config.vision_depth, num_heads=config.vision_heads, mlp_ratio=config.vision_mlp_ratio,
        )
        # The real tower has no projection (width == embed_dim); a linear map only when the widths differ.
        if config.vision_width != config.embed_dim:
            self.head = nn.Linear(config.vision_width, config.embed_dim, bias=False)
        else:
            self.head = nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled [B,D] via the MAP head, normed tokens [B,T,W])."""
        tokens = self.trunk.forward_features(x)
        pooled = self.trunk.forward_head(tokens)
        return self.head(pooled), tokens


class BertTextTower(nn.Module):
    """open_clip ``HFTextEncoder`` with a CLS pooler: mask from the pad id, cls = linear(hidden[:, 0])."""

    def __init__(self, config: ConceptCLIPReplicaConfig):
        super().__init__()
        self.pad_id = config.text_pad_id
        self.transformer = BertModel(BertConfig(**config.text_cfg), add_pooling_layer=False)
        self.proj = nn.Linear(config.text_cfg["hidden_size"], config.embed_dim, bias=False)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cls [K,D], hidden [K,L,W_t])."""
        mask = (input_ids != self.pad_id).long()
        hidden = self.transformer(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return self.proj(hidden[:, 0]), hidden


def _mlp(width_in: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width_in, dim, bias=False), nn.GELU(), nn.Linear(dim, dim, bias=False))


class ConceptCLIPReplica(PreTrainedModel):
    """encode_image / encode_text / image_proj / text_proj / forward with the 8 keys of the real model."""

    config_class = ConceptCLIPReplicaConfig
    base_model_prefix = "conceptclip"
    _no_split_modules: list[str] = []

    def __init__(self, config: ConceptCLIPReplicaConfig):
        super().__init__(config)
        self.visual = TimmVisionTower(config)
        self.text = BertTextTower(config)
        self.image_proj = _mlp(config.vision_width, config.embed_dim)
        self.text_proj = _mlp(config.text_cfg["hidden_size"], config.embed_dim)
        self.logit_scale = nn.Parameter(torch.ones([]) * config.init_logit_scale)
        self.logit_bias = nn.Parameter(torch.ones([]) * config.init_logit_bias)
        self.concept_logit_scale = nn.Parameter(torch.ones([]) * config.init_logit_scale)
        self.concept_logit_bias = nn.Parameter(torch.ones([]) * config.init_logit_bias)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Weights come from the checkpoint; the towers initialise themselves at construction.
        return None

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = False):
        """(cls [B,D], raw trunk tokens [B,T,W]); ``normalize`` L2-normalises cls only."""
        cls, tokens = self.visual(pixel_values)
        return (F.normalize(cls, dim=-1) if normalize else cls), tokens

    def encode_text(self, input_ids: torch.Tensor, normalize: bool = False):
        """(cls [K,D], hidden states [K,L,W_t]) with the mask built from the pad id; ``normalize`` touches cls only."""
        cls, tokens = self.text(input_ids)
        return (F.normalize(cls, dim=-1) if normalize else cls), tokens

    def forward(self, pixel_values: torch.Tensor | None = None, input_ids: torch.Tensor | None = None, **kwargs):
        """The 8-key dict of conceptclip.md §2; a missing input gives None for its entries."""
        image_features = image_token_features = text_features = text_token_features = None
        if pixel_values is not None:
            image_features, tokens = self.encode_image(pixel_values, normalize=True)
            image_token_features = self.image_proj(tokens)
        if input_ids is not None:
            text_features, tokens = self.encode_text(input_ids, normalize=True)
            text_token_features = self.text_proj(tokens)
        return {
            "image_features": image_features,
            "text_features": text_features,
            "image_token_features": image_token_features,
            "text_token_features": text_token_features,
            "logit_scale": self.logit_scale.exp(),
            "concept_logit_scale": self.concept_logit_scale.exp(),
            "logit_bias": self.logit_bias,
            "concept_logit_bias": self.concept_logit_bias,
        }
