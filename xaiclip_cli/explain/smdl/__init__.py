"""Submodular subset attribution (SMDL, "Less is More", ICLR 2024; LIMA bidirectional search) for CLIPs/classifiers."""

from __future__ import annotations

from xaiclip_cli.explain.smdl.pipeline import attribute_image, prepare, read_image_bgr
from xaiclip_cli.explain.smdl.regions import auto_region_size, divide, elements
from xaiclip_cli.explain.smdl.results import (
    export_names,
    export_names_by_target,
    export_reference,
    load_npz,
    recorded_auc,
    save_npz,
)
from xaiclip_cli.explain.smdl.scorer import ClassifierScorer, ClipScorer, text_prototypes
from xaiclip_cli.explain.smdl.search import SmdlConfig, SmdlResult, attribute

__all__ = [
    "ClassifierScorer",
    "ClipScorer",
    "SmdlConfig",
    "SmdlResult",
    "attribute",
    "attribute_image",
    "auto_region_size",
    "divide",
    "elements",
    "export_names",
    "export_names_by_target",
    "export_reference",
    "load_npz",
    "prepare",
    "read_image_bgr",
    "recorded_auc",
    "save_npz",
    "text_prototypes",
]
