"""Settings of the `cam` group (cam run, cam layers, cam methods): heatmaps of image-text alignment."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from xaiclip_cli.config.base import group_config
from xaiclip_cli.config.common import ImageFileSettings, ModelSelection, RuntimeSettings

CamMethod = Literal[
    "gradcam", "hirescam", "layercam", "xgradcam", "gradcam++", "eigencam", "scorecam", "gscorecam", "legrad",
]


class CamSettings(ModelSelection, ImageFileSettings, RuntimeSettings):
    """Which model, images, texts, method and layer; how maps are scored, normalised and drawn."""

    group: ClassVar[str] = "cam"
    model_config = group_config("cam")

    # --- model (legacy custom-CLIP flags kept) ---
    checkpoint: Path | None = Field(
        None, description="Custom CLIP checkpoint (file or `xaiclip train clip` export dir); implies --backend "
        "checkpoint.", json_schema_extra={"cli_aliases": ["--model-path"]},
    )
    image_encoder: str | None = Field(
        None, description="Image tower when the checkpoint does not record it: resnet18..152, starnet_s1..s4, "
        "convnext-tiny..large, efficientnet-b0..b7, vit.",
    )
    text_encoder: str = Field(
        "bert-base-chinese", description="Text tower of a custom checkpoint (must match training)."
    )
    embed_dim: int = Field(512, ge=1, description="Joint embedding size of a custom checkpoint.")
    img_size: int | None = Field(None, ge=8, description="Input size of a custom checkpoint (default: the model's).")
    # --- texts and targets ---
    text: list[str] = Field(
        default_factory=list,
        description="A text prompt (repeat the flag for several). With --dataset and no texts: one per class.",
        json_schema_extra={"cli_multiple": True, "cli_aliases": ["--class-texts"]},
    )
    texts_file: Path | None = Field(
        None, description="JSON file {name: description} (the description is encoded, the name labels plots) or a "
        "list of prompts.", json_schema_extra={"cli_aliases": ["--class-texts-file"]},
    )
    target: str = Field(
        "best", description="Text to explain: best (highest logit per image), an index, a text name, or all.",
        json_schema_extra={"cli_aliases": ["--target-text-idx"]},
    )
    # --- images ---
    images: list[Path] = Field(
        default_factory=list, description="Image files, folders or globs (repeat the flag for several).",
        json_schema_extra={"cli_multiple": True, "cli_aliases": ["--image-path"]},
    )
    recursive: bool = Field(False, description="Walk folders given to --images recursively.")
    dataset: str | None = Field(
        None, description="Dataset instead of --images: toycells, medmnist:<flag>, folder:<dir> or csv:<file>."
    )
    split: Literal["train", "val", "test"] = Field("test", description="Split of --dataset to explain.")
    limit: int | None = Field(None, ge=1, description="Explain at most this many images (after sorting).")
    # --- method ---
    method: CamMethod = Field("gradcam", description="CAM method (see `xaiclip cam methods`).")
    target_layer: str | None = Field(
        None, description="Dotted module name of the image tower (default: auto-detected; see `xaiclip cam layers`)."
    )
    score: Literal["cosine", "logit", "softmax", "sigmoid", "dot"] = Field(
        "logit", description="Score explained: cosine, logit (scaled, + bias), softmax over texts, sigmoid (SigLIP), "
        "dot (unnormalised image embedding · text: same ranking as cosine; Grad-CAM = CAM on average-pooled CNNs).",
    )
    batch_size: int = Field(8, ge=1, description="Images per batched forward/backward pass.")
    score_batch: int = Field(16, ge=1, description="Masked inputs per forward in scorecam/gscorecam.")
    topk: int = Field(300, ge=1, description="gscorecam: channels kept (clipped to the layer's channels).")
    gscore_unselected: Literal["ref", "exclude"] = Field(
        "ref", description="gscorecam: unscored channels keep softmax weight e^0/Z (ref, as the paper code) or 0."
    )
    legrad_layers: int = Field(
        0, ge=0, description="legrad: sum the maps of the last K transformer blocks (0 = all blocks)."
    )
    # --- outputs ---
    output_dir: Path = Field(
        Path("clip_gradcam_results"), description="Folder for the outputs."
    )
    output_name: str | None = Field(None, description="Base name of the outputs (only for a single image).")
    normalise: Literal["minmax", "none"] = Field("minmax", description="Display normalisation of the PNG maps.")
    align: Literal["receptive-field", "half-pixel"] = Field(
        "receptive-field",
        description="Where a CNN map's cells land on the image: at their measured receptive-field centres, or "
        "half-pixel as pytorch-grad-cam/cv2.resize (ViT token grids are half-pixel either way).",
    )
    colormap: str = Field("jet", description="Matplotlib colormap of heatmaps and overlays.")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="Heatmap opacity in overlays.")
    figure: bool = Field(True, description="Write the four-panel <name>.png figure.")
    raw: bool = Field(True, description="Write <name>.npz with the raw (pre-ReLU) and upsampled maps.")
    overwrite: bool = Field(False, description="Recompute images whose sidecar exists (default: skip them).")
    cpu: bool = Field(False, description="Force the CPU (legacy; same as --device cpu).")

    @field_validator("output_name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or "/" in value or "\\" in value):
            raise ValueError("must be a plain file name without folders")
        return value

    @model_validator(mode="after")
    def _one_text_source(self) -> CamSettings:
        if self.text and self.texts_file is not None:
            raise ValueError("give either --text or --texts-file, not both")
        if self.images and self.dataset:
            raise ValueError("give either --images or --dataset, not both")
        return self
