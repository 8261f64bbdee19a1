"""The CLIP backend protocol every model family implements (store, cam, attrib and eval use only this)."""

from __future__ import annotations

import abc
import contextlib
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

ScoreKind = Literal["cosine", "logit", "softmax", "sigmoid"]
ImageInput = np.ndarray | torch.Tensor | Sequence[Any]


class ClipBackend(abc.ABC):
    """One CLIP-style model: preprocessing, tokenisation, global + token features, scalars, scores, vision module.

    Facts callers rely on: ``name``, ``embed_dim``, ``image_size`` (square input side), ``token_grid`` (h, w) of the
    image tokens or None, ``num_prefix_tokens`` (CLS/register tokens before the patch tokens at the target layer),
    ``context_length`` (text max length), ``device`` and ``dtype``.
    """

    name: str = "backend"
    embed_dim: int
    image_size: int
    token_grid: tuple[int, int] | None = None
    num_prefix_tokens: int = 0
    context_length: int = 77
    # "softmax" for CLIP-style contrastive models, "sigmoid" for SigLIP-style (bias + sigmoid) models.
    score_family: Literal["softmax", "sigmoid"] = "softmax"

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.amp: bool | None = None  # None: bf16 autocast on CUDA only; False: never
        self.amp_dtype: torch.dtype | None = None
        self.channels_last: bool | None = None  # None: decided at placement (conv-heavy towers run NHWC)

    def _place(self, module: nn.Module, device: str | torch.device, dtype: torch.dtype | None = None) -> None:
        """Move ``module`` to ``device`` (and ``dtype``) and decide bf16 autocast: on CUDA unless ``amp=False``."""
        self.device = torch.device(device)
        module.to(self.device) if dtype is None else module.to(self.device, dtype)
        if dtype is not None:
            self.dtype = dtype
        if self.channels_last is None:
            self.channels_last = prefers_channels_last(module)
        if self.channels_last:
            # Only 4-D weights change layout; convolutions then run NHWC whatever the input's layout (oneDNN and
            # cuDNN are faster so: 1.3-2.2x on the toy and timm CNNs measured on a CPU), outputs stay NCHW-shaped.
            module.to(memory_format=torch.channels_last)
        use_amp = self.device.type == "cuda" and self.amp is not False
        self.amp_dtype = torch.bfloat16 if use_amp else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of this backend's forward passes (a no-op without AMP)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # --- facts -----------------------------------------------------------------------------------------------
    @property
    def patch_size(self) -> int | None:
        """Pixels per token side (image_size // grid), or None for towers without tokens."""
        if self.token_grid is None:
            return None
        return self.image_size // self.token_grid[0]

    def shape_facts(self) -> dict[str, Any]:
        """The facts every provenance record carries: sizes, token grid, prefix, score family, dtype, scalars."""
        return {
            "image_size": self.image_size,
            "token_grid": list(self.token_grid) if self.token_grid else None,
            "num_prefix_tokens": self.num_prefix_tokens,
            "embed_dim": self.embed_dim,
            "score_family": self.score_family,
            "compute_dtype": "bfloat16-autocast" if self.amp_dtype is not None else str(self.dtype).replace(
                "torch.", ""),
            "scalars": self.scalars(),
        }

    @abc.abstractmethod
    def provenance(self) -> dict[str, Any]:
        """Model id, revision/commit or content hash, library versions, preprocessing config (JSON-serialisable)."""

    # --- inputs ----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def preprocess(self, images: ImageInput) -> torch.Tensor:
        """uint8 HWC arrays / PIL images / float [0,1] arrays → normalised float tensor [B,3,S,S] on ``device``.

        A single uint8 array [H,W,C] or a batch [B,H,W,C] are both accepted; grey images are repeated to 3 channels.
        """

    @abc.abstractmethod
    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask [K,L] with an explicit max length (``context_length`` by default)."""

    # --- features --------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(global [B,D] L2-normalised, projected tokens [B,T,D] or None). Differentiable: callers pick no_grad."""

    def encode_image_unnormalized(self, pixels: torch.Tensor) -> torch.Tensor:
        """The image embedding [B,D] before L2 normalisation (``encode_image``'s global is this, normalised).

        Backends that cannot expose it raise NotImplementedError; the CAM score ``dot`` needs it.
        """
        raise NotImplementedError(f"backend {self.name} does not expose the unnormalised image embedding")

    @abc.abstractmethod
    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(global [K,D] L2-normalised, projected tokens [K,L,D] or None)."""

    def encode_texts(self, texts: Sequence[str], max_length: int | None = None) -> torch.Tensor:
        """Convenience: tokenize + encode_text, returning the normalised global features [K,D]."""
        ids, mask = self.tokenize(texts, max_length=max_length)
        return self.encode_text(ids, mask)[0]

    @abc.abstractmethod
    def vision_module(self) -> nn.Module:
        """The image tower's module tree, walked by CAM hooks and target-layer detection."""

    # --- scalars ---------------------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def raw_logit_scale(self) -> float:
        """The logit scale parameter as stored (log space)."""

    @property
    def raw_logit_bias(self) -> float | None:
        """The logit bias as stored (None for models without one)."""
        return None

    @property
    def raw_concept_logit_scale(self) -> float | None:
        """ConceptCLIP's concept logit scale (log space), None elsewhere."""
        return None

    @property
    def raw_concept_logit_bias(self) -> float | None:
        """ConceptCLIP's concept logit bias, None elsewhere."""
        return None

    @property
    def logit_scale(self) -> float:
        """exp(raw logit scale): the multiplier of cosine similarities."""
        return math.exp(self.raw_logit_scale)

    @property
    def logit_bias(self) -> float:
        """The additive bias of the logits (0 when the model has none)."""
        b = self.raw_logit_bias
        return 0.0 if b is None else float(b)

    @property
    def concept_logit_scale(self) -> float | None:
        """exp(concept logit scale) or None."""
        r = self.raw_concept_logit_scale
        return None if r is None else math.exp(r)

    def scalars(self) -> dict[str, float | None]:
        """Raw and exponentiated scalars, for provenance and stores."""
        return {
            "logit_scale": self.raw_logit_scale,
            "logit_bias": self.raw_logit_bias,
            "concept_logit_scale": self.raw_concept_logit_scale,
            "concept_logit_bias": self.raw_concept_logit_bias,
            "logit_scale_exp": self.logit_scale,
            "concept_logit_scale_exp": self.concept_logit_scale,
        }

    # --- scores ----------------------------------------------------------------------------------------------
    def score(self, image_global: torch.Tensor, text_global: torch.Tensor, kind: ScoreKind = "logit") -> torch.Tensor:
        """Scores [B,K] from normalised features: cosine, scaled logits (+bias), softmax over prompts, or sigmoid."""
        return score_features(image_global, text_global, kind, self.logit_scale, self.logit_bias)

    # --- placement -------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> ClipBackend:
        """Move the model (and future inputs) to ``device``; returns self."""


def prefers_channels_last(module: nn.Module) -> bool:
    """True for convolutional towers (more than one Conv2d); ViTs, whose only conv is the patch embedding, stay NCHW.

    Measured on a CPU (1 thread): channels-last speeds toy-cnn 2.2x, resnet18 1.4x, efficientnet_b0 1.3x,
    convnext_atto 1.06x, starnet_s1 0.89x, and slows the toy ViT (its patch embedding) by 1.3x.
    """
    return sum(isinstance(m, nn.Conv2d) for m in module.modules()) > 1


def score_features(
    image_global: torch.Tensor,
    text_global: torch.Tensor,
    kind: ScoreKind,
    logit_scale: float,
    logit_bias: float = 0.0,
) -> torch.Tensor:
    """Pure score formula: cosine ⟨ĝ,t̂⟩, logit = s·cos + b, softmax over texts, or sigmoid(logit)."""
    cos = image_global @ text_global.t()
    if kind == "cosine":
        return cos
    logits = cos * logit_scale + logit_bias
    if kind == "logit":
        return logits
    if kind == "softmax":
        return logits.softmax(dim=-1)
    if kind == "sigmoid":
        return torch.sigmoid(logits)
    raise ValueError(f"unknown score kind {kind!r} (cosine, logit, softmax, sigmoid)")


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' → cuda if available, else mps, else cpu; anything else passes through torch.device."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)
