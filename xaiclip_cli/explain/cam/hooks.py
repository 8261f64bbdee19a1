"""A context manager that captures one module's output for CAM and always removes its hook.

Unlike pytorch-grad-cam's ``BaseCAM.__exit__`` (which swallows ``IndexError``), exceptions propagate and the hook is
removed on success and on error alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from xaiclip_cli.explain.layers import first_tensor


class Capture:
    """Holds the activation recorded by :func:`capture` during the last forward pass."""

    def __init__(self) -> None:
        self.activation: torch.Tensor | None = None
        self.calls = 0


@contextlib.contextmanager
def capture(module: nn.Module) -> Iterator[Capture]:
    """Record ``module``'s output tensor; the module returns a clone so later in-place ops cannot alter the record."""
    box = Capture()

    def hook(_m: nn.Module, _inp: Any, out: Any) -> Any:
        box.calls += 1
        t = first_tensor(out)
        if t is None:
            return None
        box.activation = t
        # Why clone: an in-place op downstream (ReLU(inplace=True)) would otherwise change the recorded tensor.
        if isinstance(out, torch.Tensor):
            return out.clone()
        return None

    handle = module.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def hook_count(root: nn.Module) -> int:
    """Number of forward/backward hooks attached anywhere under ``root`` (0 once every CAM has finished)."""
    n = 0
    for m in root.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        n += len(getattr(m, "_backward_pre_hooks", {}))
    return n
