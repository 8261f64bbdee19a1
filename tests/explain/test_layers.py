"""Token reshape, layout detection and automatic target-layer choice on tiny timm towers (cam.md §2, §7.3-7.4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.explain.tiny_backends import TinyBackend, Tower, timm_backend, tiny_cnn_backend, tiny_vit_backend
from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.explain.api import CamRunner
from xaiclip_cli.explain.layers import reshape_tokens, spatial_layout, to_nchw


@pytest.mark.parametrize("prefix", [0, 1, 5])
def test_reshape_drops_prefix_and_lays_a_2x3_grid(prefix: int) -> None:
    B, D, gh, gw = 2, 4, 2, 3
    grid_vals = torch.arange(B * gh * gw * D, dtype=torch.float32).reshape(B, gh, gw, D)
    tokens = torch.cat([torch.full((B, prefix, D), -1.0), grid_vals.reshape(B, gh * gw, D)], dim=1)
    out = reshape_tokens(tokens, prefix, grid=(gh, gw))
    assert out.shape == (B, D, gh, gw)
    assert torch.equal(out, grid_vals.permute(0, 3, 1, 2))
    # grid from the input size and patch: 32x48 pixels, patch 16 → 2x3
    assert torch.equal(reshape_tokens(tokens, prefix, input_hw=(32, 48), patch=16), out)


def test_reshape_square_fallback_and_mismatch() -> None:
    t = torch.randn(1, 1 + 16, 8)
    assert reshape_tokens(t, 1).shape == (1, 8, 4, 4)
    with pytest.raises(ValueError, match="mismatch"):
        reshape_tokens(t, 1, grid=(3, 5))
    with pytest.raises(ValueError, match="not a square"):
        reshape_tokens(torch.randn(1, 1 + 6, 8), 1)


def test_nhwc_is_permuted() -> None:
    x = torch.randn(2, 3, 5, 7)  # NHWC: H=3, W=5, C=7
    assert torch.equal(to_nchw(x, "NHWC"), x.permute(0, 3, 1, 2))
    assert spatial_layout((2, 2, 2, 96), (64, 64), 0, None)[:1] == ("NHWC",)
    assert spatial_layout((2, 32, 16, 16), (64, 64), 0, None)[:1] == ("NCHW",)
    assert spatial_layout((2, 17, 32), (32, 32), 1, (4, 4)) == ("NLD", 1, (4, 4))
    assert spatial_layout((2, 18, 32), (32, 32), 1, (4, 4)) is None


def _chosen(backend: TinyBackend) -> str:
    runner = CamRunner(backend, ["a round cell", "a dark nucleus"])
    img = np.random.default_rng(0).integers(0, 256, (backend.image_size, backend.image_size, 3), dtype=np.uint8)
    return runner.resolve_layer(runner.pixels([img])).name


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: tiny_cnn_backend(), "trunk.layer4"),
        (lambda: timm_backend("test_convnext", image_size=64), "trunk.stages.3"),
        (lambda: timm_backend("test_efficientnet", image_size=64), "trunk.bn2"),
        (lambda: tiny_vit_backend(), "trunk.blocks.1.norm1"),
        (lambda: tiny_vit_backend(reg_tokens=4), "trunk.blocks.1.norm1"),
        (lambda: tiny_vit_backend(class_token=False, global_pool="map", no_embed_class=True), "trunk.norm"),
    ],
    ids=["resnet", "convnext", "efficientnet", "vit-cls", "vit-registers", "siglip-map"],
)
def test_auto_layer_matches_family_defaults(make, expected: str) -> None:
    assert _chosen(make()) == expected


def test_forced_zero_gradient_layer_fails_clearly() -> None:
    # The last block's output of a CLS ViT: only the CLS token reaches the score, patch tokens get zero gradient.
    backend = tiny_vit_backend()
    runner = CamRunner(backend, ["a cell", "a dog"], layer="trunk.blocks.1")
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(XaiclipError, match="zero gradient at every spatial position"):
        runner.run([img])


def test_unknown_or_non_spatial_layer_is_a_usage_error() -> None:
    backend = tiny_cnn_backend()
    img = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(UsageError, match="not a module"):
        CamRunner(backend, ["a"], layer="trunk.nope").run([img])
    with pytest.raises(UsageError, match="not a spatial map"):
        CamRunner(backend, ["a"], layer="trunk.fc").run([img])


def test_tower_without_spatial_layers_errors() -> None:
    backend = TinyBackend(Tower(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))), 4, 8)
    runner = CamRunner(backend, ["a"])
    with pytest.raises(XaiclipError, match="no module of the image tower has a spatial output"):
        runner.run([np.zeros((8, 8, 3), np.uint8)])


class _HFTower(torch.nn.Module):
    """A Hugging Face vision model whose pooled, projected output is the image embedding."""

    def __init__(self, model: torch.nn.Module, proj: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.proj = proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        if self.proj is None:
            return out.image_embeds
        return self.proj(out.pooler_output)


@pytest.mark.slow
def test_auto_layer_on_tiny_hf_clip_and_siglip() -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                 patch_size=8)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(projection_dim=16, **small)).eval()
    clip_backend = TinyBackend(_HFTower(clip), 16, 32, token_grid=(4, 4), prefix=1)
    assert _chosen(clip_backend).endswith("encoder.layers.1.layer_norm1")
    siglip = SiglipVisionModel(SiglipVisionConfig(**small)).eval()
    siglip_backend = TinyBackend(_HFTower(siglip, torch.nn.Linear(32, 16)), 16, 32, token_grid=(4, 4), prefix=0)
    assert _chosen(siglip_backend).endswith("post_layernorm")


@pytest.mark.slow
def test_auto_layer_on_conceptclip_replica_is_trunk_norm(tmp_path) -> None:
    from tests.models.conceptclip_replica import build_replica
    from xaiclip_cli.models.registry import load_backend

    backend = load_backend("conceptclip", str(build_replica(tmp_path / "cc")), device="cpu",
                           trust_remote_code=True)
    assert backend.num_prefix_tokens == 0
    assert _chosen(backend) == "trunk.norm"


def test_auto_layer_of_an_attention_pooled_cnn_is_its_last_stage(tmp_path) -> None:
    # The CLIP-style attention pool sits on the ClipModel, outside the tower: auto detection stops at layer4.
    from tests.models.tiny_export import TINY_CNN, build_tiny_export
    from xaiclip_cli.explain.layers import scan_layers
    from xaiclip_cli.models.checkpoint import load_export

    backend = load_export(build_tiny_export(tmp_path / "exp", image={**TINY_CNN, "pool": "attn"}), device="cpu")
    assert _chosen(backend) == "layer4"
    px = backend.preprocess(np.zeros((1, 32, 32, 3), np.uint8))
    names = [i.name for i in scan_layers(backend, px, lambda g: g[:, 0])]
    assert names[-1] == "layer4"  # nothing after the last stage (the pool's 65-token sequences are not spatial)
