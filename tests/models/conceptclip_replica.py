"""Build a local remote-code ConceptCLIP replica (conceptclip.md §5, variant a: timm SigLIP ViT + BERT).

The directory is loaded by the production loader's exact calls (``AutoModel``/``AutoProcessor.from_pretrained(dir,
trust_remote_code=True)``). ``real_size=True`` gives the real model's shapes (384 px, 729 tokens, width 1152,
27 blocks, PubMedBERT-size text) with random weights, for GPU benchmarks; tests use the tiny default.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SRC_DIR = Path(__file__).resolve().parent / "replica_src"
_PKG = "xaiclip_conceptclip_replica_src"

WORDS = [
    "a", "photo", "of", "the", "an", "cell", "cells", "blood", "with", "in", "and", "is", "image", "microscopy",
    "stained", "nucleus", "large", "small", "round", "lobed", "granules", "purple", "red", "pink", "dark",
    "light", "normal", "abnormal", "neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "platelet",
    "erythroblast",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

TINY = {
    "embed_dim": 32, "image_size": 56, "patch_size": 14, "vision_width": 32, "vision_depth": 2,
    "vision_heads": 2, "vision_mlp_ratio": 2.0,
}
# vit_so400m_patch14_siglip_384 and PubMedBERT-base (conceptclip.md §1).
REAL = {
    "embed_dim": 1152, "image_size": 384, "patch_size": 14, "vision_width": 1152, "vision_depth": 27,
    "vision_heads": 16, "vision_mlp_ratio": 3.7362,
}
REAL_TEXT = {
    "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "max_position_embeddings": 512,
}


def _templates():
    """Import the template package under a private name so save_pretrained copies its files (relative imports)."""
    if _PKG not in sys.modules:
        spec = importlib.util.spec_from_file_location(_PKG, SRC_DIR / "__init__.py",
                                                      submodule_search_locations=[str(SRC_DIR)])
        pkg = importlib.util.module_from_spec(spec)
        sys.modules[_PKG] = pkg
        spec.loader.exec_module(pkg)
    cfg = importlib.import_module(f"{_PKG}.configuration_conceptclip_replica")
    mdl = importlib.import_module(f"{_PKG}.modeling_conceptclip_replica")
    prc = importlib.import_module(f"{_PKG}.processing_conceptclip_replica")
    return cfg.ConceptCLIPReplicaConfig, mdl.ConceptCLIPReplica, prc.ConceptCLIPReplicaProcessor


def write_vocab(path: Path) -> Path:
    """vocab.txt with unique lines, [PAD] first (id 0)."""
    path.write_text("\n".join(SPECIALS + WORDS) + "\n")
    return path


# The real model's input and output shapes (384 px, 729 tokens, width 1152) around a small trunk: what the store's
# pipeline sees (pixels in, [729, 1152] fp16 rows out) at a CPU-friendly forward cost, for store benchmarks.
REAL_SHAPES = {**TINY, "embed_dim": 1152, "image_size": 384, "patch_size": 14, "vision_width": 64}


def build_replica(directory: str | Path, *, real_size: bool = False, seed: int = 0,
                  sizes: dict | None = None) -> Path:
    """Write the replica (remote code, config, weights, processor, tokenizer) into ``directory``; return it.

    ``sizes`` overrides the vision sizes (e.g. REAL_SHAPES); the text tower stays tiny unless ``real_size``.
    """
    import torch
    from transformers import BertTokenizer, SiglipImageProcessor

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_cls, model_cls, processor_cls = _templates()

    vocab = write_vocab(directory / "vocab.txt")
    text_cfg = dict(REAL_TEXT) if real_size else {
        "vocab_size": len(SPECIALS) + len(WORDS), "hidden_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 77,
    }
    sizes = dict(sizes) if sizes is not None else (REAL if real_size else TINY)
    torch.manual_seed(seed)
    config = config_cls(text_cfg=text_cfg, text_pad_id=0, **sizes)
    model = model_cls(config).eval()

    # transformers 5: BertTokenizer(vocab_file=...) silently ignores the file; pass the path positionally.
    tokenizer = BertTokenizer(str(vocab), do_lower_case=True)
    side = sizes["image_size"]
    image_processor = SiglipImageProcessor(size={"height": side, "width": side}, resample=3,
                                           image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer)

    config_cls.register_for_auto_class()
    model_cls.register_for_auto_class("AutoModel")
    processor_cls.register_for_auto_class("AutoProcessor")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


if __name__ == "__main__":  # pragma: no cover - manual use: python tests/models/conceptclip_replica.py DIR [--real]
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("directory")
    ap.add_argument("--real-size", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(build_replica(a.directory, real_size=a.real_size, seed=a.seed))
