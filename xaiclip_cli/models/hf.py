"""The ``hf`` backend: transformers CLIPModel / SiglipModel from a hub id or a local directory.

Also holds the image-input helpers shared with the ``conceptclip`` backend: any image input is turned into HWC
arrays and sent through the model's own Hugging Face image processor (uint8 as is, floats with ``do_rescale=False``
per call, so the shared processor is never mutated).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.models import hub
from xaiclip_cli.models.base import ClipBackend, ImageInput, resolve_device
from xaiclip_cli.models.preprocess import as_image_list
from xaiclip_cli.versions import lib_versions

log = logging.getLogger(__name__)

Padding = Literal["longest", "max_length"]
SUPPORTED_TYPES = ("clip", "siglip")


# --- shared image / text helpers ---------------------------------------------------------------------------------
def _is_pil(img: Any) -> bool:
    return hasattr(img, "convert") and hasattr(img, "mode") and not isinstance(img, (np.ndarray, torch.Tensor))


def _one_hwc(img: Any) -> np.ndarray:
    """One image → HWC array with 3 channels, uint8 or float32 (float means already in [0,1])."""
    if _is_pil(img):
        arr = np.array(img.convert("RGB"))  # a copy: asarray of a PIL image is read-only
    elif isinstance(img, torch.Tensor):
        t = img.detach().cpu()
        arr = t.numpy() if t.dtype == torch.uint8 else t.float().numpy()
        # Float tensors are CHW (torch convention); uint8 tensors are HWC unless they clearly are CHW.
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and (arr.dtype != np.uint8 or arr.shape[-1] not in (1, 3, 4)):
            arr = arr.transpose(1, 2, 0)
    else:
        arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise UsageError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        return np.ascontiguousarray(arr, dtype=np.float32)
    raise UsageError(f"unsupported image dtype {arr.dtype}; use uint8 (0-255) or float in [0,1]")


def to_hwc_arrays(images: ImageInput) -> list[np.ndarray]:
    """Split a batch / sequence / single image into 3-channel HWC arrays (uint8 or float32)."""
    arrays = [_one_hwc(img) for img in as_image_list(images)]
    if not arrays:
        raise UsageError("no images given")
    return arrays


PATH_HF = "hf-image-processor"  # the processor itself, on the CPU
PATH_TORCH = "uint8-torch-resize"  # its resize + rescale/normalise on a whole uint8 batch, on the model's device


def fast_plan(image_processor: Any) -> dict[str, Any] | None:
    """The processor's steps when they are exactly squash-resize → rescale 1/255 → normalise (SigLIP/ConceptCLIP).

    Then preprocess_path_for() may run them on a whole uint8 batch itself: the same torchvision resize the processor
    calls (bit-identical), one normalisation pass instead of several (equal within 1e-6), on the model's device
    when that is a GPU. Any other step (crop, pad, shortest-edge resize, another rescale) keeps the processor.
    """
    ip = image_processor
    if not any(c.__name__ == "TorchvisionBackend" for c in type(ip).__mro__):
        return None
    h, w = size_value(getattr(ip, "size", None), "height"), size_value(getattr(ip, "size", None), "width")
    mean, std = getattr(ip, "image_mean", None), getattr(ip, "image_std", None)
    resample = getattr(ip, "resample", None)
    resample = getattr(resample, "value", resample)
    ok = (getattr(ip, "do_resize", False) and h and w and not getattr(ip, "do_center_crop", False)
          and not getattr(ip, "do_pad", False) and getattr(ip, "do_rescale", False)
          and abs(float(getattr(ip, "rescale_factor", 0)) - 1 / 255) < 1e-12 and getattr(ip, "do_normalize", False)
          and mean is not None and std is not None and len(mean) == 3 and len(std) == 3 and resample in (2, 3))
    if not ok:
        return None
    return {"size": (int(h), int(w)), "mean": [float(m) for m in mean], "std": [float(x) for x in std],
            "bicubic": resample == 3}


def _fast_uint8(arrays: list[np.ndarray], plan: dict[str, Any], device: torch.device) -> torch.Tensor:
    """plan's resize + normalise on a stacked uint8 batch (moved to ``device`` first: 1 byte per pixel to copy)."""
    from torchvision.transforms.v2 import functional as TF

    t = torch.from_numpy(np.stack(arrays)).to(device, non_blocking=True).permute(0, 3, 1, 2)
    if tuple(t.shape[-2:]) != plan["size"]:
        mode = TF.InterpolationMode.BICUBIC if plan["bicubic"] else TF.InterpolationMode.BILINEAR
        t = TF.resize(t, list(plan["size"]), interpolation=mode, antialias=True)  # uint8 in, uint8 out (rounded)
    out = torch.empty(t.shape, dtype=torch.float32, device=device)
    out.copy_(t)  # one contiguous NCHW float pass, then one fused multiply-add (see preprocess._normalise_uint8)
    scale = torch.tensor([1.0 / (255.0 * x) for x in plan["std"]], device=device).view(1, 3, 1, 1)
    shift = torch.tensor([-m / x for m, x in zip(plan["mean"], plan["std"], strict=True)],
                         device=device).view(1, 3, 1, 1)
    return out.mul_(scale).add_(shift)


def preprocess_path_for(image_processor: Any) -> str:
    """Which path run_image_processor takes for uint8 batches of this processor (recorded in provenance)."""
    return PATH_TORCH if fast_plan(image_processor) is not None else PATH_HF


def run_image_processor(image_processor: Any, images: ImageInput, device: torch.device) -> torch.Tensor:
    """Pixels [B,3,S,S] from the model's own image processor; float inputs get ``do_rescale=False`` per call.

    A same-shape uint8 batch for a squash-resize processor takes fast_plan()'s path (same values within 1e-6,
    on the model's device); ``input_data_format`` is passed explicitly (measured: same values, same speed).
    """
    arrays = to_hwc_arrays(images)
    plan = fast_plan(image_processor)
    if plan is not None and all(a.dtype == np.uint8 and a.shape == arrays[0].shape for a in arrays):
        return _fast_uint8(arrays, plan, torch.device(device))
    out: list[torch.Tensor | None] = [None] * len(arrays)
    for is_uint8 in (True, False):
        idx = [i for i, a in enumerate(arrays) if (a.dtype == np.uint8) == is_uint8]
        if not idx:
            continue
        extra = {} if is_uint8 else {"do_rescale": False}
        px = image_processor(images=[arrays[i] for i in idx], return_tensors="pt",
                             input_data_format="channels_last", **extra)["pixel_values"]
        for j, i in enumerate(idx):
            out[i] = px[j]
    return torch.stack(out).float().to(device)  # type: ignore[arg-type]


def run_tokenizer(tokenizer: Any, texts: Sequence[str] | str, max_length: int, padding: Padding,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ids and attention mask with truncation at an explicit ``max_length`` (BERT tokenizers have none set)."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise UsageError("no texts given")
    if padding not in ("longest", "max_length"):
        raise UsageError(f"padding must be 'longest' or 'max_length', got {padding!r}")
    enc = tokenizer(texts, padding=padding, truncation=True, max_length=int(max_length), return_tensors="pt",
                    return_attention_mask=True)
    ids = enc["input_ids"].to(device)
    mask = enc.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask.to(device)
    return ids, mask


def json_config(obj: Any) -> dict[str, Any]:
    """A processor/tokenizer config as plain JSON (via its own serialiser when it has one)."""
    if hasattr(obj, "to_json_string"):
        with contextlib.suppress(Exception):
            return json.loads(obj.to_json_string())
    if hasattr(obj, "to_dict"):
        with contextlib.suppress(Exception):
            return json.loads(json.dumps(obj.to_dict(), default=str))
    return {"class": type(obj).__name__}


def tokenizer_config(tokenizer: Any, max_length: int, padding: str) -> dict[str, Any]:
    """What shapes the ids: class, vocab size, pad id, lower-casing, the explicit max length and padding."""
    return {
        "class": type(tokenizer).__name__,
        "vocab_size": int(getattr(tokenizer, "vocab_size", 0) or 0),
        "pad_token_id": getattr(tokenizer, "pad_token_id", None),
        "do_lower_case": getattr(tokenizer, "do_lower_case", None),
        "max_length": int(max_length),
        "padding": padding,
        "truncation": True,
    }


def size_value(size: Any, key: str) -> int | None:
    """``size[key]`` for a dict, a transformers ``SizeDict`` (not a dict in 5.x) or None; None when unset."""
    if size is None:
        return None
    if isinstance(size, int):
        return size
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def image_side(image_processor: Any, fallback: int) -> int:
    """The square input side the processor produces (crop size, else fixed size, else ``fallback``)."""
    if getattr(image_processor, "do_center_crop", False):
        crop = size_value(getattr(image_processor, "crop_size", None), "height")
        if crop:
            return crop
    size = getattr(image_processor, "size", None)
    for key in ("height", "shortest_edge"):
        if value := size_value(size, key):
            return value
    return int(fallback)


# --- the hf backend ----------------------------------------------------------------------------------------------
class HFClipBackend(ClipBackend):
    """transformers CLIP (softmax, CLS prefix 1) or SigLIP (sigmoid + bias, no CLS) behind the backend protocol."""

    def __init__(self, model: nn.Module, image_processor: Any, tokenizer: Any, ref: hub.ModelRef,
                 device: torch.device, amp: bool | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.ref = ref
        cfg = model.config
        self.model_type = cfg.model_type
        self.name = f"hf:{ref.model_id}"
        vcfg, tcfg = cfg.vision_config, cfg.text_config
        self.image_size = image_side(image_processor, vcfg.image_size)
        if self.image_size != vcfg.image_size:
            raise XaiclipError(f"model {ref.model_id!r}: processor size {self.image_size} != vision config image_size "
                               f"{vcfg.image_size}; fix preprocessor_config.json")
        g = vcfg.image_size // vcfg.patch_size
        self.token_grid = (g, g)
        if self.model_type == "clip":
            self.embed_dim = int(cfg.projection_dim)
            self.num_prefix_tokens = 1
            self.score_family = "softmax"
            self.context_length = min(77, int(tcfg.max_position_embeddings))
            self.padding: Padding = "longest"
        else:
            self.embed_dim = int(vcfg.hidden_size)
            self.num_prefix_tokens = 0
            self.score_family = "sigmoid"
            # SigLIP pools the LAST position and was trained with max_length padding (64): keep that.
            self.context_length = int(tcfg.max_position_embeddings)
            self.padding = "max_length"
        self.amp = amp
        self._revision: str | None = None
        self.to(device)

    # facts / placement
    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> HFClipBackend:
        """Move the model; bf16 autocast is used on CUDA unless ``amp=False`` was given."""
        self._place(self.model, device, dtype)
        return self

    def vision_module(self) -> nn.Module:
        """``model.vision_model`` (CLIP: hook ``encoder.layers[-1].layer_norm1``; SigLIP: ``post_layernorm``)."""
        return self.model.vision_model

    # inputs
    def preprocess(self, images: ImageInput) -> torch.Tensor:
        """The model's image processor (CLIP: resize + centre crop; SigLIP: squash) → [B,3,S,S] on device."""
        return run_image_processor(self.image_processor, images, self.device)

    def tokenize(self, texts: Sequence[str], max_length: int | None = None,
                 padding: Padding | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """ids + mask, truncated at ``max_length`` (context length); SigLIP always pads to max_length."""
        ml = self.context_length if max_length is None else int(max_length)
        pad = "max_length" if self.model_type == "siglip" else (padding or self.padding)
        return run_tokenizer(self.tokenizer, texts, ml, pad, self.device)

    # features
    def encode_image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(normalised pooled projection [B,D], projected patch tokens [B,h*w,D]; CLIP's CLS removed)."""
        pooled, tokens = self._image_outputs(pixels)
        return F.normalize(pooled, dim=-1), tokens

    def encode_image_unnormalized(self, pixels: torch.Tensor) -> torch.Tensor:
        """The pooled projection [B,D] before normalisation (float32)."""
        return self._image_outputs(pixels)[0]

    def _image_outputs(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vm = self.model.vision_model
        with self.autocast():
            out = vm(pixel_values=pixels.to(self.device, self.dtype), return_dict=True)
            hidden = out.last_hidden_state
            if self.model_type == "clip":
                pooled = self.model.visual_projection(out.pooler_output)
                tokens = self.model.visual_projection(vm.post_layernorm(hidden[:, self.num_prefix_tokens:]))
            else:
                pooled = out.pooler_output  # MAP head; last_hidden_state already went through post_layernorm
                tokens = hidden
        return pooled.float(), tokens.float()

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(normalised text embedding [K,D], projected token states [K,L,D]). SigLIP ignores the mask (as trained)."""
        tm = self.model.text_model
        ids = ids.to(self.device)
        with self.autocast():
            if self.model_type == "clip":
                out = tm(input_ids=ids, attention_mask=mask.to(self.device), return_dict=True)
                pooled = self.model.text_projection(out.pooler_output)
                tokens = self.model.text_projection(out.last_hidden_state)
            else:
                out = tm(input_ids=ids, return_dict=True)
                pooled = out.pooler_output
                tokens = tm.head(out.last_hidden_state)
        return F.normalize(pooled.float(), dim=-1), tokens.float()

    # scalars
    @property
    def raw_logit_scale(self) -> float:
        """``model.logit_scale`` as stored (log space)."""
        return float(self.model.logit_scale.detach().float().reshape(-1)[0])

    @property
    def raw_logit_bias(self) -> float | None:
        """SigLIP's ``logit_bias``; None for CLIP."""
        b = getattr(self.model, "logit_bias", None)
        return None if b is None else float(b.detach().float().reshape(-1)[0])

    def provenance(self) -> dict[str, Any]:
        """Model id, resolved commit (or content hash of a local dir), versions, processor and tokenizer config."""
        if self._revision is None:
            self._revision = hub.resolved_revision(self.ref, self.model.config)
        return {
            "backend": "hf",
            "model_id": self.ref.model_id,
            "model_type": self.model_type,
            "requested_revision": self.ref.revision,
            "model_revision": self._revision,
            "local_dir": self.ref.local_dir is not None,
            "lib_versions": lib_versions(),
            "processor_config": json_config(self.image_processor),
            "preprocess_path": f"{preprocess_path_for(self.image_processor)} on {self.device.type}",
            "tokenizer_config": tokenizer_config(self.tokenizer, self.context_length, self.padding),
            **self.shape_facts(),
        }


def load_hf(model: str | None = None, revision: str | None = None, device: str = "auto", *,
            amp: bool | None = None, **kwargs: Any) -> HFClipBackend:
    """Load a transformers CLIP/SigLIP model + image processor + tokenizer (hub id or local dir) as a backend."""
    if not model:
        raise UsageError("the hf backend needs --model (a hub id such as openai/clip-vit-base-patch16, or a directory)")
    ref = hub.resolve_model_ref(model, revision)
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel, SiglipModel

    common = {"revision": ref.revision, "token": hub.hf_token(), "trust_remote_code": False}
    try:
        config = AutoConfig.from_pretrained(ref.source, **common)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line naming the model
        raise hub.load_error(exc, ref) from exc
    if config.model_type not in SUPPORTED_TYPES:
        raise UsageError(f"model {model!r} has model_type {config.model_type!r}; the hf backend supports "
                         f"{', '.join(SUPPORTED_TYPES)} (use --backend conceptclip for ConceptCLIP)")
    cls = CLIPModel if config.model_type == "clip" else SiglipModel
    try:
        net = cls.from_pretrained(ref.source, config=config, **common)
        image_processor = AutoImageProcessor.from_pretrained(ref.source, **common)
        tokenizer = AutoTokenizer.from_pretrained(ref.source, **common)
    except Exception as exc:  # noqa: BLE001
        raise hub.load_error(exc, ref) from exc
    dev = resolve_device(device)
    log.info("loaded hf %s model %s on %s", config.model_type, ref.model_id, dev)
    return HFClipBackend(net, image_processor, tokenizer, ref, dev, amp=amp)
