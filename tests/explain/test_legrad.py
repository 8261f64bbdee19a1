"""legrad: hand computations on tiny CLS and MAP timm ViTs, batch == single, restored flags/modules, CLI (cam.md §4)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from tests.explain.tiny_backends import tiny_cnn_backend, tiny_vit_backend
from xaiclip_cli.cli.main import app
from xaiclip_cli.errors import UsageError
from xaiclip_cli.explain import explain
from xaiclip_cli.explain.cam.engine import compute_maps
from xaiclip_cli.explain.cam.hooks import hook_count
from xaiclip_cli.explain.cam.legrad import EMPTY_PROMPT, ProbedMapHead, ProbedPool, find_vit, layer_indices, legrad

TEXTS = ["a round cell", "a dark nucleus", "a dog"]


def _pixels(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def cls_vit():
    return tiny_vit_backend(seed=1, depth=3)


@pytest.fixture(scope="module")
def map_vit():
    return tiny_vit_backend(seed=2, depth=3, class_token=False, global_pool="map")


def _explicit_block(blk, x):
    """One timm ViT block written out, returning the output and the attention probabilities (a graph leaf's child)."""
    h = blk.norm1(x)
    B, N, C = h.shape
    a = blk.attn
    q, k, v = a.qkv(h).reshape(B, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    P = (q * a.scale @ k.transpose(-2, -1)).softmax(-1)
    x = x + a.proj((P @ v).transpose(1, 2).reshape(B, N, C))
    return x + blk.mlp(blk.norm2(x)), P


def _explicit_pool(pool, x):
    """timm's AttentionPoolLatent written out (latent query, no mask), with its probabilities."""
    B, N, C = x.shape
    q = pool.q(pool.latent.expand(B, -1, -1)).reshape(B, 1, pool.num_heads, pool.head_dim).transpose(1, 2)
    k, v = pool.kv(x).reshape(B, N, 2, pool.num_heads, pool.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    P = torch.softmax(q @ k.transpose(-2, -1) * pool.head_dim ** -0.5, dim=-1)
    o = pool.proj((P @ v).transpose(1, 2).reshape(B, 1, C))
    o = o + pool.mlp(pool.norm(o))
    return o[:, 0], P


def _tokens(trunk, px):
    return trunk.norm_pre(trunk._pos_embed(trunk.patch_embed(px)))


def test_cls_tower_matches_hand_computation(cls_vit) -> None:
    trunk = cls_vit.vision_module().trunk
    px = _pixels(2)
    t = cls_vit.encode_texts(TEXTS).detach()
    targets = torch.tensor([0, 2])
    want = torch.zeros(2, 4, 4)
    x = _tokens(trunk, px)
    for blk in trunk.blocks:
        x, P = _explicit_block(blk, x)
        f = F.normalize(trunk.head(trunk.fc_norm(trunk.norm(x.mean(1)))), dim=-1)  # mean token → norm → head
        s = (f * t[targets]).sum()
        (g,) = torch.autograd.grad(s, P, retain_graph=True)
        want += g.clamp(min=0).mean(dim=(1, 2))[:, 1:].reshape(2, 4, 4)  # heads, queries; drop the CLS key
    got = legrad(cls_vit, px, t, targets).raw
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, atol=1e-7, rtol=1e-5)
    # K = 2: only the last two blocks
    assert layer_indices(3, 2) == [1, 2] and layer_indices(3, 0) == [0, 1, 2] and layer_indices(3, 9) == [0, 1, 2]


def test_map_tower_matches_hand_computation_with_empty_prompt(map_vit) -> None:
    trunk = map_vit.vision_module().trunk
    px = _pixels(3, seed=4)
    t = map_vit.encode_texts(TEXTS).detach()
    e = map_vit.encode_texts([EMPTY_PROMPT]).detach()[0]
    targets = torch.tensor([1, 0, 2])
    acc, acc_e = torch.zeros(3, 16), torch.zeros(3, 16)
    with torch.no_grad():
        x, outs = _tokens(trunk, px), []
        for blk in trunk.blocks:
            x = blk(x)
            outs.append(x)
    for x_l in outs:
        pooled, P = _explicit_pool(trunk.attn_pool, trunk.norm(x_l.requires_grad_(True)))
        f = F.normalize(trunk.head(trunk.fc_norm(pooled)), dim=-1)
        (g,) = torch.autograd.grad((f * t[targets]).sum(), P, retain_graph=True)
        (ge,) = torch.autograd.grad((f @ e).sum(), P)
        acc += g.clamp(min=0).mean(dim=(1, 2))
        acc_e += ge.clamp(min=0).mean(dim=(1, 2))
    lo, hi = acc_e.min(1, keepdim=True).values, acc_e.max(1, keepdim=True).values
    zeroed = (acc_e - lo) / (hi - lo + 1e-7) > 0.8
    assert zeroed.any() and not zeroed.all()
    want = torch.where(zeroed, 0.0, acc).reshape(3, 4, 4)
    got = legrad(map_vit, px, t, targets).raw
    torch.testing.assert_close(got, want, atol=1e-7, rtol=1e-5)
    no_fix = legrad(map_vit, px, t, targets, empty_text=None).raw
    torch.testing.assert_close(no_fix, acc.reshape(3, 4, 4), atol=1e-7, rtol=1e-5)


def test_probed_pool_equals_timm(map_vit) -> None:
    pool = map_vit.vision_module().trunk.attn_pool
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        probe = ProbedPool(pool)
        torch.testing.assert_close(probe(x), pool(x), atol=1e-6, rtol=1e-5)
    assert probe.probs is not None and probe.probs.shape == (2, 2, 1, 16)
    torch.testing.assert_close(probe.probs.sum(-1), torch.ones(2, 2, 1))


def _batch_equals_single(be, px: torch.Tensor, texts: list[str]):
    """Legrad maps of a batch equal the single-image maps; best targets are the argmax logits. Returns both."""
    t = be.encode_texts(texts).detach()
    bm = compute_maps(be, px, t, None, "legrad", None, "logit")  # type: ignore[arg-type]
    for b in range(px.shape[0]):
        one = compute_maps(be, px[b:b + 1], t, bm.targets[b:b + 1], "legrad", None, "logit")  # type: ignore[arg-type]
        torch.testing.assert_close(one.raw[0], bm.raw[b], atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        logits = be.score(be.encode_image(px)[0], t, "logit")
    assert bm.targets.tolist() == logits.argmax(1).tolist()
    return bm, logits


@pytest.mark.parametrize("tower", ["cls_vit", "map_vit"])
def test_batch_equals_single_and_scores(tower, request) -> None:
    bm, logits = _batch_equals_single(request.getfixturevalue(tower), _pixels(3, seed=7), TEXTS)
    torch.testing.assert_close(bm.logits, logits, atol=1e-5, rtol=1e-5)
    assert bm.raw.shape == (3, 4, 4) and bool((bm.raw >= 0).all())


@pytest.mark.parametrize("tower", ["cls_vit", "map_vit"])
@pytest.mark.parametrize("fail_at", [1, 2])
def test_flags_modules_and_hooks_restored_on_error(tower, fail_at, request, monkeypatch) -> None:
    be = request.getfixturevalue(tower)
    trunk = be.vision_module().trunk
    blocks, pool = trunk.blocks, trunk.attn_pool
    flags = [b.attn.fused_attn for b in trunk.blocks]
    assert all(flags)  # timm's default on this torch: fused SDPA
    t = be.encode_texts(TEXTS).detach()
    legrad(be, _pixels(1), t, torch.tensor([0]))
    assert [b.attn.fused_attn for b in trunk.blocks] == flags
    real, calls = be.encode_image, []

    def flaky(x):
        calls.append(1)
        out = real(x)
        if len(calls) == fail_at:  # 1: inside the first (recording, eager) pass; 2: inside a swapped head pass
            raise RuntimeError("injected")
        return out

    monkeypatch.setattr(be, "encode_image", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        legrad(be, _pixels(1), t, torch.tensor([0]))
    assert [b.attn.fused_attn for b in trunk.blocks] == flags
    assert trunk.blocks is blocks and trunk.attn_pool is pool
    assert hook_count(be.vision_module()) == 0


def test_api_refusals() -> None:
    with pytest.raises(UsageError, match="CNN"):
        explain(tiny_cnn_backend(), [np.zeros((32, 32, 3), np.uint8)], TEXTS, method="legrad")
    with pytest.raises(UsageError, match="--target-layer"):
        explain(tiny_vit_backend(), [np.zeros((32, 32, 3), np.uint8)], TEXTS, method="legrad", layer="trunk.norm")


def test_cli_run_on_toy_vit_and_refusal_on_toy_cnn(tmp_path) -> None:
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["cam", "run", "--model", "toy-vit", "--dataset", "toycells", "--limit", "2",
                                 "--method", "legrad", "--text", "a neutrophil", "--text", "a lymphocyte",
                                 "--target", "0", "--output-dir", str(out), "--cpu", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["method"] == "legrad" and res["maps"] == 2 and res["layer"] == "blocks.0-3+attn_pool"
    for i in range(2):
        stem = out / "test" / f"test_{i:05d}_legrad_a_neutrophil"
        for suffix in (".png", "_overlay.png", ".npz", ".json"):
            assert stem.with_name(stem.name + suffix).is_file(), suffix
        side = json.loads(stem.with_name(stem.name + ".json").read_text())
        assert side["method"] == "legrad" and side["method_params"]["blocks"] == [0, 1, 2, 3]
        raw = np.load(stem.with_name(stem.name + ".npz"))["raw"]
        assert raw.shape == (8, 8) and raw.max() > 0 and side["layer"]["grid"] == [8, 8]
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 2

    bad = CliRunner().invoke(app, ["cam", "run", "--model", "toy-cnn", "--dataset", "toycells", "--limit", "1",
                                   "--method", "legrad", "--text", "a cell", "--output-dir", str(tmp_path / "b"),
                                   "--cpu"])
    assert bad.exit_code == 2
    msg = [ln for ln in bad.output.splitlines() if "legrad" in ln]
    assert len(msg) == 1 and "CNN" in msg[0] and "gradcam" in msg[0]

    listed = CliRunner().invoke(app, ["cam", "methods", "--json"])
    row = next(m for m in json.loads(listed.stdout)["methods"] if m["method"] == "legrad")
    assert row["family"] == "token-gradient" and row["towers"] == "ViT, SigLIP"


# --- real backends: checkpoint export (CLS ViT + image_proj), ConceptCLIP replica (MAP trunk) ----------------------
@pytest.fixture(scope="module")
def cls_export(tmp_path_factory):
    from tests.models.tiny_export import build_tiny_export
    from xaiclip_cli.models.checkpoint import load_export

    image = {"name": "vit_base_patch16_224", "image_size": 32,
             "kwargs": {"patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2}}
    d = build_tiny_export(tmp_path_factory.mktemp("cls_export") / "export", image=image, seed=3)
    return load_export(d, device="cpu")


def test_checkpoint_cls_vit_goes_through_image_proj(cls_export) -> None:
    model = cls_export.model
    trunk = model.visual
    assert trunk.num_prefix_tokens == 1 and trunk.attn_pool is None
    px = _pixels(2, seed=9)
    t = cls_export.encode_texts(["a lymphocyte", "a neutrophil"]).detach()
    targets = torch.tensor([1, 0])
    want = torch.zeros(2, 4, 4)
    x = _tokens(trunk, px)
    for blk in trunk.blocks:
        x, P = _explicit_block(blk, x)
        f = F.normalize(model.image_proj(trunk.fc_norm(trunk.norm(x.mean(1)))), dim=-1)
        (g,) = torch.autograd.grad((f * t[targets]).sum(), P, retain_graph=True)
        want += g.clamp(min=0).mean(dim=(1, 2))[:, 1:].reshape(2, 4, 4)
    torch.testing.assert_close(legrad(cls_export, px, t, targets).raw, want, atol=1e-7, rtol=1e-5)


def test_conceptclip_replica(tmp_path_factory) -> None:
    from tests.models.conceptclip_replica import build_replica
    from xaiclip_cli.models.conceptclip import load_conceptclip

    be = load_conceptclip(str(build_replica(tmp_path_factory.mktemp("cc_replica_legrad"), seed=0)), device="cpu",
                          trust_remote_code=True)
    imgs = [np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8) for i in range(2)]
    res = explain(be, imgs, ["a cell", "a tumour"], method="legrad", target=1, batch_size=2)
    one = explain(be, imgs[1:], ["a cell", "a tumour"], method="legrad", target=1)
    assert res[0].layer.name.startswith("trunk.blocks.") and res[0].layer.name.endswith("+attn_pool")
    assert res[0].params["probabilities"] == "attn_pool"
    assert all(r.raw.max() > 0 and r.raw.min() >= 0 for r in res)
    np.testing.assert_allclose(res[1].raw, one[0].raw, atol=1e-6, rtol=1e-5)


def test_unknown_transformer_tower_is_refused() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Linear(2, 2)  # a transformer-looking tower without blocks legrad knows

    class Backend:
        def vision_module(self) -> nn.Module:
            return Odd()

    with pytest.raises(UsageError, match="not supported yet") as err:
        find_vit(Backend())
    assert "\n" not in str(err.value) and "gradcam" in str(err.value)


# --- transformers towers (hf backend): tiny CLIP (CLS self-attention) and SigLIP (MAP head) -----------------------
HF_TEXTS = ["a photo of a cell", "blood", "cell of cells"]


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    from tests.models.conftest import build_tiny_clip
    from xaiclip_cli.models.hf import load_hf

    return load_hf(str(build_tiny_clip(tmp_path_factory.mktemp("hf_clip_legrad"), seed=1)), device="cpu")


@pytest.fixture(scope="module")
def hf_siglip(tmp_path_factory):
    from tests.models.conftest import build_tiny_siglip
    from xaiclip_cli.models.hf import load_hf

    return load_hf(str(build_tiny_siglip(tmp_path_factory.mktemp("hf_siglip_legrad"), seed=2)), device="cpu")


def _hf_layer(layer, x):
    """One transformers CLIP/SigLIP encoder layer written out, returning the output and its attention probabilities."""
    a = layer.self_attn
    h = layer.layer_norm1(x)
    B, N, C = h.shape

    def heads(t):
        return t.reshape(B, N, a.num_heads, C // a.num_heads).transpose(1, 2)

    q, k, v = heads(a.q_proj(h)), heads(a.k_proj(h)), heads(a.v_proj(h))
    P = torch.softmax(q @ k.transpose(-2, -1) / (C // a.num_heads) ** 0.5, dim=-1)
    x = x + a.out_proj((P @ v).transpose(1, 2).reshape(B, N, C))
    return x + layer.mlp(layer.layer_norm2(x)), P


def _hf_pool(head, x):
    """SigLIP's attention-pooling head written out with einsum (per-head probabilities kept)."""
    mha = head.attention
    B, N, C = x.shape
    H = mha.num_heads
    d = C // H
    (wq, wk, wv), (bq, bk, bv) = mha.in_proj_weight.split(C), mha.in_proj_bias.split(C)
    q = (head.probe.expand(B, -1, -1) @ wq.T + bq).view(B, 1, H, d)
    k = (x @ wk.T + bk).view(B, N, H, d)
    v = (x @ wv.T + bv).view(B, N, H, d)
    P = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / d ** 0.5, dim=-1)
    o = mha.out_proj(torch.einsum("bhqk,bkhd->bqhd", P, v).reshape(B, 1, C))
    o = o + head.mlp(head.layernorm(o))
    return o[:, 0], P


def _hf_pixels(n: int, seed: int = 0) -> torch.Tensor:
    return _pixels(n, size=56, seed=seed)


def test_hf_clip_matches_hand_computation(hf_clip) -> None:
    vm, model = hf_clip.model.vision_model, hf_clip.model
    px = _hf_pixels(2, seed=3)
    t = hf_clip.encode_texts(HF_TEXTS).detach()
    targets = torch.tensor([1, 2])
    per_layer = []
    x = vm.pre_layrnorm(vm.embeddings(px))
    for layer in vm.encoder.layers:
        x, P = _hf_layer(layer, x)
        f = F.normalize(model.visual_projection(vm.post_layernorm(x.mean(1))), dim=-1)  # mean token → CLIP's head
        (g,) = torch.autograd.grad((f * t[targets]).sum(), P, retain_graph=True)
        per_layer.append(g.clamp(min=0).mean(dim=(1, 2))[:, 1:].reshape(2, 4, 4))  # heads, queries; drop CLS key
    with torch.no_grad():  # the written-out layers are the model's own (oracle: the model's global feature)
        want_global = F.normalize(model.visual_projection(vm.post_layernorm(x[:, 0])), dim=-1)
        torch.testing.assert_close(hf_clip.encode_image(px)[0], want_global, atol=1e-6, rtol=1e-5)
    want = per_layer[0] + per_layer[1]
    # eager attention returns dropout(P) and multiplies that with V: in eval (p = 0) it is P itself
    assert vm.config.attention_dropout == 0.0 and F.dropout(P, p=0.0, training=vm.training) is P
    out = legrad(hf_clip, px, t, targets)
    assert want.abs().max() > 0 and out.layers == [0, 1] and not out.tower.map_pool
    torch.testing.assert_close(out.raw, want, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(legrad(hf_clip, px, t, targets, layers=1).raw, per_layer[1], atol=1e-7, rtol=1e-5)


def test_hf_siglip_matches_hand_computation_with_empty_prompt(hf_siglip) -> None:
    vm = hf_siglip.model.vision_model
    px = _hf_pixels(3, seed=5)
    t = hf_siglip.encode_texts(HF_TEXTS).detach()
    e = hf_siglip.encode_texts([EMPTY_PROMPT]).detach()[0]
    targets = torch.tensor([0, 2, 1])
    acc, acc_e = torch.zeros(3, 16), torch.zeros(3, 16)
    with torch.no_grad():
        x, outs = vm.embeddings(px), []
        for layer in vm.encoder.layers:
            x = _hf_layer(layer, x)[0]
            outs.append(x)
        pooled, _ = _hf_pool(vm.head, vm.post_layernorm(x))
        torch.testing.assert_close(hf_siglip.encode_image(px)[0], F.normalize(pooled, dim=-1), atol=1e-6, rtol=1e-5)
    for x_l in outs:
        pooled, P = _hf_pool(vm.head, vm.post_layernorm(x_l.requires_grad_(True)))
        f = F.normalize(pooled, dim=-1)  # SigLIP: the pooled output is the global feature (no projection)
        (g,) = torch.autograd.grad((f * t[targets]).sum(), P, retain_graph=True)
        (ge,) = torch.autograd.grad((f @ e).sum(), P)
        acc += g.clamp(min=0).mean(dim=(1, 2))
        acc_e += ge.clamp(min=0).mean(dim=(1, 2))
    lo, hi = acc_e.min(1, keepdim=True).values, acc_e.max(1, keepdim=True).values
    zeroed = (acc_e - lo) / (hi - lo + 1e-7) > 0.8
    assert zeroed.any() and not zeroed.all()
    out = legrad(hf_siglip, px, t, targets)
    assert out.tower.map_pool and out.tower.key_prefix == 0
    torch.testing.assert_close(out.raw, torch.where(zeroed, 0.0, acc).reshape(3, 4, 4), atol=1e-7, rtol=1e-5)
    no_fix = legrad(hf_siglip, px, t, targets, empty_text=None).raw
    torch.testing.assert_close(no_fix, acc.reshape(3, 4, 4), atol=1e-7, rtol=1e-5)


def test_probed_map_head_equals_transformers(hf_siglip) -> None:
    head = hf_siglip.model.vision_model.head
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        probe = ProbedMapHead(head)
        torch.testing.assert_close(probe(x), head(x), atol=1e-6, rtol=1e-5)
        q = head.probe.repeat(2, 1, 1)
        _, weights = head.attention(q, x, x, need_weights=True, average_attn_weights=False)
    assert probe.probs is not None and probe.probs.shape == (2, 2, 1, 16)
    torch.testing.assert_close(probe.probs, weights, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("tower", ["hf_clip", "hf_siglip"])
def test_hf_batch_equals_single(tower, request) -> None:
    bm, _ = _batch_equals_single(request.getfixturevalue(tower), _hf_pixels(3, seed=8), HF_TEXTS)
    assert bm.raw.shape == (3, 4, 4) and bool((bm.raw >= 0).all()) and bm.raw.max() > 0


@pytest.mark.parametrize("fail_at", [1, 2])
def test_hf_attention_implementation_restored(hf_clip, fail_at, monkeypatch) -> None:
    vm = hf_clip.model.vision_model
    cfg = vm.encoder.layers[0].self_attn.config
    assert cfg._attn_implementation == "sdpa"  # transformers' default here: no probabilities
    t = hf_clip.encode_texts(HF_TEXTS).detach()
    real, seen = hf_clip.encode_image, []

    def flaky(x):
        seen.append(cfg._attn_implementation)
        out = real(x)
        if len(seen) == fail_at:  # 1: inside the recording (eager) pass; 2: inside a swapped-encoder head pass
            raise RuntimeError("injected")
        return out

    monkeypatch.setattr(hf_clip, "encode_image", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        legrad(hf_clip, _hf_pixels(1), t, torch.tensor([0]))
    assert seen == ["eager", "sdpa"][:fail_at]  # eager only for the recording pass
    assert cfg._attn_implementation == "sdpa" and hf_clip.model.config.vision_config._attn_implementation == "sdpa"
    assert type(vm.encoder).__name__ == "CLIPEncoder" and hook_count(vm) == 0
    monkeypatch.undo()
    legrad(hf_clip, _hf_pixels(1), t, torch.tensor([0]))
    assert cfg._attn_implementation == "sdpa"


def test_hf_siglip_head_restored_on_error(hf_siglip, monkeypatch) -> None:
    vm = hf_siglip.model.vision_model
    encoder, head = vm.encoder, vm.head
    t = hf_siglip.encode_texts(HF_TEXTS).detach()
    real, calls = hf_siglip.encode_image, []

    def flaky(x):
        calls.append(1)
        out = real(x)
        if len(calls) == 2:
            raise RuntimeError("injected")
        return out

    monkeypatch.setattr(hf_siglip, "encode_image", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        legrad(hf_siglip, _hf_pixels(1), t, torch.tensor([0]))
    assert vm.encoder is encoder and vm.head is head and hook_count(vm) == 0
    assert vm.config._attn_implementation == "sdpa"  # the MAP path never needs the blocks' probabilities


@pytest.mark.parametrize(("tower", "label"), [("hf_clip", "encoder.layers.0-1"),
                                              ("hf_siglip", "encoder.layers.0-1+head")])
def test_hf_explain_end_to_end(tower, label, request) -> None:
    be = request.getfixturevalue(tower)
    imgs = [np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8) for i in range(2)]
    res = explain(be, imgs, HF_TEXTS, method="legrad", target=1, batch_size=2)
    one = explain(be, imgs[1:], HF_TEXTS, method="legrad", target=1)
    assert [r.layer.name for r in res] == [label, label] and res[0].layer.grid == (4, 4)
    assert all(r.raw.shape == (4, 4) and r.raw.max() > 0 and r.raw.min() >= 0 for r in res)
    np.testing.assert_allclose(res[1].raw, one[0].raw, atol=1e-6, rtol=1e-5)
