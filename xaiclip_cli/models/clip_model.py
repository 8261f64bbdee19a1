"""ClipModel: a timm image tower + a Hugging Face text tower joined by bias-free projections and a logit scale.

The model is data: :func:`ClipModel.from_spec` builds it from the JSON-able ``spec`` that ``xaiclip train clip``
records in ``xaiclip_clip.json`` (open_clip keeps architectures as JSON configs the same way).

Image features, per tower family (timm ``forward_features`` / ``forward_head(pre_logits=True)``):

* global  = ``image_proj(forward_head(forward_features(x), pre_logits=True))`` (avg pool for CNNs, CLS / MAP
  attention pool / avg for ViTs, as the timm model is configured);
* tokens  = ``image_proj`` applied to every position of ``forward_features``: for CNNs (NCHW) and Swin (NHWC) the last
  feature map flattened row-major to [B, h*w, C]; for ViTs the token sequence minus ``num_prefix_tokens``. The same
  linear projection serves both paths, so for an avg-pooled CNN the mean of the projected tokens equals the
  projected pooled feature (linearity). Heads that normalise after pooling (ConvNeXt ``NormMlpClassifierHead``) get
  that norm applied per position first, so tokens live in the same space as the pooled feature.

Optional CLIP-style attention pool for CNN towers (``spec["image_tower"]["pool"] = "attn"``, ``"pool_heads"``,
``"pool_query"`` ``mean`` (CLIP) or ``learned`` (a trained query token, as a MAP head); absent or ``"head"`` keeps the
timm head): ``timm.layers.AttentionPool2d`` as in OpenAI CLIP's ResNets (learned absolute
position embedding, query = mean token), built with ``out_features=0`` so ``image_proj`` plays CLIP's ``c_proj``;
its ``feat_size`` is ``image_size // feature_info[-1]["reduction"]`` (output stride included), and it lives on the
ClipModel (``image_pool``), outside ``visual``, so CAM layer detection still ends at the tower's last stage.
Global = ``image_proj(image_pool(forward_features(x)))``. Tokens follow MaskCLIP's dense-feature rule (Zhou et al.
2022): the value path and output projection applied to every position, ``image_proj(v(x_i + pos_i))`` with the
position embedding resampled exactly as the pool resamples it, dropping the query/key attention. Tokens therefore
live in the pooled feature's space: the pooled feature is an attention-weighted mean of values, so with uniform
attention and the mean token's position embedding equal to the mean of the others it is the mean of the tokens.
Why this rule: the alternative (``image_proj`` of the raw ``layer4`` map) is not in the joint space at all.

Text features: ``text_proj`` of the [CLS] hidden state (``cls`` pooling) or of the mask-weighted mean (``mean``);
tokens = ``text_proj`` of every hidden state (projected, not normalised), as in ConceptCLIP's ``text_proj``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


def build_image_tower(spec: dict[str, Any]) -> nn.Module:
    """timm.create_model(name, pretrained=False, num_classes=0, in_chans, [img_size], **kwargs) from an image spec."""
    import timm

    name = spec["name"]
    kwargs = dict(spec.get("kwargs") or {})
    kwargs.setdefault("in_chans", int(spec.get("in_chans", 3)))
    pretrained = bool(spec.get("pretrained", False))
    pretrained_path = spec.get("pretrained_path")
    extra: dict[str, Any] = {}
    if pretrained_path:
        extra["pretrained_cfg_overlay"] = {"file": str(pretrained_path)}
        pretrained = True
    size = spec.get("image_size")
    if size is not None and "img_size" not in kwargs:
        # Transformers need the input size at build time (position embeddings); CNNs do not accept it.
        try:
            return timm.create_model(name, pretrained=pretrained, num_classes=0, img_size=int(size), **kwargs, **extra)
        except TypeError:
            pass
    return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs, **extra)


def attn_pool_feat_size(visual: nn.Module, image_size: int) -> tuple[int, int]:
    """Grid of the tower's last feature map for ``image_size`` input: image_size // reduction (timm feature_info)."""
    info = getattr(visual, "feature_info", None)
    try:
        reduction = int(info[-1]["reduction"])  # type: ignore[index]
    except (TypeError, KeyError, IndexError) as exc:
        raise ValueError("image pool 'attn' needs a timm tower with feature_info (its output reduction)") from exc
    side = max(1, int(image_size) // reduction)
    return side, side


def build_image_pool(visual: nn.Module, spec: dict[str, Any]) -> nn.Module | None:
    """The optional attention pool of an image spec (``pool: attn``), or None for the timm head (``pool: head``)."""
    pool = spec.get("pool") or "head"
    if pool == "head":
        return None
    if pool != "attn":
        raise ValueError(f"image pool must be 'head' or 'attn', got {pool!r}")
    if hasattr(visual, "patch_embed") or getattr(visual, "output_fmt", "NCHW") != "NCHW":
        raise ValueError("image pool 'attn' needs a CNN tower with an NCHW feature map (not a ViT/Swin)")
    if spec.get("image_size") is None:
        raise ValueError("image pool 'attn' needs image_size in the image tower spec (it sizes the position embedding)")
    from timm.layers import AttentionPool2d

    width = int(visual.num_features)
    heads = spec.get("pool_heads")
    heads = int(heads) if heads else max(1, width // 64)  # CLIP's RN towers use 64-wide heads
    if width % heads:
        raise ValueError(f"image pool heads ({heads}) must divide the tower width ({width})")
    query = spec.get("pool_query") or "mean"
    if query not in ("mean", "learned"):
        raise ValueError(f"image pool query must be 'mean' or 'learned', got {query!r}")
    size = attn_pool_feat_size(visual, int(spec["image_size"]))
    # "learned": a trained query token (timm class_token, as a MAP head) instead of CLIP's mean token.
    return AttentionPool2d(in_features=width, feat_size=size, out_features=0, num_heads=heads,
                           class_token=query == "learned")


def attn_pool_tokens(pool: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """MaskCLIP dense features [B, h*w, C] of an AttentionPool2d: value path + output proj per position (no attn)."""
    from timm.layers import resample_abs_pos_embed

    _, _, h, w = feats.shape
    x = feats.flatten(2).transpose(1, 2)
    pos = resample_abs_pos_embed(pool.pos_embed.unsqueeze(0), (h, w), old_size=pool.feat_size, num_prefix_tokens=1)
    x = x + pos[:, 1:]
    if pool.qkv is None:
        v = pool.v(x)
    else:
        # timm splits qkv output as (3, heads, head_dim): rows [2E, 3E) are the value projection.
        e = pool.embed_dim
        bias = None if pool.qkv.bias is None else pool.qkv.bias[2 * e :]
        v = F.linear(x, pool.qkv.weight[2 * e :], bias)
    return pool.proj(v)


def build_text_tower(spec: dict[str, Any]) -> nn.Module:
    """A transformers AutoModel from a config dict (``model_type`` + config) or a local dir/hub id (``pretrained``)."""
    from transformers import AutoConfig, AutoModel

    source = spec.get("pretrained")
    if source:
        model = AutoModel.from_pretrained(str(source))
    else:
        cfg = dict(spec["config"])
        model_type = cfg.pop("model_type", spec.get("model_type", "bert"))
        config = AutoConfig.for_model(model_type, **cfg)
        kwargs = {"add_pooling_layer": False} if model_type == "bert" else {}
        model = AutoModel.from_config(config, **kwargs)
    return model


def _text_config_dict(text: nn.Module) -> dict[str, Any]:
    """The JSON-able config of a transformers model (so the tower can be rebuilt without its source dir)."""
    d = text.config.to_dict()
    for k in ("_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype"):
        d.pop(k, None)
    return d


class ClipModel(nn.Module):
    """CLIP with a timm image tower (``visual``), a HF text tower (``text``), ``image_proj``/``text_proj``, scalars."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        spec = copy.deepcopy(spec)
        self.embed_dim = int(spec["embed_dim"])
        self.visual = build_image_tower(spec["image_tower"])
        self.image_pool = build_image_pool(self.visual, spec["image_tower"])
        self.text = build_text_tower(spec["text_tower"])
        self.text_pooling = spec["text_tower"].get("pooling", "cls")
        if self.text_pooling not in ("cls", "mean"):
            raise ValueError(f"text pooling must be 'cls' or 'mean', got {self.text_pooling!r}")
        # Record the built text config so an export never depends on the original hub id / local dir.
        spec["text_tower"] = {"config": _text_config_dict(self.text), "pooling": self.text_pooling}
        spec["image_tower"].pop("pretrained_path", None)
        spec["image_tower"]["pretrained"] = False
        self.spec = spec
        width = int(self.visual.num_features)
        text_width = int(self.text.config.hidden_size)
        self.image_proj = nn.Linear(width, self.embed_dim, bias=False)
        self.text_proj = nn.Linear(text_width, self.embed_dim, bias=False)
        nn.init.normal_(self.image_proj.weight, std=width**-0.5)
        nn.init.normal_(self.text_proj.weight, std=text_width**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(float(spec.get("logit_scale_init", LOGIT_SCALE_INIT))))
        bias = spec.get("logit_bias_init")
        self.logit_bias = nn.Parameter(torch.tensor(float(bias))) if bias is not None else None
        self._post_pool_norm = self._find_post_pool_norm()

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> ClipModel:
        """Build a (randomly initialised) model from its spec; load weights with ``load_state_dict``."""
        return cls(spec)

    # --- facts ------------------------------------------------------------------------------------------------
    @property
    def num_prefix_tokens(self) -> int:
        """CLS/register tokens before the patch tokens of a ViT tower (0 for CNNs and MAP-pooled ViTs)."""
        return int(getattr(self.visual, "num_prefix_tokens", 0) or 0)

    def no_weight_decay(self) -> set[str]:
        """Parameter names timm's optimizer factory keeps out of weight decay (scalars + the tower's own list)."""
        names = {"logit_scale", "logit_bias"}
        if self.image_pool is not None:
            names.add("image_pool.pos_embed")  # like the towers' position embeddings
        nwd = getattr(self.visual, "no_weight_decay", None)
        if callable(nwd):
            names |= {f"visual.{n}" for n in nwd()}
        return names

    def _find_post_pool_norm(self) -> nn.Module | None:
        head = getattr(self.visual, "head", None)
        norm = getattr(head, "norm", None)
        # NormMlpClassifierHead (ConvNeXt) normalises after pooling; LayerNorm2d also works per position on NCHW.
        if norm is not None and type(head).__name__ == "NormMlpClassifierHead" and not isinstance(norm, nn.Identity):
            return norm
        return None

    # --- image ------------------------------------------------------------------------------------------------
    def image_feature_tokens(self, feats: torch.Tensor) -> torch.Tensor:
        """Unprojected per-position features [B,T,C] from ``forward_features`` output (prefix tokens dropped)."""
        if self.image_pool is not None:
            return attn_pool_tokens(self.image_pool, feats)
        if feats.ndim == 4:
            if getattr(self.visual, "output_fmt", "NCHW") == "NHWC":
                return feats.flatten(1, 2)
            if self._post_pool_norm is not None:
                feats = self._post_pool_norm(feats)
            return feats.flatten(2).transpose(1, 2)
        if feats.ndim == 3:
            return feats[:, self.num_prefix_tokens :]
        raise ValueError(f"unexpected image feature shape {tuple(feats.shape)}")

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(global [B,D] (L2-normalised when ``normalize``), projected tokens [B,T,D])."""
        feats = self.visual.forward_features(pixels)
        if self.image_pool is not None:
            pooled = self.image_pool(feats)
        else:
            pooled = self.visual.forward_head(feats, pre_logits=True)
        glob = self.image_proj(pooled)
        tokens = self.image_proj(self.image_feature_tokens(feats))
        return (F.normalize(glob, dim=-1) if normalize else glob), tokens

    # --- text -------------------------------------------------------------------------------------------------
    def encode_text(
        self, ids: torch.Tensor, mask: torch.Tensor | None = None, normalize: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(global [K,D] (L2-normalised when ``normalize``), projected tokens [K,L,D])."""
        if mask is None:
            mask = (ids != int(getattr(self.text.config, "pad_token_id", 0) or 0)).long()
        hidden = self.text(input_ids=ids, attention_mask=mask).last_hidden_state
        if self.text_pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = mask.to(hidden.dtype).unsqueeze(-1)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        glob = self.text_proj(pooled)
        tokens = self.text_proj(hidden)
        return (F.normalize(glob, dim=-1) if normalize else glob), tokens

    # --- scalars / forward ------------------------------------------------------------------------------------
    def clamp_logit_scale(self) -> None:
        """Keep the raw logit scale in [0, ln 100] (open_clip clamps after every optimiser step)."""
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped at 100."""
        return self.logit_scale.clamp(max=LOGIT_SCALE_MAX).exp()

    def forward(
        self, pixels: torch.Tensor | None = None, ids: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor | None]:
        """Dict of normalised global features, projected tokens, exp logit scale and raw bias (None when absent)."""
        out: dict[str, torch.Tensor | None] = {
            "image_features": None, "image_token_features": None, "text_features": None, "text_token_features": None,
        }
        if pixels is not None:
            out["image_features"], out["image_token_features"] = self.encode_image(pixels)
        if ids is not None:
            out["text_features"], out["text_token_features"] = self.encode_text(ids, mask)
        out["logit_scale"] = self.scale()
        out["logit_bias"] = self.logit_bias
        return out
