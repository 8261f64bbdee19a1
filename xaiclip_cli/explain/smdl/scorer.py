"""Scorers for SMDL attribution: a CLIP (image tower vs class prototypes) or a classifier → unit features and p(class).

Score families (smdl.md §4):
- ``softmax`` (CLIP and classifiers): p = softmax(s · f̂ T̂ᵀ) over the C classes; the objective's confidence term is
  1 − H(p)/log C.
- ``sigmoid`` (SigLIP-style models, ConceptCLIP's sigmoid head, multi-label sets): p_c = sigmoid(s·cos_c + b) for every
  prompt on its own, no softmax across prompts, because these models are trained with a per-pair sigmoid loss and their
  prompts are not mutually exclusive (a softmax would invent a competition the model never learned and would change
  with the prompt list). The confidence term is then 1 − H_b(p_t)/log 2, the binary entropy of the target's own
  probability, so 0 means "undecided" (p_t = 0.5) in both families.
The logit scale s is always explicit and recorded; prototype files hold unit vectors (s is never baked in).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from xaiclip_cli.errors import UsageError

Family = Literal["softmax", "sigmoid"]


def text_prototypes(backend: Any, class_prompts: Sequence[Sequence[str]]) -> torch.Tensor:
    """Class prototypes [C,d]: encode each class's templates, normalise, average, renormalise (unit rows)."""
    if len(class_prompts) < 1:
        raise UsageError("no classes given for the text prototypes")
    rows = []
    with torch.no_grad():
        for i, prompts in enumerate(class_prompts):
            if not prompts:
                raise UsageError(f"class {i} has no prompt")
            f = F.normalize(backend.encode_texts(list(prompts)).float(), dim=-1)
            rows.append(F.normalize(f.mean(0), dim=-1))
    return torch.stack(rows).cpu()


class _Counted:
    """Counts images forwarded and the seconds spent inside the model (synchronising CUDA for honest timing)."""

    forwards: int = 0
    model_seconds: float = 0.0
    n_classes: int
    family: Family

    def _sync(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def features_and_probs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit features [B,d], probabilities [B,C]) from one forward of the batch."""
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Unit features [B,d] of a normalised image batch."""
        return self.features_and_probs(x)[0]

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities [B,C] of a normalised image batch (softmax or per-prompt sigmoid)."""
        return self.features_and_probs(x)[1]


def _autocast(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    if amp in (None, "", "none", "fp32"):
        return contextlib.nullcontext()
    if amp != "bf16":
        raise UsageError(f"unknown --amp {amp!r} (choose bf16 or none)")
    return torch.autocast(device.type, dtype=torch.bfloat16)


class ClipScorer(_Counted):
    """A CLIP backend's image tower against fixed unit class prototypes, with an explicit logit scale (and bias)."""

    def __init__(self, backend: Any, text_features: torch.Tensor, logit_scale: float, family: Family = "softmax",
                 logit_bias: float = 0.0, amp: str | None = None) -> None:
        if family not in ("softmax", "sigmoid"):
            raise UsageError(f"unknown score family {family!r} (choose softmax or sigmoid)")
        t = torch.as_tensor(text_features).float()
        if t.ndim != 2 or t.shape[0] < 1:
            raise UsageError(f"text features must be [C,d], got shape {tuple(t.shape)}")
        if family == "softmax" and t.shape[0] < 2:
            raise UsageError(f"softmax scoring needs at least 2 classes, got {t.shape[0]}")
        if getattr(backend, "embed_dim", t.shape[1]) != t.shape[1]:
            raise UsageError(f"text features have dimension {t.shape[1]} but the model embeds in {backend.embed_dim}")
        self.backend = backend
        self.device = torch.device(getattr(backend, "device", "cpu"))
        self.text = t.to(self.device)
        self.logit_scale = float(logit_scale)
        self.logit_bias = float(logit_bias)
        self.family: Family = family
        self.n_classes = int(t.shape[0])
        self.amp = amp
        self.forwards = 0
        self.model_seconds = 0.0

    def logits_from_features(self, f: torch.Tensor) -> torch.Tensor:
        """s · f̂ T̂ᵀ (+ b for the sigmoid family)."""
        logits = self.logit_scale * (f @ self.text.T)
        return logits + self.logit_bias if self.family == "sigmoid" else logits

    def features_and_probs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit features [B,d], probabilities [B,C]) from one forward of the batch."""
        x = x.to(self.device)
        self._sync(self.device)
        t0 = time.perf_counter()
        with torch.no_grad(), _autocast(self.device, self.amp):
            f = self.backend.encode_image(x)[0]
        f = f.float()
        self._sync(self.device)
        self.model_seconds += time.perf_counter() - t0
        self.forwards += int(x.shape[0])
        logits = self.logits_from_features(f)
        p = torch.sigmoid(logits) if self.family == "sigmoid" else torch.softmax(logits, dim=-1)
        return f, p


class ClassifierScorer(_Counted):
    """A timm-style classifier: features = L2-normalised pre-logits, probabilities = softmax(logits)."""

    def __init__(self, model: nn.Module, amp: str | None = None) -> None:
        self.model = model.eval()
        p = next(model.parameters(), None)
        self.device = p.device if p is not None else torch.device("cpu")
        self.family: Family = "softmax"
        self.amp = amp
        self.forwards = 0
        self.model_seconds = 0.0
        n = getattr(model, "num_classes", None)
        if n is None:
            with torch.no_grad():
                size = int(getattr(model, "default_cfg", {}).get("input_size", (3, 224, 224))[-1])
                n = int(self._forward(torch.zeros(1, 3, size, size, device=self.device))[1].shape[1])
        if int(n) < 2:
            raise UsageError(f"the classifier has {n} output(s); SMDL needs at least 2 classes")
        self.n_classes = int(n)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        if hasattr(m, "forward_features") and hasattr(m, "forward_head"):
            h = m.forward_features(x)
            return m.forward_head(h, pre_logits=True), m.forward_head(h)
        logits = m(x)
        return logits, logits

    def features_and_probs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit pre-logit features [B,d], softmax probabilities [B,C]) from one forward."""
        x = x.to(self.device)
        self._sync(self.device)
        t0 = time.perf_counter()
        with torch.no_grad(), _autocast(self.device, self.amp):
            feats, logits = self._forward(x)
        self._sync(self.device)
        self.model_seconds += time.perf_counter() - t0
        self.forwards += int(x.shape[0])
        return F.normalize(feats.float().flatten(1), dim=-1), torch.softmax(logits.float(), dim=-1)
