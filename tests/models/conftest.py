"""Backend fixtures for tests/models: tiny models built offline from configs, loaded through the real loaders.

Every fixture named in ``BACKEND_FIXTURES`` is session-scoped, returns a ready ``ClipBackend`` on the CPU, and is run
through the shared contract in ``test_contract.py``. To add a backend: write a session fixture below (or in a
section of its own) and append its name to ``BACKEND_FIXTURES``.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest

from .conceptclip_replica import build_replica, write_vocab

BACKEND_FIXTURES = ["conceptclip_backend", "hf_clip_backend", "hf_siglip_backend"]


# --- ConceptCLIP replica (remote code, conceptclip.md §5) ----------------------------------------------------------
@pytest.fixture(scope="session")
def conceptclip_replica_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ConceptCLIP remote-code directory (unique name, so its module cache under HF_HOME is its own)."""
    return build_replica(tmp_path_factory.mktemp("conceptclip_replica"), seed=0)


@pytest.fixture(scope="session")
def conceptclip_backend(conceptclip_replica_dir: Path):
    """The replica loaded by ``load_conceptclip`` exactly as the real model is."""
    from xaiclip_cli.models.conceptclip import load_conceptclip

    return load_conceptclip(str(conceptclip_replica_dir), device="cpu", trust_remote_code=True)


# --- transformers CLIP / SigLIP ----------------------------------------------------------------------------------
def clip_tokenizer():
    """A tiny CLIP BPE tokenizer: letters, letters + '</w>', a few merges, start/end tokens (end is the top id)."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for c in string.ascii_lowercase:
        vocab[c] = len(vocab)
    for c in string.ascii_lowercase:
        vocab[c + "</w>"] = len(vocab)
    merges = [("c", "e"), ("ce", "l"), ("cel", "l</w>"), ("o", "f</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges)


def build_tiny_clip(directory: Path, seed: int = 0) -> Path:
    """CLIPModel (56 px, patch 14, width 32, projection 24) + CLIPImageProcessor + tokenizer, saved to a dir."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tok = clip_tokenizer()
    text = {"vocab_size": len(tok), "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 77, "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    vision = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
              "image_size": 56, "patch_size": 14}
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).eval()
    model.save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def build_tiny_siglip(directory: Path, seed: int = 0) -> Path:
    """SiglipModel (56 px, patch 14, width 32, text context 64) + SiglipImageProcessor + a BERT tokenizer.

    A BERT WordPiece tokenizer stands in for SigLIP's SentencePiece one (needs the sentencepiece package).
    """
    import torch
    from transformers import BertTokenizer, SiglipConfig, SiglipImageProcessor, SiglipModel

    directory.mkdir(parents=True, exist_ok=True)
    tok = BertTokenizer(str(write_vocab(directory / "vocab.txt")), do_lower_case=True)
    text = {"vocab_size": len(tok), "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 64, "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.cls_token_id, "eos_token_id": tok.sep_token_id}
    vision = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
              "image_size": 56, "patch_size": 14}
    torch.manual_seed(seed)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    with torch.no_grad():  # a non-trivial scale and bias, so that formula checks see them
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-3.5)
    model.save_pretrained(directory)
    SiglipImageProcessor(size={"height": 56, "width": 56}, image_mean=[0.5] * 3,
                         image_std=[0.5] * 3).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def hf_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny transformers CLIP directory."""
    return build_tiny_clip(tmp_path_factory.mktemp("hf_clip"))


@pytest.fixture(scope="session")
def hf_siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny transformers SigLIP directory."""
    return build_tiny_siglip(tmp_path_factory.mktemp("hf_siglip"))


@pytest.fixture(scope="session")
def hf_clip_backend(hf_clip_dir: Path):
    """The tiny CLIP loaded by ``load_hf``."""
    from xaiclip_cli.models.hf import load_hf

    return load_hf(str(hf_clip_dir), device="cpu")


@pytest.fixture(scope="session")
def hf_siglip_backend(hf_siglip_dir: Path):
    """The tiny SigLIP loaded by ``load_hf``."""
    from xaiclip_cli.models.hf import load_hf

    return load_hf(str(hf_siglip_dir), device="cpu")


# --- checkpoint (xaiclip train clip export) and toy backends --------------------------------------------------------
BACKEND_FIXTURES += ["toy_vit_backend", "toy_cnn_backend", "checkpoint_backend"]


@pytest.fixture(scope="session")
def tiny_export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random ViT-MAP CLIP export written by ``save_export``."""
    from .tiny_export import build_tiny_export

    return build_tiny_export(tmp_path_factory.mktemp("clip_export") / "export")


@pytest.fixture(scope="session")
def checkpoint_backend(tiny_export_dir: Path):
    """The tiny export loaded by ``load_checkpoint_backend``."""
    from xaiclip_cli.models.checkpoint import load_checkpoint_backend

    return load_checkpoint_backend(str(tiny_export_dir), device="cpu")


@pytest.fixture(scope="session")
def toy_vit_backend():
    """The shipped toy-vit model."""
    from xaiclip_cli.models.toy import load_toy

    return load_toy("toy-vit", device="cpu")


@pytest.fixture(scope="session")
def toy_cnn_backend():
    """The shipped toy-cnn model."""
    from xaiclip_cli.models.toy import load_toy

    return load_toy("toy-cnn", device="cpu")
