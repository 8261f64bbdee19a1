"""explain()/save(): batching, targets, scores, hooks, grayscale, all-zero maps, files (cam.md §5-§7)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tests.explain.tiny_backends import tiny_cnn_backend, tiny_vit_backend
from xaiclip_cli.explain import METHOD_NAMES, explain, save, visualize_clip_gradcam
from xaiclip_cli.explain.api import CamRunner
from xaiclip_cli.explain.cam.hooks import hook_count

TEXTS = {"round": "a round cell", "dark": "a dark nucleus", "dog": "a dog"}


def _images(n: int, size: int = 40, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size + 6, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def vit():
    return tiny_vit_backend()


@pytest.fixture(scope="module")
def cnn():
    return tiny_cnn_backend()


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_batch_equals_single(vit, method: str) -> None:
    imgs = _images(2)
    runner = CamRunner(vit, TEXTS, method, target="all", topk=8)
    batched = runner.run(imgs, batch_size=6)
    singles = runner.run(imgs, batch_size=1)
    assert len(batched) == len(singles) == 6
    for a, b in zip(batched, singles, strict=True):
        assert (a.target_index, a.layer.name) == (b.target_index, b.layer.name)
        np.testing.assert_allclose(a.raw, b.raw, atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(a.map, b.map, atol=1e-5, rtol=1e-4)


def test_best_is_argmax_and_targets_by_name_or_index(cnn) -> None:
    imgs = _images(4)
    res = explain(cnn, imgs, TEXTS, target="best")
    for r in res:
        assert r.target_index == int(np.argmax(r.logits))
        assert r.target_rule == "best"
        np.testing.assert_allclose(sum(r.probs), 1.0, atol=1e-6)
    assert {r.target_index for r in explain(cnn, imgs[:2], TEXTS, target="dark")} == {1}
    assert {r.target_index for r in explain(cnn, imgs[:2], TEXTS, target=2)} == {2}


def test_cosine_and_logit_differ_by_exp_tau(vit) -> None:
    imgs = _images(2)
    cos = explain(vit, imgs, TEXTS, target=0, score="cosine")
    logit = explain(vit, imgs, TEXTS, target=0, score="logit")
    scale = vit.logit_scale
    assert math.isclose(scale, 20.0, rel_tol=1e-6)
    for c, lg in zip(cos, logit, strict=True):
        np.testing.assert_allclose(lg.raw, c.raw * scale, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(lg.display, c.display, atol=1e-5)
        assert c.score_kind == "cosine" and lg.score_kind == "logit"


def test_hooks_released_on_success_and_error(cnn, monkeypatch) -> None:
    tower = cnn.vision_module()
    explain(cnn, _images(2), TEXTS)
    assert hook_count(tower) == 0

    real = cnn.score

    def boom(*a, **k):
        raise RuntimeError("injected")

    monkeypatch.setattr(cnn, "score", boom)
    monkeypatch.setattr(cnn, "score", real)  # resolve the layer with the real score first
    runner = CamRunner(cnn, TEXTS)
    runner.resolve_layer(runner.pixels(_images(1)))
    monkeypatch.setattr(cnn, "score", boom)
    with pytest.raises(RuntimeError, match="injected"):
        runner.run(_images(2))
    assert hook_count(tower) == 0


def test_grayscale_input_and_channels_recorded(cnn) -> None:
    grey = np.random.default_rng(1).integers(0, 256, (30, 30), dtype=np.uint8)
    (r,) = explain(cnn, grey, TEXTS)
    assert r.image.shape == (30, 30, 1)
    assert r.sidecar()["channels_in"] == 1
    (rgb,) = explain(cnn, np.repeat(grey[:, :, None], 3, axis=2), TEXTS, target=r.target_index)
    np.testing.assert_allclose(r.raw, rgb.raw, atol=1e-6)


def test_all_zero_map_is_flagged_and_raw_kept(cnn, monkeypatch) -> None:
    import xaiclip_cli.explain.cam.engine as engine

    monkeypatch.setitem(engine.GRADIENT_METHODS, "gradcam", lambda A, G: -A.abs().sum(1) - 1.0)
    (r,) = explain(cnn, _images(1), TEXTS)
    assert r.all_zero
    assert r.sidecar()["all_zero"] is True
    assert float(r.raw.max()) < 0  # raw (pre-ReLU) values are kept
    assert float(np.abs(r.display).max()) == 0.0  # never inverted, never NaN


def test_eigencam_ignores_text(vit) -> None:
    a = explain(vit, _images(1), TEXTS, method="eigencam", target=0)[0]
    b = explain(vit, _images(1), TEXTS, method="eigencam", target=2)[0]
    np.testing.assert_array_equal(a.raw, b.raw)


def test_save_writes_npz_sidecar_manifest(cnn, tmp_path) -> None:
    res = explain(cnn, _images(2), TEXTS, method="gradcam++")
    files = save(res, tmp_path)
    assert len(files) == 2
    side = json.loads((tmp_path / files[0]["sidecar"]).read_text())
    npz = np.load(tmp_path / files[0]["npz"])
    np.testing.assert_array_equal(npz["raw"], res[0].raw)
    assert npz["map"].shape == (64, 64) and npz["map"].dtype == np.float32
    assert side["method"] == "gradcam++" and side["score"] == "logit" and side["layer"]["name"] == "trunk.layer4"
    assert side["layer"]["layout"] == "NCHW" and side["target_rule"] == "best"
    assert side["raw_min"] == pytest.approx(float(res[0].raw.min()))
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["name"] == files[0]["sidecar"][:-5]
    from PIL import Image

    assert Image.open(tmp_path / files[0]["overlay"]).size == (46, 40)  # original resolution


def test_legacy_visualize_clip_gradcam(cnn, tmp_path) -> None:
    from PIL import Image

    p = tmp_path / "cell.png"
    Image.fromarray(_images(1)[0]).save(p)
    r = visualize_clip_gradcam(cnn, p, TEXTS, tmp_path / "out" / "fig.png", target_text_idx=1)
    assert r.target_index == 1
    assert (tmp_path / "out" / "fig.png").is_file() and (tmp_path / "out" / "fig.json").is_file()


def test_flat_memory_over_50_images(vit) -> None:
    import resource

    runner = CamRunner(vit, TEXTS)
    imgs = _images(10, size=32, seed=3)
    runner.run(imgs, batch_size=10)  # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(4):
        runner.run(imgs, batch_size=10)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 50_000
    assert hook_count(vit.vision_module()) == 0
    assert all(p.grad is None for p in vit.vision_module().parameters())  # no gradients accumulate on weights


def test_sigmoid_needs_a_sigmoid_model(cnn) -> None:
    from xaiclip_cli.errors import UsageError

    with pytest.raises(UsageError, match="sigmoid"):
        explain(cnn, _images(1), TEXTS, score="sigmoid")


def test_softmax_over_one_text_has_no_gradient(cnn) -> None:
    from xaiclip_cli.errors import XaiclipError

    with pytest.raises(XaiclipError, match="constant"):
        explain(cnn, _images(1), ["only one"], score="softmax")
    assert torch.is_grad_enabled()


def test_frozen_weights_still_give_maps() -> None:
    backend = tiny_cnn_backend(seed=2)
    for p in backend.vision_module().parameters():
        p.requires_grad_(False)
    (r,) = explain(backend, _images(1), TEXTS, method="layercam")
    assert r.layer.name == "trunk.layer4" and np.isfinite(r.raw).all() and float(np.abs(r.raw).max()) > 0
