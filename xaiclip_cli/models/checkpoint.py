"""The ``checkpoint`` backend: loads a CLIP exported by ``xaiclip train clip`` (``RUN/export/``) and writes exports.

Export directory layout (train.md §10):

* ``xaiclip_clip.json``: format + version, the ClipModel spec (image tower timm name/kwargs, text tower config and
  pooling, embed_dim), context length, image size, in_chans, mean/std, interpolation, raw logit scale/bias, class
  names + templates;
* ``model.safetensors``: the ClipModel state dict (``model.pt`` loaded with ``torch.load(weights_only=True)`` is
  accepted as a fallback; nothing is ever unpickled);
* the tokenizer files (``save_pretrained``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.models.base import ClipBackend, ImageInput, resolve_device
from xaiclip_cli.models.clip_model import ClipModel
from xaiclip_cli.models.preprocess import preprocess_images
from xaiclip_cli.models.text_tower import tokenize as _tokenize

EXPORT_FORMAT = "xaiclip-clip"
EXPORT_VERSION = 1
SPEC_FILE = "xaiclip_clip.json"
WEIGHTS_FILE = "model.safetensors"
TORCH_WEIGHTS_FILE = "model.pt"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def export_meta(
    model: ClipModel,
    *,
    image_size: int,
    in_chans: int,
    mean: Sequence[float],
    std: Sequence[float],
    context_length: int,
    interpolation: str = "bicubic",
    class_names: Sequence[str] = (),
    templates: Sequence[str] = (),
    name: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``xaiclip_clip.json`` document for ``model`` and its preprocessing."""
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "name": name,
        "model": model.spec,
        "embed_dim": model.embed_dim,
        "image_size": int(image_size),
        "in_chans": int(in_chans),
        "mean": [float(x) for x in mean],
        "std": [float(x) for x in std],
        "interpolation": interpolation,
        "context_length": int(context_length),
        "text_pooling": model.text_pooling,
        "num_prefix_tokens": model.num_prefix_tokens,
        "logit_scale": float(model.logit_scale.detach()),
        "logit_bias": None if model.logit_bias is None else float(model.logit_bias.detach()),
        "class_names": list(class_names),
        "templates": list(templates),
        "weights": WEIGHTS_FILE,
        **(extra or {}),
    }


def save_export(model: ClipModel, tokenizer: Any, meta: dict[str, Any], directory: str | Path) -> Path:
    """Write json + safetensors + tokenizer into ``directory`` atomically (temp dir, then rename over it)."""
    from safetensors.torch import save_file

    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": EXPORT_FORMAT})
        tokenizer.save_pretrained(str(tmp))
        (tmp / SPEC_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _plain_permissions(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _plain_permissions(directory: Path) -> None:
    """mkdtemp makes 0700 dirs (and some writers 0600 files): give the export the usual umask-based modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for f in directory.iterdir():
        os.chmod(f, 0o666 & ~umask)


def resolve_export_dir(path: str | Path) -> Path:
    """The export dir for a user path: the dir itself, or ``RUN/export`` when given a run dir."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"checkpoint dir not found: {p} (give the export/ folder written by 'xaiclip train clip')")
    if p.is_file():
        raise UsageError(f"checkpoint {p} is a file; give the export/ folder that holds {SPEC_FILE}")
    if not (p / SPEC_FILE).is_file() and (p / "export" / SPEC_FILE).is_file():
        return p / "export"
    return p


def read_meta(directory: Path) -> dict[str, Any]:
    """Read and check ``xaiclip_clip.json``: a missing or foreign file is a UsageError, a damaged one (not JSON)
    an XaiclipError (exit 1) naming the file."""
    f = directory / SPEC_FILE
    if not f.is_file():
        raise UsageError(f"checkpoint {directory}: missing {SPEC_FILE} (not an 'xaiclip train clip' export)")
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:  # a damaged file: runtime failure (exit 1)
        raise XaiclipError(f"checkpoint {f}: invalid JSON ({exc.__class__.__name__}); the file is damaged, "
                           "re-export the model") from exc
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise UsageError(f"checkpoint {f}: not an {EXPORT_FORMAT} file (missing 'format': '{EXPORT_FORMAT}')")
    if int(meta.get("version", 0)) > EXPORT_VERSION:
        raise UsageError(f"checkpoint {f}: format version {meta.get('version')} is newer than this xaiclip supports")
    missing = [k for k in ("model", "image_size", "mean", "std", "context_length") if k not in meta]
    if missing:
        raise UsageError(f"checkpoint {f}: missing keys {missing}")
    return meta


def load_weights(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The state dict from model.safetensors (or model.pt via torch.load(weights_only=True))."""
    st = directory / WEIGHTS_FILE
    if st.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(st)), st
        except (SafetensorError, OSError, ValueError) as exc:
            raise XaiclipError(f"checkpoint {st}: unreadable safetensors file ({exc}); re-export the model") from exc
    pt = directory / TORCH_WEIGHTS_FILE
    if pt.is_file():
        try:
            state = torch.load(str(pt), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling refusal or corrupt file gets one line
            raise XaiclipError(f"checkpoint {pt}: cannot load weights safely ({type(exc).__name__})") from exc
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        return state, pt
    raise UsageError(f"checkpoint {directory}: missing {WEIGHTS_FILE}")


def build_model(meta: dict[str, Any], state: dict[str, torch.Tensor], where: Path) -> ClipModel:
    """ClipModel from the json spec with ``state`` loaded strictly; one-line errors for mismatches."""
    try:
        model = ClipModel.from_spec(meta["model"])
    except Exception as exc:  # noqa: BLE001 - a bad spec (unknown timm name, bad kwargs) is the user's file
        raise UsageError(f"checkpoint {where}: cannot build the model from {SPEC_FILE} ({exc})") from exc
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise XaiclipError(f"checkpoint {where}: weights do not match {SPEC_FILE} ({what}, "
                           f"{len(missing)} missing, {len(unexpected)} unexpected)")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise XaiclipError(f"checkpoint {where}: shape mismatch for {k}: file {tuple(state[k].shape)}, "
                               f"{SPEC_FILE} expects {tuple(v.shape)}")
    model.load_state_dict(state, strict=True)
    return model.eval()


class CheckpointBackend(ClipBackend):
    """ClipBackend over a ClipModel + tokenizer + preprocessing facts read from an export dir."""

    def __init__(self, model: ClipModel, tokenizer: Any, meta: dict[str, Any], *, source: str, sha256: str | None,
                 name: str = "checkpoint"):
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.meta = meta
        self.source = source
        self.sha256 = sha256
        self.name = name
        self.kind = "checkpoint"
        self.embed_dim = int(model.embed_dim)
        self.image_size = int(meta["image_size"])
        self.in_chans = int(meta.get("in_chans", 3))
        self.mean = [float(x) for x in meta["mean"]]
        self.std = [float(x) for x in meta["std"]]
        self.interpolation = str(meta.get("interpolation", "bicubic"))
        self.context_length = int(meta["context_length"])
        self.class_names = list(meta.get("class_names") or [])
        self.templates = list(meta.get("templates") or [])
        self.num_prefix_tokens = model.num_prefix_tokens
        self.token_grid = self._probe_grid()

    def _probe_grid(self) -> tuple[int, int] | None:
        """(h, w) of the image tokens, read from one forward pass of a blank image (cheap for any tower)."""
        visual = self.model.visual
        grid = getattr(getattr(visual, "patch_embed", None), "grid_size", None)
        with torch.no_grad():
            x = torch.zeros(1, self.in_chans, self.image_size, self.image_size)
            feats = visual.forward_features(x)
        if feats.ndim == 4:
            nhwc = getattr(visual, "output_fmt", "NCHW") == "NHWC"
            return (int(feats.shape[1]), int(feats.shape[2])) if nhwc else (int(feats.shape[2]), int(feats.shape[3]))
        if grid is not None:
            return int(grid[0]), int(grid[1])
        n = feats.shape[1] - self.num_prefix_tokens
        side = int(math.isqrt(n))
        return (side, side) if side * side == n else None

    # --- protocol ---------------------------------------------------------------------------------------------
    def provenance(self) -> dict[str, Any]:
        """Model id (export dir or toy name), sha256 of model.safetensors as the revision, preprocessing, versions."""
        from xaiclip_cli.versions import lib_versions

        return {
            "backend": self.kind,
            "model_id": self.name if self.kind == "toy" else self.source,
            "model_revision": f"sha256:{self.sha256}" if self.sha256 else None,
            "sha256": self.sha256,
            "local_dir": self.source,
            "lib_versions": lib_versions(),
            "image_tower": self.meta["model"]["image_tower"]["name"],
            "text_tower": self.meta["model"]["text_tower"]["config"].get("model_type"),
            "text_pooling": self.model.text_pooling,
            "preprocess": {"size": self.image_size, "mean": self.mean, "std": self.std,
                           "interpolation": self.interpolation, "in_chans": self.in_chans},
            "context_length": self.context_length,
            **self.shape_facts(),
        }

    def preprocess(self, images: ImageInput) -> torch.Tensor:
        """Squash-resize to the export's image size and normalise with its mean/std."""
        px = preprocess_images(images, self.image_size, self.mean, self.std, self.interpolation,
                               channels=self.in_chans)
        return px.to(self.device, self.dtype)

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Saved tokenizer, padded/truncated to ``max_length`` (the export's context length by default)."""
        ids, mask = _tokenize(self.tokenizer, texts, max_length or self.context_length)
        return ids.to(self.device), mask.to(self.device)

    def encode_image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(normalised global [B,D], projected tokens [B,T,D]); bf16 autocast on CUDA, float32 outputs."""
        g, tokens = self._image_outputs(pixels)
        return F.normalize(g, dim=-1), tokens

    def encode_image_unnormalized(self, pixels: torch.Tensor) -> torch.Tensor:
        """``image_proj`` of the pooled feature [B,D], before normalisation (float32)."""
        return self._image_outputs(pixels)[0]

    def _image_outputs(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            g, tokens = self.model.encode_image(pixels.to(self.device, self.dtype), normalize=False)
        return g.float(), tokens.float()

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(normalised global [K,D], projected tokens [K,L,D]); bf16 autocast on CUDA, float32 outputs."""
        with self.autocast():
            g, tokens = self.model.encode_text(ids.to(self.device), mask.to(self.device), normalize=False)
        return F.normalize(g.float(), dim=-1), tokens.float()

    def vision_module(self) -> nn.Module:
        """The timm image tower."""
        return self.model.visual

    @property
    def raw_logit_scale(self) -> float:
        """Stored logit scale (log space), clamped at ln 100 as in training."""
        return float(self.model.logit_scale.detach().clamp(max=math.log(100.0)))

    @property
    def raw_logit_bias(self) -> float | None:
        """Stored logit bias or None."""
        b = self.model.logit_bias
        return None if b is None else float(b.detach())

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> CheckpointBackend:
        """Move the model (later inputs follow); bf16 autocast on CUDA unless ``amp=False`` was given."""
        self._place(self.model, device, dtype)
        return self


def load_export(path: str | Path, device: str = "auto", name: str = "checkpoint",
                amp: bool | None = None) -> CheckpointBackend:
    """Load an export dir (or a run dir holding ``export/``) into a CheckpointBackend on ``device``."""
    from xaiclip_cli.models.text_tower import load_tokenizer

    directory = resolve_export_dir(path)
    meta = read_meta(directory)
    state, weights = load_weights(directory)
    model = build_model(meta, state, directory)
    if not any((directory / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        raise UsageError(f"checkpoint {directory}: missing tokenizer files (tokenizer.json / vocab.txt)")
    try:
        tokenizer = load_tokenizer(str(directory))
    except Exception as exc:  # noqa: BLE001 - any tokenizer parse failure is a bad export
        raise XaiclipError(f"checkpoint {directory}: cannot load the tokenizer ({type(exc).__name__})") from exc
    backend = CheckpointBackend(model, tokenizer, meta, source=str(directory), sha256=sha256_file(weights),
                                name=name)
    backend.amp = amp
    return backend.to(resolve_device(device))


def load_checkpoint_backend(model: str | None = None, revision: str | None = None, device: str = "auto",
                            **kwargs: Any) -> CheckpointBackend:
    """Registry entry: ``load_backend("checkpoint", model=EXPORT_DIR)``; ``revision`` does not apply to local dirs."""
    if not model:
        raise UsageError("backend 'checkpoint' needs --model EXPORT_DIR (the export/ folder of 'xaiclip train clip')")
    if revision:
        raise UsageError("--revision does not apply to the checkpoint backend (it loads a local export dir)")
    return load_export(model, device=device, amp=kwargs.get("amp"))
