"""Backend registry: ``load_backend("toy", model="toy-vit")`` returns a ready ClipBackend."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from xaiclip_cli.errors import UsageError

# name -> "module:function"; modules import torch/transformers, so they load only when asked for.
_BACKENDS: dict[str, str] = {
    "toy": "xaiclip_cli.models.toy:load_toy",
    "checkpoint": "xaiclip_cli.models.checkpoint:load_checkpoint_backend",
    "hf": "xaiclip_cli.models.hf:load_hf",
    "conceptclip": "xaiclip_cli.models.conceptclip:load_conceptclip",
}

BACKEND_NAMES = tuple(_BACKENDS)


def register_backend(name: str, target: str) -> None:
    """Register a backend loader given as ``"module:function"``."""
    _BACKENDS[name] = target


def _loader(name: str) -> Callable[..., Any]:
    if name not in _BACKENDS:
        raise UsageError(f"unknown backend {name!r} (choose from {', '.join(sorted(_BACKENDS))})")
    module, func = _BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), func)


def load_backend(name: str, model: str | None = None, *, revision: str | None = None, device: str = "auto",
                 **kwargs: Any):
    """Load backend ``name`` with ``model`` (hub id, local dir, checkpoint or toy name) on ``device``."""
    return _loader(name)(model=model, revision=revision, device=device, **kwargs)
