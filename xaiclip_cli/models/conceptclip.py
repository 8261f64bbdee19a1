"""The ``conceptclip`` backend: the Hugging Face remote-code ConceptCLIP (or a local replica) behind the protocol.

Wrapping (conceptclip.md §2): image global = ``encode_image(px, normalize=True)[0]``, image tokens =
``image_proj(tokens)``; text global = ``encode_text(ids, normalize=True)[0]``, text tokens = ``text_proj(tokens)``.
Scores: ConceptCLIP's zero-shot is a softmax over scaled logits, so ``score_family`` is "softmax"; the model also
carries ``logit_bias`` (≈ −11.16), exposed raw and added to "logit" scores (it cancels in the softmax).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.models import hub
from xaiclip_cli.models.base import ClipBackend, ImageInput, resolve_device
from xaiclip_cli.models.hf import (
    Padding,
    image_side,
    json_config,
    preprocess_path_for,
    run_image_processor,
    run_tokenizer,
    tokenizer_config,
)
from xaiclip_cli.versions import lib_versions

log = logging.getLogger(__name__)

DEFAULT_MODEL = "JerrryNie/ConceptCLIP"
# Fixes JerrryNie/ConceptCLIP#4 (transformers >= 4.52 loading); author-verified up to transformers 5.15.1.
DEFAULT_REVISION = "c91b537cd004630f1e262ef1975200070629a8a9"
DEFAULT_REVISIONS = {DEFAULT_MODEL: DEFAULT_REVISION}
SCALAR_NAMES = ("logit_scale", "logit_bias", "concept_logit_scale", "concept_logit_bias")


class ConceptCLIPBackend(ClipBackend):
    """ConceptCLIP: timm SigLIP so400m/14 image tower (MAP, no CLS) + PubMedBERT text tower, concept heads."""

    num_prefix_tokens = 0
    score_family = "softmax"

    def __init__(self, model: nn.Module, processor: Any, ref: hub.ModelRef, device: torch.device,
                 amp: bool | None = None, context_length: int = 77, padding: Padding = "longest") -> None:
        super().__init__()
        self.model = model.eval()
        self.processor = processor
        self.image_processor = processor.image_processor
        self.tokenizer = processor.tokenizer
        self.ref = ref
        self.name = f"conceptclip:{ref.model_id}"
        self.context_length = int(context_length)
        if padding not in ("longest", "max_length"):
            raise UsageError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        self.padding = padding
        missing = [n for n in SCALAR_NAMES if not isinstance(getattr(model, n, None), torch.Tensor)]
        if missing or not hasattr(model, "image_proj") or not hasattr(model, "text_proj"):
            what = ", ".join(missing) or "image_proj/text_proj"
            raise XaiclipError(f"model {ref.model_id!r} lacks ConceptCLIP members ({what}); is it a ConceptCLIP "
                               "checkpoint?")
        self.embed_dim = int(model.image_proj[-1].out_features)
        self.image_size = image_side(self.image_processor, getattr(model.config, "image_size", 384))
        self.token_grid = self._grid()
        self.amp = amp
        self._revision: str | None = None
        self.to(device)

    def _grid(self) -> tuple[int, int] | None:
        """Token grid from the timm trunk's patch embedding; else from one dummy forward (square grids only)."""
        trunk = getattr(getattr(self.model, "visual", None), "trunk", None)
        pe = getattr(trunk, "patch_embed", None)
        if pe is not None and getattr(pe, "grid_size", None) is not None:
            return int(pe.grid_size[0]), int(pe.grid_size[1])
        device = next(self.model.parameters()).device
        with torch.no_grad():
            _, tokens = self.model.encode_image(torch.zeros(1, 3, self.image_size, self.image_size, device=device))
        g = math.isqrt(tokens.shape[1])
        return (g, g) if g * g == tokens.shape[1] else None

    # placement
    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> ConceptCLIPBackend:
        """Move the model; bf16 autocast is used on CUDA unless ``amp=False`` was given."""
        self._place(self.model, device, dtype)
        return self

    def vision_module(self) -> nn.Module:
        """``model.visual`` (open_clip TimmModel); CAM's default layer inside it is ``trunk.norm``."""
        visual = getattr(self.model, "visual", None)
        if visual is None:
            raise XaiclipError(f"model {self.ref.model_id!r} has no 'visual' tower")
        return visual

    # inputs
    def preprocess(self, images: ImageInput) -> torch.Tensor:
        """The model's SiglipImageProcessor (squash to S×S, bicubic, mean/std 0.5) → [B,3,S,S] in [−1,1]."""
        return run_image_processor(self.image_processor, images, self.device)

    def tokenize(self, texts: Sequence[str], max_length: int | None = None,
                 padding: Padding | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """BERT ids + mask, always truncated at an explicit max length (77; the tokenizer itself has none)."""
        ml = self.context_length if max_length is None else int(max_length)
        return run_tokenizer(self.tokenizer, texts, ml, padding or self.padding, self.device)

    # features
    def encode_image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(``encode_image(px, normalize=True)[0]`` [B,D], ``image_proj(tokens)`` [B,T,D]), float32."""
        with self.autocast():
            cls, tokens = self.model.encode_image(pixels.to(self.device, self.dtype), normalize=True)
            tokens = self.model.image_proj(tokens)
        # Re-normalise in fp32: a no-op in fp32, keeps unit norms to 1e-6 after bf16 autocast.
        return F.normalize(cls.float(), dim=-1), tokens.float()

    def encode_image_unnormalized(self, pixels: torch.Tensor) -> torch.Tensor:
        """``encode_image(px, normalize=False)[0]`` [B,D] (float32)."""
        with self.autocast():
            cls, _ = self.model.encode_image(pixels.to(self.device, self.dtype), normalize=False)
        return cls.float()

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(``encode_text(ids, normalize=True)[0]`` [K,D], ``text_proj(tokens)`` [K,L,D]); pads are masked inside."""
        with self.autocast():
            cls, tokens = self.model.encode_text(ids.to(self.device), normalize=True)
            tokens = self.model.text_proj(tokens)
        return F.normalize(cls.float(), dim=-1), tokens.float()

    # scalars (parameters as stored: scales in log space, biases raw)
    def _param(self, name: str) -> float:
        return float(getattr(self.model, name).detach().float().reshape(-1)[0])

    @property
    def raw_logit_scale(self) -> float:
        """``logit_scale`` parameter (log space; real ≈ 4.5706, exp ≈ 96.6)."""
        return self._param("logit_scale")

    @property
    def raw_logit_bias(self) -> float | None:
        """``logit_bias`` parameter (raw; real ≈ −11.161)."""
        return self._param("logit_bias")

    @property
    def raw_concept_logit_scale(self) -> float | None:
        """``concept_logit_scale`` parameter (log space; real ≈ 4.5115)."""
        return self._param("concept_logit_scale")

    @property
    def raw_concept_logit_bias(self) -> float | None:
        """``concept_logit_bias`` parameter (raw; real ≈ −11.034)."""
        return self._param("concept_logit_bias")

    def provenance(self) -> dict[str, Any]:
        """Model id, resolved commit (or content hash of a local dir), versions, processor and tokenizer config."""
        if self._revision is None:
            self._revision = hub.resolved_revision(self.ref, self.model.config)
        return {
            "backend": "conceptclip",
            "model_id": self.ref.model_id,
            "requested_revision": self.ref.revision,
            "model_revision": self._revision,
            "local_dir": self.ref.local_dir is not None,
            "trust_remote_code": True,
            "model_class": type(self.model).__name__,
            "lib_versions": lib_versions(),
            "processor_config": json_config(self.image_processor),
            "preprocess_path": f"{preprocess_path_for(self.image_processor)} on {self.device.type}",
            "tokenizer_config": tokenizer_config(self.tokenizer, self.context_length, self.padding),
            **self.shape_facts(),
        }


def _is_meta_failure(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return "meta" in text and ("tensor" in text or "device" in text)


_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def check_remote_code(ref: hub.ModelRef, trust_remote_code: bool) -> None:
    """Refuse to run a repository's Python code unless it is the pinned default, or the user trusts it and it is
    pinned: a 40-hex commit for a hub id (a branch or tag can change the code it runs) or a local folder."""
    if ref.local_dir is None and ref.model_id == DEFAULT_MODEL and ref.revision == DEFAULT_REVISION:
        return
    where = str(ref.local_dir) if ref.local_dir is not None else f"{ref.model_id}@{ref.revision or 'latest'}"
    if not trust_remote_code:
        raise UsageError(f"--model {where} runs that repository's own Python code; pass --trust-remote-code to "
                         f"allow it (only the pinned {DEFAULT_MODEL}@{DEFAULT_REVISION[:12]} runs without it)")
    if ref.local_dir is None and not _COMMIT.match(str(ref.revision or "")):
        raise UsageError(f"--trust-remote-code with hub id {ref.model_id!r} needs --revision <40-hex commit> (got "
                         f"{ref.revision or 'none'}): a branch or tag can change the code that runs; or pass a "
                         "local folder")


def load_conceptclip(model: str | None = None, revision: str | None = None, device: str = "auto", *,
                     amp: bool | None = None, context_length: int = 77, padding: Padding = "longest",
                     trust_remote_code: bool = False, **kwargs: Any) -> ConceptCLIPBackend:
    """Load ConceptCLIP: the pinned default, or (with ``trust_remote_code``) a pinned hub commit or a local folder."""
    ref = hub.resolve_model_ref(model or DEFAULT_MODEL, revision, default_revisions=DEFAULT_REVISIONS)
    check_remote_code(ref, trust_remote_code)
    from transformers import AutoModel, AutoProcessor

    tok = hub.hf_token()
    try:
        try:
            net = AutoModel.from_pretrained(ref.source, revision=ref.revision, trust_remote_code=True, token=tok)
        except Exception as exc:  # noqa: BLE001
            if not _is_meta_failure(exc):
                raise
            # Remote open_clip-style code may not initialise on the meta device: retry once without it (4.x option).
            log.warning("ConceptCLIP failed to initialise on the meta device; retrying with low_cpu_mem_usage=False")
            net = AutoModel.from_pretrained(ref.source, revision=ref.revision, trust_remote_code=True, token=tok,
                                            low_cpu_mem_usage=False)
        processor = AutoProcessor.from_pretrained(ref.source, revision=ref.revision, trust_remote_code=True,
                                                  token=tok)
    except XaiclipError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line naming the model
        raise hub.load_error(exc, ref) from exc
    dev = resolve_device(device)
    log.info("loaded ConceptCLIP %s (revision %s) on %s", ref.model_id, ref.revision or "local", dev)
    return ConceptCLIPBackend(net.eval(), processor, ref, dev, amp=amp, context_length=context_length,
                              padding=padding)
