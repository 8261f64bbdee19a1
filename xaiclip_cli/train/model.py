"""Build timm classifiers (pretrained auto/true/false or a local file), freeze stages, rebuild from checkpoints."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xaiclip_cli.errors import UsageError, XaiclipError

log = logging.getLogger("xaiclip.train")

ALIASES = {"swin_t": "swin_tiny_patch4_window7_224", "swin-t": "swin_tiny_patch4_window7_224"}


def timm_name(name: str) -> str:
    """The timm model name for a user-facing name (``swin_t`` -> ``swin_tiny_patch4_window7_224``)."""
    return ALIASES.get(name, name)


def _create(name: str, pretrained: bool, num_classes: int, in_chans: int, image_size: int,
            pretrained_path: Path | None) -> nn.Module:
    import timm

    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans}
    if pretrained_path is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained_path)}
    try:
        cfg = timm.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - unknown names fail below with timm's own message
        cfg = None
    if cfg is not None and getattr(cfg, "fixed_input_size", False) and cfg.input_size[-1] != image_size:
        kwargs["img_size"] = image_size
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def cifar_stem_(model: nn.Module, in_chans: int) -> nn.Module:
    """Make a ResNet CIFAR-style in place: 3x3 stride-1 first conv, no max-pool (MedMNIST "(28)" models).

    timm has no such option, so the stem is swapped after creation (the rest of the network is unchanged). A deep
    stem (timm ``stem_type='deep'``, a Sequential of 3x3 convs) keeps its convs with the first one at stride 1.
    """
    conv, pool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    first = next((m for m in conv.modules() if isinstance(m, nn.Conv2d)), None) if isinstance(conv, nn.Module) else None
    if first is None or pool is None:
        raise UsageError(f"model.cifar_stem needs a ResNet (conv1 + maxpool); {type(model).__name__} has no such stem")
    if isinstance(conv, nn.Conv2d):
        model.conv1 = nn.Conv2d(in_chans, conv.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    else:
        first.stride = (1, 1)
    model.maxpool = nn.Identity()
    return model


def build_model(
    name: str,
    num_classes: int,
    in_chans: int,
    image_size: int,
    pretrained: str = "auto",
    pretrained_path: Path | None = None,
    warn: Callable[[str], None] | None = None,
    cifar_stem: bool = False,
) -> tuple[nn.Module, bool]:
    """``timm.create_model`` with the pretrained policy; returns (model, pretrained weights loaded)."""
    model, loaded = _build(name, num_classes, in_chans, image_size, pretrained, pretrained_path, warn)
    if cifar_stem:
        cifar_stem_(model, in_chans)
    return model, loaded


def _build(name: str, num_classes: int, in_chans: int, image_size: int, pretrained: str,
           pretrained_path: Path | None, warn: Callable[[str], None] | None) -> tuple[nn.Module, bool]:
    import timm

    arch = timm_name(name)
    if not timm.is_model(arch):
        raise UsageError(f"model.name {name!r} is not a timm model; see timm.list_models()")
    if pretrained_path is not None and not Path(pretrained_path).is_file():
        raise UsageError(f"model.pretrained_path {pretrained_path} not found")
    want = pretrained == "true" or pretrained_path is not None
    if pretrained == "false" and pretrained_path is None:
        return _create(arch, False, num_classes, in_chans, image_size, None), False
    if not want and _offline() and not _weights_cached(arch):
        # Offline, "auto" must not sit through the hub client's retries (about 30 s) to learn what the cache says.
        (warn or log.warning)(f"pretrained weights for {arch} are not cached and the hub is offline; from scratch")
        return _create(arch, False, num_classes, in_chans, image_size, None), False
    try:
        return _create(arch, True, num_classes, in_chans, image_size, pretrained_path), True
    except Exception as exc:  # noqa: BLE001 - offline hub errors come in many types
        if want:
            raise XaiclipError(
                f"pretrained weights for {arch} could not be loaded ({type(exc).__name__}); "
                "pass --pretrained-path FILE or --pretrained false"
            ) from exc
        (warn or log.warning)(f"pretrained weights for {arch} unavailable ({type(exc).__name__}); from scratch")
        return _create(arch, False, num_classes, in_chans, image_size, None), False


def _offline() -> bool:
    """True when the Hugging Face hub is switched off (HF_HUB_OFFLINE)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _weights_cached(arch: str) -> bool:
    """Whether timm's default pretrained weights for ``arch`` are already in the local hub or torch-hub cache."""
    import os

    import timm
    from huggingface_hub import try_to_load_from_cache

    try:
        cfg = timm.get_pretrained_cfg(arch)
    except Exception:  # noqa: BLE001 - no pretrained config: nothing to load
        return False
    if cfg is None:
        return False
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        repo = hub_id.split("@")[0]
        names = [getattr(cfg, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin"]
        if any(isinstance(try_to_load_from_cache(repo, n), str) for n in names if n):
            return True
    url = getattr(cfg, "url", None)
    if url:
        import torch.hub

        return os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url)))
    return False


def stage_names(model: nn.Module, k: int) -> list[str]:
    """Submodules frozen by ``freeze_stages k``: stem + first k stages (ResNet, Swin, ConvNeXt-like layouts)."""
    children = dict(model.named_children())
    if "layer1" in children:
        stem = [n for n in ("conv1", "bn1") if n in children]
        stages = [f"layer{i}" for i in range(1, 5) if f"layer{i}" in children]
    elif "patch_embed" in children and "layers" in children:
        stem, stages = ["patch_embed"], [f"layers.{i}" for i in range(len(model.layers))]
    elif "stem" in children and "stages" in children:
        stem, stages = ["stem"], [f"stages.{i}" for i in range(len(model.stages))]
    else:
        raise UsageError(f"model.freeze_stages is not supported for {type(model).__name__}; use 0")
    if k > len(stages):
        raise UsageError(f"model.freeze_stages {k} > {len(stages)} stages of {type(model).__name__}")
    return stem + stages[:k]


def freeze_stages(model: nn.Module, k: int) -> list[str]:
    """Freeze stem + first k stages with their BatchNorm statistics (timm ``freeze``); returns the names."""
    if k <= 0:
        return []
    from timm.utils.model import freeze

    names = stage_names(model, k)
    freeze(model, names, include_bn_running_stats=True)
    return names


def model_meta(model_name: str, num_classes: int, in_chans: int, image_size: int, mean: list[float],
               std: list[float], class_names: list[str], multi_label: bool, freeze: int,
               pretrained_loaded: bool, cifar_stem: bool = False, interpolation: str = "bilinear") -> dict[str, Any]:
    """What a checkpoint embeds so that other commands rebuild the model from it alone."""
    c = in_chans
    return {"arch": timm_name(model_name), "model_name": model_name, "num_classes": num_classes, "in_chans": in_chans,
            "image_size": image_size, "mean": list(mean) * (c if len(mean) == 1 else 1),
            "std": list(std) * (c if len(std) == 1 else 1), "class_names": list(class_names),
            "multi_label": multi_label, "freeze_stages": freeze, "pretrained_loaded": pretrained_loaded,
            "cifar_stem": cifar_stem, "interpolation": interpolation}


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by `train fit` (tensors and plain Python only)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"checkpoint {p} not found")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise XaiclipError(f"checkpoint {p} could not be read ({type(exc).__name__}); is it from `train fit`?") from exc


def model_from_checkpoint(ckpt: dict[str, Any] | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the classifier from checkpoint metadata and load its weights (eval mode)."""
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    meta = ckpt.get("meta")
    if not meta:
        raise XaiclipError("checkpoint has no 'meta' block; it was not written by `xaiclip train fit`")
    model, _ = build_model(meta["arch"], meta["num_classes"], meta["in_chans"], meta["image_size"], "false",
                           cifar_stem=bool(meta.get("cifar_stem", False)))
    freeze_stages(model, int(meta.get("freeze_stages", 0)))
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, meta
