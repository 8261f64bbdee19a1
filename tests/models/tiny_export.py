"""Build a tiny random ClipModel export (the ``checkpoint`` backend's format) for tests, offline, in a second."""

from __future__ import annotations

from pathlib import Path

import torch

TINY_TEXTS = ["a photo of a cell", "a lymphocyte", "a neutrophil", "an eosinophil", "a cell with granules"]
TINY_VIT = {"name": "vit_base_patch16_224", "image_size": 32,
            "kwargs": {"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2, "class_token": False,
                       "global_pool": "map"}}
TINY_CNN = {"name": "resnet10t", "image_size": 32,
            "kwargs": {"channels": [8, 8, 16, 16], "stem_width": 8, "output_stride": 8}}


def build_tiny_export(directory: Path, image: dict | None = None, seed: int = 0, logit_bias: float | None = None,
                      context_length: int = 16) -> Path:
    """Write json + model.safetensors + tokenizer of a random tiny CLIP (ViT-MAP by default) to ``directory``."""
    from xaiclip_cli.models.checkpoint import export_meta, save_export
    from xaiclip_cli.models.clip_model import ClipModel
    from xaiclip_cli.models.text_tower import build_tokenizer

    tok = build_tokenizer(TINY_TEXTS, context_length)
    spec = {"image_tower": dict(image or TINY_VIT), "embed_dim": 8,
            "text_tower": {"config": {"model_type": "bert", "vocab_size": len(tok), "hidden_size": 16,
                                      "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                                      "max_position_embeddings": context_length}, "pooling": "cls"}}
    if logit_bias is not None:
        spec["logit_bias_init"] = logit_bias
    torch.manual_seed(seed)
    model = ClipModel(spec).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.5)  # not the init value, so a reload that ignores the weights is caught
    meta = export_meta(model, image_size=32, in_chans=3, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3],
                       context_length=context_length, class_names=["lymphocyte", "neutrophil"],
                       templates=["a {label}"], name="tiny")
    return save_export(model, tok, meta, directory)
