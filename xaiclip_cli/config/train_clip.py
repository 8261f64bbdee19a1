"""Settings of ``xaiclip train clip``: data, towers, contrastive loss, optimisation, run dir and export."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from xaiclip_cli.config.base import group_config
from xaiclip_cli.config.common import RuntimeSettings


def _mapping(value: Any) -> Any:
    """Accept a mapping given as a YAML/JSON string on the command line (``--image-kwargs '{depth: 4}'``)."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return {}
        parsed = yaml.safe_load(text)
        if not isinstance(parsed, dict):
            raise ValueError(f"expected a mapping like '{{key: value}}', got {value!r}")
        return parsed
    return value


# Without --config, `train clip` starts from the shipped toy-vit recipe (a 64-px ViT on the toy cells, minutes on a
# CPU) instead of the field defaults (a ResNet-18 at 224 px). Giving a key of one of these parts by flag or env
# drops that whole part of the recipe, so that e.g. --image-model resnet50 gets timm's own kwargs, not the ViT's.
EMBEDDED_DEFAULT = "toy-vit"
_RECIPE_PARTS = (
    {"image_model", "image_kwargs", "image_pool", "image_pool_heads", "image_pool_query", "pretrained",
     "pretrained_path"},
    {"data", "pairs", "prompts", "label_names", "templates", "path_key", "caption_key"},
    {"text_model", "text_config", "tokenizer", "text_pooling"},
)


class ClipTrainSettings(RuntimeSettings):
    """Contrastive image–text training of a timm image tower + Hugging Face text tower (``train clip``)."""

    group: ClassVar[str] = "train"
    model_config = group_config("train")

    @classmethod
    def default_layer(cls, given: set[str]) -> dict[str, Any]:
        """The shipped toy-vit recipe (configs/toy-vit.yaml) minus its run name and the parts the user set."""
        from xaiclip_cli.config.base import load_yaml_layer

        layer = dict(load_yaml_layer(EMBEDDED_DEFAULT, cls.group))
        layer.pop("name", None)  # a timestamped run name: two default runs never share a run dir
        for part in _RECIPE_PARTS:
            if part & given:
                for key in part:
                    layer.pop(key, None)
        return layer

    output_dir: Path = Field(Path("runs"), description="Folder that holds the run directories.")

    # --- data ---------------------------------------------------------------------------------------------------
    data: str = Field(
        "toycells",
        description="Labelled data: 'toycells' (synthetic, generated on demand), 'medmnist:<flag>' or a split CSV "
        "manifest (path,label,split); ignored when --pairs is given.",
    )
    data_root: Path | None = Field(None, description="Folder of the data files (toy cells cache, MedMNIST npz).")
    pairs: Path | None = Field(None, description="Image–text pairs CSV (path,caption[,split]); paths relative to it.")
    path_key: str = Field("path", description="Column of --pairs holding image paths.")
    caption_key: str = Field("caption", description="Column of --pairs holding captions.")
    prompts: Path | None = Field(
        None, description="Prompt-set YAML (labels, templates), e.g. configs/toycells.yaml; fills empty "
        "--label-names / --templates."
    )
    label_names: list[str] = Field(
        default_factory=list, description="Class names used in prompts (default: the prompt set, else the source's).",
        json_schema_extra={"cli_multiple": True},
    )
    templates: list[str] = Field(
        default_factory=list,
        description="Prompt templates with {label} (or {}); one drawn at random per training sample, all averaged "
        "for zero-shot evaluation. Default: the prompt set, else 'a photo of {label}'.",
        json_schema_extra={"cli_multiple": True},
    )
    max_train_samples: int | None = Field(None, ge=1, description="Use at most this many training samples.")
    max_eval_samples: int | None = Field(None, ge=1, description="Use at most this many val/test samples each.")

    # --- model --------------------------------------------------------------------------------------------------
    image_model: str = Field("resnet18", description="timm image tower name (resnet*, convnext_*, vit_*, swin_*, ...).")
    image_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra timm.create_model keyword arguments as a mapping (YAML/JSON)."
    )
    image_pool: Literal["head", "attn"] = Field(
        "head", description="Image pooling: the timm model's own head (avg pool for CNNs), or 'attn', a CLIP-style "
        "attention pool (learned position embedding, mean-token query) on a CNN's last feature map."
    )
    image_pool_heads: int | None = Field(
        None, ge=1, description="Heads of the 'attn' image pool (default: tower width / 64, as in CLIP's ResNets)."
    )
    image_pool_query: Literal["mean", "learned"] = Field(
        "mean", description="Query of the 'attn' image pool: the mean token (CLIP) or a learned token (MAP-style)."
    )
    pretrained: bool = Field(False, description="Load timm pretrained weights for the image tower (needs the hub).")
    pretrained_path: Path | None = Field(None, description="Local weights file for the image tower.")
    text_model: str | None = Field(
        None, description="Text tower: Hugging Face hub id or local dir (AutoModel); default: a BERT built from "
        "--text-config."
    )
    text_config: dict[str, Any] = Field(
        default_factory=lambda: {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
                                 "intermediate_size": 1024},
        description="BERT config overrides for a text tower trained from scratch (YAML/JSON mapping).",
    )
    tokenizer: str | None = Field(
        None, description="Tokenizer hub id or local dir (default: the text model's, else a WordPiece vocabulary "
        "built from the training texts)."
    )
    text_pooling: Literal["cls", "mean"] = Field("cls", description="Text pooling: [CLS] state or masked mean.")
    context_length: int = Field(77, ge=4, le=512, description="Text context length (tokens).")
    embed_dim: int = Field(512, ge=1, description="Joint embedding size (bias-free projections).")
    logit_bias: float | None = Field(None, description="Initial logit bias (omit for a plain CLIP without bias).")
    image_size: int = Field(224, ge=8, description="Input image side in pixels (squash resize).")
    in_chans: int = Field(3, ge=1, le=4, description="Image tower input channels (grey data is repeated to 3).")
    mean: list[float] = Field(default_factory=lambda: [0.5, 0.5, 0.5], description="Normalisation mean.")
    std: list[float] = Field(default_factory=lambda: [0.5, 0.5, 0.5], description="Normalisation std.")
    lock_image: bool = Field(False, description="Freeze the image tower (train projections, an attn pool + text only).")
    lock_text: bool = Field(False, description="Freeze the text tower.")

    # --- loss and optimisation --------------------------------------------------------------------------------
    label_aware: bool = Field(
        False, description="Same-label pairs in a batch are soft positives (else they are false negatives)."
    )
    augment: bool = Field(False, description="Random horizontal/vertical flips of training images.")
    augment_shift: float = Field(
        0.0, ge=0, lt=0.5, description="Random translation of training images by up to this fraction of the side "
        "(reflect padding; 0 = off)."
    )
    epochs: int = Field(10, ge=1, description="Training epochs.")
    batch_size: int = Field(64, ge=2, description="Pairs per batch (the contrastive B×B).")
    learning_rate: float = Field(5e-4, gt=0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay (not on bias, norms, logit scale).")
    warmup_epochs: int = Field(1, ge=0, description="Linear warmup epochs before the cosine decay.")
    min_lr: float = Field(1e-6, ge=0, description="Final learning rate of the cosine schedule.")
    clip_grad: float | None = Field(1.0, gt=0, description="Gradient-norm clipping (omit to disable).")
    amp: bool = Field(False, description="bf16 autocast on CUDA (ignored on CPU).")
    select_metric: Literal["auto", "val_zs_auc", "val_zs_acc", "val_mean_r1"] = Field(
        "auto", description="Metric that picks best.pt (auto: zero-shot AUC with labels, else mean R@1)."
    )
    early_stop_patience: int = Field(0, ge=0, description="Stop after this many epochs without improvement (0 = off).")

    # --- run dir and export -----------------------------------------------------------------------------------
    name: str | None = Field(None, description="Run name under --output-dir (default: <time>-clip-<image model>).")
    resume: bool = Field(False, description="Continue the run in --output-dir/--name from checkpoints/last.pt.")
    export_to: Path | None = Field(
        None, description="Also copy the run's export/ here (e.g. xaiclip_cli/resources/toy/toy-vit)."
    )
    overwrite: bool = Field(False, description="Allow replacing an existing --export-to folder.")

    @field_validator("image_kwargs", "text_config", mode="before")
    @classmethod
    def _parse_mapping(cls, value: Any) -> Any:
        return _mapping(value)

    @model_validator(mode="after")
    def _check(self) -> ClipTrainSettings:
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std need the same number of values")
        if len(self.gpus) > 1:
            raise ValueError("train clip runs one process; use torchrun for several GPUs")
        return self
