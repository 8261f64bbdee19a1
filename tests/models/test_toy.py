"""The shipped toy models: load offline, ConceptCLIP-like / ResNet shapes, and classify fresh toy cells zero-shot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xaiclip_cli.errors import UsageError
from xaiclip_cli.models.checkpoint import WEIGHTS_FILE, sha256_file
from xaiclip_cli.models.registry import load_backend
from xaiclip_cli.models.toy import TOY_MODELS, load_toy, toy_dir


@pytest.fixture(scope="module")
def fresh_cells() -> tuple[np.ndarray, np.ndarray]:
    """40 toy cells never seen in training (a seed other than the shipped data's)."""
    from xaiclip_cli.data.toycells import generate_toycells

    arrays = generate_toycells(n_train=0, n_val=0, n_test=40, seed=1234)
    return arrays["test_images"], arrays["test_labels"][:, 0]


def zero_shot_accuracy(backend, images: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of the argmax over prompt-ensembled class prototypes (the export's class names and templates)."""
    from xaiclip_cli.train.clip_data import format_prompt

    with torch.no_grad():
        protos = torch.stack([
            F.normalize(backend.encode_texts([format_prompt(t, name) for t in backend.templates]).mean(0), dim=-1)
            for name in backend.class_names
        ])
        g, _ = backend.encode_image(backend.preprocess(images))
        pred = backend.score(g, protos, "softmax").argmax(1).numpy()
    return float((pred == labels).mean())


@pytest.mark.parametrize("name", TOY_MODELS)
def test_toy_models_ship_small_and_load_offline(name: str) -> None:
    d = toy_dir(name)
    size = (d / WEIGHTS_FILE).stat().st_size
    assert size < 5_000_000
    b = load_toy(name, device="cpu")
    assert (b.embed_dim, b.image_size, b.token_grid, b.num_prefix_tokens, b.context_length) == (64, 64, (8, 8), 0, 32)
    assert b.class_names == ["lymphocyte", "neutrophil", "eosinophil", "basophil", "monocyte"]
    prov = b.provenance()
    assert prov["backend"] == "toy" and prov["sha256"] == sha256_file(d / WEIGHTS_FILE)
    assert 0.0 < b.raw_logit_scale <= np.log(100) + 1e-6


def test_toy_vit_is_conceptclip_shaped(toy_vit_backend) -> None:
    v = toy_vit_backend.vision_module()
    assert type(v).__name__ == "VisionTransformer"
    assert v.cls_token is None and v.global_pool == "map" and v.attn_pool is not None
    assert hasattr(toy_vit_backend.model, "image_proj") and hasattr(toy_vit_backend.model, "text_proj")
    with torch.no_grad():
        g, tok = toy_vit_backend.encode_image(toy_vit_backend.preprocess(np.zeros((1, 64, 64, 3), np.uint8)))
    assert g.shape == (1, 64) and tok.shape == (1, 64, 64)


def test_toy_cnn_is_a_resnet(toy_cnn_backend) -> None:
    v = toy_cnn_backend.vision_module()
    assert type(v).__name__ == "ResNet" and hasattr(v, "layer4")


@pytest.mark.parametrize("fixture", ["toy_vit_backend", "toy_cnn_backend"])
def test_toy_models_classify_fresh_cells_well_above_chance(fixture: str, request, fresh_cells) -> None:
    backend = request.getfixturevalue(fixture)
    acc = zero_shot_accuracy(backend, *fresh_cells)
    assert acc >= 0.6, f"{fixture}: zero-shot accuracy {acc:.2f} (chance 0.2)"


def test_default_registry_and_bad_names(toy_vit_backend) -> None:
    b = load_backend("toy", device="cpu")
    assert b.name == "toy-vit"
    with pytest.raises(UsageError, match="unknown toy model 'toy-xl'"):
        load_toy("toy-xl")
    with pytest.raises(UsageError, match="revision"):
        load_toy("toy-vit", revision="main")
