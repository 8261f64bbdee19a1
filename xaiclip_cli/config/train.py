"""Settings of the `xaiclip train` group, in the sections of the reference default_config.yaml (data, model, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, Optional

from pydantic import Field, field_validator, model_validator

from xaiclip_cli.config.base import Section, XaiclipSettings, group_config
from xaiclip_cli.config.common import check_device


class DataSettings(Section):
    """Where the images are and how they are split and sized."""

    root_dir: Optional[Path] = Field(
        None, description="Root of the patient tree <root>/<hospital>/[fold*/]grade<k>/<patient>/<modality>/*.png."
    )
    modalities: list[str] = Field(["A", "P"], description="Modalities every kept patient must have (in fusion order).")
    internal_hospital: str = Field("JM", description="Hospital split into train/val; all other hospitals are test.")
    train_ratio: float = Field(0.7, gt=0.0, lt=1.0, description="Share of internal patients in train (rest: val).")
    split_dir: Path = Field(Path("data/splits"), description="Folder of the split CSVs that fit/extract read.")
    modality: Optional[str] = Field(None, description="Modality to train on / extract (split CSV data).")
    source: str = Field(
        "splits",
        description="Data: 'splits' (CSVs in --split-dir), 'medmnist:<flag>', 'toycells', npz:/folder:/csv:<path>.",
        json_schema_extra={"cli_name": "data"},
    )
    size: Optional[int] = Field(None, description="MedMNIST image size 28|64|128|224 (file <flag>_<size>.npz).")
    data_root: Optional[Path] = Field(None, description="Folder holding the MedMNIST npz files.")
    image_size: int = Field(224, ge=8, description="Model input size (images are resized to it).")
    in_chans: int = Field(1, ge=1, description="Model input channels (grey images are repeated for 3).")
    num_workers: int = Field(8, ge=0, description="DataLoader worker processes for image files (0 = main process).")

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str) -> str:
        v = value.strip()
        kind, sep, arg = v.partition(":")
        if v in ("splits", "toycells") or (sep and arg and kind in ("medmnist", "toycells", "npz", "folder", "csv")):
            return v
        raise ValueError(f"unknown data {value!r} (use splits, toycells, medmnist:<flag>, npz:, folder: or csv:)")


class ModelSettings(Section):
    """Which timm classifier, its weights and which stages stay frozen."""

    name: str = Field(
        "resnet18", description="timm model name (resnet18, resnet50, swin_t = swin_tiny_patch4_window7_224).",
        json_schema_extra={"cli_name": "model"},
    )
    pretrained: Literal["auto", "true", "false"] = Field(
        "auto", description="ImageNet weights: true must load, auto loads when possible, false starts from scratch."
    )
    pretrained_path: Optional[Path] = Field(None, description="Local weights file for the pretrained model.")
    num_classes: Optional[int] = Field(None, ge=1, description="Classes (default: from the data).")
    freeze_stages: int = Field(0, ge=0, description="Freeze the stem and the first k stages (with BN statistics).")
    checkpoint: Optional[Path] = Field(None, description="A best.pt/last.pt to extract features with (else --run).")
    cifar_stem: bool = Field(
        False, description="CIFAR-style ResNet stem (3x3 stride-1 conv, no max-pool) for small images such as 28 px."
    )

    @field_validator("pretrained", mode="before")
    @classmethod
    def _bool_words(cls, value: object) -> object:
        if isinstance(value, bool):
            return "true" if value else "false"
        return value


class TrainingSettings(Section):
    """Optimisation: batch, epochs, loss, optimiser, scheduler, early stopping, precision, device."""

    batch_size: int = Field(64, ge=1, description="Images per optimisation step (per process under DDP).")
    epochs: int = Field(100, ge=1, description="Training epochs.")
    learning_rate: float = Field(1e-4, gt=0.0, description="Base learning rate.",
                                 json_schema_extra={"cli_aliases": ["--lr"]})
    weight_decay: float = Field(1e-4, ge=0.0, description="Weight decay (not applied to bias and norm weights).")
    momentum: float = Field(0.9, ge=0.0, description="SGD momentum.")
    loss_type: Literal["ce", "focal", "asymmetric", "bce"] = Field(
        "ce", description="Loss: ce, focal, asymmetric (timm ASL) or bce (multi-label; default for multi-label data)."
    )
    focal_gamma: float = Field(2.0, ge=0.0, description="Focal loss focusing parameter gamma.")
    focal_alpha: Optional[float] = Field(None, ge=0.0, le=1.0, description="Focal alpha for the positive class (off).")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="Label smoothing for ce.")
    class_weights: list[float] = Field(default_factory=list, description="Per-class ce weights, e.g. 1,2 (off).")
    optimizer: Literal["adamw", "adam", "sgd"] = Field("adamw", description="Optimiser (timm create_optimizer_v2).")
    scheduler: Literal["cosine", "step", "multistep", "plateau", "none"] = Field(
        "cosine", description="LR schedule per epoch (timm create_scheduler_v2)."
    )
    warmup_epochs: int = Field(0, ge=0, description="Linear warm-up epochs.")
    decay_epochs: float = Field(30, gt=0, description="Step schedule: decay every N epochs.")
    decay_milestones: list[int] = Field(
        [50, 75], description="Multistep: the LR is multiplied by --decay-rate after this many epochs."
    )
    decay_rate: float = Field(0.1, gt=0.0, description="LR factor at each decay.")
    patience_epochs: int = Field(10, ge=0, description="Plateau schedule patience (epochs).")
    early_stop_enabled: bool = Field(
        True, description="Stop when the selection metric has not improved for --early-stop-patience epochs.",
        json_schema_extra={"cli_name": "early-stop", "cli_aliases": ["--enable-early-stop/--disable-early-stop"]},
    )
    early_stop_patience: int = Field(10, ge=1, description="Epochs without improvement before stopping.")
    early_stop_min_delta: float = Field(0.0, ge=0.0, description="Smallest change that counts as an improvement.")
    select_metric: Literal["val_auc", "val_patient_auc"] = Field("val_auc", description="Metric that picks best.pt.")
    device: str = Field("auto", description="Device: auto (cuda when available), cpu, cuda, cuda:N or mps.")
    threads: Optional[int] = Field(None, ge=1, description="CPU threads for torch (default: torch's choice).")
    amp: Literal["none", "bf16", "fp16"] = Field("none", description="Mixed precision (GradScaler only for fp16).")
    channels_last: bool = Field(False, description="Use channels-last memory format.")
    model_ema: bool = Field(False, description="Keep an EMA of the weights (timm ModelEmaV3), logged as val_ema/*.")
    model_ema_decay: float = Field(0.9998, gt=0.0, lt=1.0, description="EMA decay.")
    grad_accum_steps: int = Field(1, ge=1, description="Batches accumulated per optimiser step.")
    clip_grad: Optional[float] = Field(None, gt=0.0, description="Clip the gradient norm to this value (off).")
    sync_bn: bool = Field(False, description="Synchronise BatchNorm across DDP processes.")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        return check_device(value)


class AugmentationSettings(Section):
    """Training augmentation and normalisation."""

    hflip: float = Field(0.5, ge=0.0, le=1.0, description="Horizontal flip probability.")
    rotation: float = Field(15.0, ge=0.0, le=180.0, description="Random rotation range in degrees (+-).")
    mean: list[float] = Field([0.5], description="Normalisation mean (one value or one per channel).")
    std: list[float] = Field([0.5], description="Normalisation std (one value or one per channel).")
    interpolation: Literal["bilinear", "nearest"] = Field(
        "bilinear", description="How images are resized to --image-size (MedMNIST '(224)' upsamples with nearest)."
    )


class ExperimentSettings(Section):
    """Run naming, seed, outputs, checkpoints, logging, resume."""

    name: Optional[str] = Field(None, description="Run name (default <time>-<model>-<modality>-lr<lr>-b<bs>).",
                                json_schema_extra={"cli_name": "name"})
    seed: int = Field(42, description="Random seed (Python, NumPy, torch; DDP adds the rank).")
    output_dir: Path = Field(Path("runs"), description="Folder that holds run directories.")
    save_best_only: bool = Field(True, description="Keep only last.pt and best.pt (no per-epoch history).")
    checkpoint_hist: int = Field(0, ge=0, description="Per-epoch checkpoints to keep (ignored with save_best_only).")
    log_interval: int = Field(10, ge=1, description="Log the training loss every N steps.")
    resume: Optional[Path] = Field(None, description="Continue a run: its directory or a checkpoint (last.pt).")
    report_to: Literal["tensorboard", "none"] = Field("tensorboard", description="TensorBoard logging when importable.")
    best_hparams_dir: Optional[Path] = Field(
        Path("config/best_hparams"), description="Where <model>_<modality>.yaml keeps the best settings (empty: off)."
    )
    overwrite: bool = Field(False, description="Replace existing outputs.")
    protocol: Literal["none", "medmnist"] = Field(
        "none", description="medmnist: the MedMNIST v2 recipe (Adam 1e-3, batch 128, 100 epochs, x0.1 at 50 and 75, "
        "RGB, no pretraining; CIFAR stem below 64 px) for settings not given explicitly.",
    )
    repeats: int = Field(1, ge=1, description="Train N times (seed, seed+1, ...) and report the mean (medmnist: 3).")

    @field_validator("best_hparams_dir", "resume", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        # Path("") would be "." (the current folder): an empty string or "none" means off.
        if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
            return None
        return value


class SplitSettings(Section):
    """Outputs of `train split`."""

    output_dir: Path = Field(Path("data/splits"), description="Folder for the split CSVs and split_summary.json.")
    log_dir: Optional[Path] = Field(None, description="Folder for the split log (default: the output folder).")


class ExtractSettings(Section):
    """Inputs and outputs of `train extract`."""

    run: Optional[Path] = Field(None, description="Run directory whose checkpoints/best.pt is used.")
    output_dir: Path = Field(Path("data/features"), description="Folder for per-patient features and info CSVs.")
    align: bool = Field(False, description="After extracting, inner-join the modalities per split (aligned.csv).")


class FuseSettings(Section):
    """Inputs, model and outputs of `train fuse`."""

    feature_dir: Path = Field(Path("data/features"), description="Folder written by `train extract`.")
    output_dir: Path = Field(Path("runs/fusion"), description="Folder for fusion metrics, predictions and model.")
    use_aligned: bool = Field(True, description="Use aligned/aligned.csv of each split (else join the feature CSVs).")
    standardize: bool = Field(True, description="StandardScaler fitted on train (--no-standardize = plain reference).")
    c: float = Field(1.0, gt=0.0, description="Inverse L2 strength of the logistic regression.",
                     json_schema_extra={"cli_name": "C"})
    c_grid: list[float] = Field(default_factory=list, description="Pick C by val AUC among these, e.g. 0.01,0.1,1,10.")
    max_iter: int = Field(1000, ge=1, description="Logistic regression iterations.")
    random_state: int = Field(42, description="Logistic regression random state.")


class ShowSettings(Section):
    """What `train show` reads."""

    run_dir: Optional[Path] = Field(None, description="Run directory to summarise.",
                                    json_schema_extra={"cli_name": "run"})
    plots: bool = Field(True, description="Write loss/AUC curve PNGs into the run directory.")


class ToyTreeSettings(Section):
    """What `train toy-tree` writes: a synthetic patient tree derived from the shipped toy cells."""

    output_dir: Path = Field(Path("data/toy_tree"), description="Folder for the synthetic patient tree.")
    patients: int = Field(32, ge=16, description="Patients in all hospitals (two thirds in the internal JM).")
    seed: int = Field(0, description="Seed of the synthetic tree (same seed, same files).")


class TrainSettings(XaiclipSettings):
    """Settings of `xaiclip train` (split, fit, extract, fuse, show, pipeline)."""

    group: ClassVar[str] = "train"
    model_config = group_config("train")

    data: DataSettings = Field(default_factory=DataSettings, description="Data")
    model: ModelSettings = Field(default_factory=ModelSettings, description="Model")
    training: TrainingSettings = Field(default_factory=TrainingSettings, description="Training")
    augmentation: AugmentationSettings = Field(default_factory=AugmentationSettings, description="Augmentation")
    experiment: ExperimentSettings = Field(default_factory=ExperimentSettings, description="Experiment")
    split: SplitSettings = Field(default_factory=SplitSettings, description="Split outputs")
    extract: ExtractSettings = Field(default_factory=ExtractSettings, description="Extraction")
    fuse: FuseSettings = Field(default_factory=FuseSettings, description="Fusion")
    show: ShowSettings = Field(default_factory=ShowSettings, description="Show")
    toy_tree: ToyTreeSettings = Field(default_factory=ToyTreeSettings, description="Toy patient tree")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Logging level on stderr.")

    @model_validator(mode="after")
    def _check_norm(self) -> TrainSettings:
        for key in ("mean", "std"):
            values = getattr(self.augmentation, key)
            if len(values) not in (1, self.data.in_chans):
                raise ValueError(f"augmentation.{key} needs 1 or in_chans={self.data.in_chans} values")
        if any(s <= 0 for s in self.augmentation.std):
            raise ValueError("augmentation.std values must be > 0")
        return self
