"""Refuse a device this machine lacks (``--device cuda``, ``--gpus 0,1`` without CUDA) before any model is built.

Every command's settings pass through :func:`check_settings_devices` (from ``cli.command``), so each group gets
the same one-line usage error (exit 2) naming the option instead of torch's raw CUDA error. torch is imported
only when a non-CPU device or a GPU list is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from xaiclip_cli.errors import UsageError


def _cuda_state() -> tuple[int, str]:
    """(number of visible CUDA devices, why there are none)."""
    import torch

    if torch.version.cuda is None:
        return 0, f"this torch {torch.__version__} is a CPU-only build"
    try:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken driver reads as no device
        n = 0
    return n, "no NVIDIA driver or GPU is visible"


def check_device_available(device: str | None, gpus: Sequence[int] = (), *, device_option: str = "--device",
                           gpus_option: str = "--gpus") -> None:
    """Raise a one-line UsageError when ``device`` or ``gpus`` names hardware this machine does not have."""
    dev = (device or "auto").strip().lower()
    if dev.startswith("cuda"):
        n, why = _cuda_state()
        if n == 0:
            raise UsageError(f"{device_option} {device}: CUDA is not available ({why}); use {device_option} cpu "
                             "or auto")
        if ":" in dev and int(dev.split(":", 1)[1]) >= n:
            raise UsageError(f"{device_option} {device}: only {n} CUDA device(s) visible (cuda:0..cuda:{n - 1})")
    elif dev == "mps":
        import torch

        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError(f"{device_option} mps: Apple MPS is not available on this machine; use "
                             f"{device_option} cpu or auto")
    if gpus and dev != "cpu":
        ids = ",".join(str(g) for g in gpus)
        n, why = _cuda_state()
        if n == 0:
            raise UsageError(f"{gpus_option} {ids}: CUDA is not available ({why}); drop {gpus_option} (or add "
                             f"{device_option} cpu for CPU worker processes)")
        bad = [g for g in gpus if g >= n]
        if bad:
            raise UsageError(f"{gpus_option} {ids}: GPU id(s) {','.join(map(str, bad))} not visible "
                             f"({n} CUDA device(s): 0..{n - 1})")


def check_settings_devices(settings: BaseModel) -> None:
    """Apply :func:`check_device_available` to a settings model's ``device``/``gpus`` (top level or one nested
    section, e.g. ``training.device``); a legacy ``cpu: true`` means the CPU."""
    found: list[tuple[str, Any, Any]] = []

    def visit(model: BaseModel, prefix: str) -> None:
        names = type(model).model_fields
        if "device" in names or "gpus" in names:
            device = "cpu" if getattr(model, "cpu", False) is True else getattr(model, "device", None)
            found.append((prefix, device, getattr(model, "gpus", None) or ()))
        for name in names:
            value = getattr(model, name, None)
            if isinstance(value, BaseModel) and not prefix:
                visit(value, f"{name}.")

    visit(settings, "")
    for _prefix, device, gpus in found:  # flags are the last path part (``training.device`` is --device)
        check_device_available(device if isinstance(device, str) else None, list(gpus))
