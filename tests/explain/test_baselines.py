"""attrib baseline maps: analytic gradient, RISE/LIME on models with known evidence, cam parity, seeds, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xaiclip_cli.errors import UsageError
from xaiclip_cli.explain.baselines import compute_map
from xaiclip_cli.explain.baselines.rise import RiseMasks
from xaiclip_cli.explain.baselines.scoring import clip_probs

S = 32


class LinearScorer:
    """probs(x) = [Σ w·x + b, −(Σ w·x + b)]: a 'probability' whose gradient is w (C = 2)."""

    n_classes = 2

    def __init__(self, w: torch.Tensor, b: float = 0.1) -> None:
        self.w, self.b = w, b

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * self.w).flatten(1).sum(1) + self.b
        return torch.stack([s, -s], dim=1)


class RegionScorer:
    """Column 0 = mean of the first channel over a fixed pixel region (the only evidence the model reads)."""

    n_classes = 2

    def __init__(self, region: torch.Tensor) -> None:
        self.region = region

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, 0][:, self.region].mean(dim=1)
        return torch.stack([s, 1 - s], dim=1)


def _image(seed: int = 0) -> torch.Tensor:
    return torch.rand(3, S, S, generator=torch.Generator().manual_seed(seed)) + 0.5  # > 0 = the mean fill


def test_gradient_of_linear_model_is_abs_w_max_over_channels() -> None:
    w = torch.randn(3, S, S, generator=torch.Generator().manual_seed(3))
    m = compute_map("gradient", LinearScorer(w), _image(), 0)
    assert m.dtype == np.float32 and m.shape == (S, S)
    np.testing.assert_allclose(m, w.abs().amax(0).numpy(), rtol=0, atol=1e-6)
    # class 1 is −(w·x): same magnitude; a batch gives each image its own map
    mb = compute_map("gradient", LinearScorer(w), torch.stack([_image(0), _image(1)]), [0, 1])
    np.testing.assert_allclose(mb[1], m, atol=1e-6)


def _toy_cnn():
    from xaiclip_cli.models.registry import load_backend

    return load_backend("toy", model="toy-cnn", device="cpu")


def _toy_inputs(backend, n: int = 1):
    from xaiclip_cli.data.refs import open_source

    src = open_source("toycells")
    images = src.images("test")[:n]
    texts = [f"a {c} cell" for c in src.class_names]
    return images, texts, backend.encode_texts(texts).detach()


def test_clip_target_is_softmax_at_the_given_scale() -> None:
    b = _toy_cnn()
    images, _, T = _toy_inputs(b)
    x = b.preprocess(images)
    with torch.no_grad():
        g, _ = b.encode_image(x)
        p = clip_probs(b, T, 7.5)(x).numpy()
    logits = 7.5 * g.numpy().astype(np.float64) @ T.numpy().T
    expect = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(p, expect / expect.sum(1, keepdims=True), atol=1e-6)
    # the scale changes the gradient map (it is the explained quantity, never the backend's own)
    m1 = compute_map("gradient", b, x[0], 2, text_features=T, logit_scale=5.0)
    m2 = compute_map("gradient", b, x[0], 2, text_features=T, logit_scale=50.0)
    assert not np.allclose(m1, m2)


def test_rise_masks_equal_skimage_resize() -> None:
    from skimage.transform import resize

    masks = RiseMasks(12, (S, S), grid=7, p=0.5, seed=4)
    got = masks.batch(0, 12).numpy()
    up = (7 + 1) * masks.cell[0]
    for i in range(12):
        ref = resize(masks.cells[i].astype(np.float64), (up, up), order=1, mode="reflect", anti_aliasing=False)
        a, c = masks.shifts[i]
        np.testing.assert_allclose(got[i], ref[a:a + S, c:c + S], atol=1e-6)
    assert 0.35 < float(got.mean()) < 0.65  # p = 0.5 keeps about half the pixels


def test_rise_concentrates_on_the_region_the_model_reads() -> None:
    region = torch.zeros(S, S, dtype=torch.bool)
    region[20:28, 4:12] = True
    m = compute_map("rise", RegionScorer(region), _image(), 0, n=600, fill="mean", batch=50)
    r = region.numpy()
    assert r.flat[int(m.argmax())]
    top = np.argsort(-m.ravel(), kind="stable")[:int(r.sum())]  # the |R| most salient pixels ...
    assert r.ravel()[top].mean() >= 0.75  # ... lie mostly in R (RISE maps carry the mean score as an offset)
    assert m[r].mean() > m[:8, 20:].mean() + 0.05  # the opposite corner only sees the mask correlation's tail


def test_rise_seeded_and_batch_independent() -> None:
    region = torch.zeros(S, S, dtype=torch.bool)
    region[:8, :8] = True
    sc = RegionScorer(region)
    a = compute_map("rise", sc, _image(), 0, n=100, fill="mean", seed=5, batch=64)
    b = compute_map("rise", sc, _image(), 0, n=100, fill="mean", seed=5, batch=7)
    c = compute_map("rise", sc, _image(), 0, n=100, fill="mean", seed=6)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.allclose(a, c)


def _block_segments(blocks: int = 4) -> np.ndarray:
    cell = S // blocks
    r = np.arange(S) // cell
    return (r[:, None] * blocks + r[None, :]).astype(np.int32)


def test_lime_ranks_the_only_segment_the_model_reads_first() -> None:
    seg = _block_segments()
    region = torch.from_numpy(seg == 9)
    m = compute_map("lime", RegionScorer(region), _image(), 0, segments=seg, samples=300, fill="mean")
    per_seg = np.array([m[seg == k].mean() for k in range(16)])
    assert int(per_seg.argmax()) == 9
    assert per_seg[9] > 5 * np.abs(np.delete(per_seg, 9)).max()
    for k in range(16):  # one value per segment
        assert np.ptp(m[seg == k]) == 0
    again = compute_map("lime", RegionScorer(region), _image(), 0, segments=seg, samples=300, fill="mean")
    np.testing.assert_array_equal(m, again)


def test_lime_quickshift_on_a_toy_cells_image() -> None:
    b = _toy_cnn()
    images, _, T = _toy_inputs(b)
    x = b.preprocess(images)[0]
    m = compute_map("lime", b, x, 0, text_features=T, logit_scale=10.0, samples=64, image=images[0])
    from xaiclip_cli.explain.baselines.lime import quickshift_segments

    seg = quickshift_segments(images[0])  # auto kernel 3 at 64 px, the reference's input scale
    rgb = quickshift_segments(images[0], quickshift_input="rgb")
    assert seg.max() + 1 >= 10 and seg.max() + 1 > rgb.max() + 1 >= 2  # 20 and 7 segments measured
    assert set(np.unique(seg)) == set(range(int(seg.max()) + 1))
    for k in np.unique(seg):
        assert np.ptp(m[seg == k]) == 0
    # without image=, the pixels are recovered from x_norm through the backend's normalisation: same map
    m2 = compute_map("lime", b, x, 0, text_features=T, logit_scale=10.0, samples=64)
    np.testing.assert_allclose(m, m2, atol=1e-7)


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
def test_cams_equal_the_cam_code(method: str) -> None:
    from xaiclip_cli.explain.api import CamRunner

    b = _toy_cnn()
    images, texts, _ = _toy_inputs(b)
    runner = CamRunner(b, texts, method, target=1, score="softmax")
    (res,) = runner.run([images[0]])
    x = runner.pixels([images[0]])[0]
    m = compute_map(method, b, x, 1, text_features=runner.text_global, logit_scale=b.logit_scale)
    assert m.shape == res.map.shape and float(m.max()) > 0
    np.testing.assert_allclose(m, res.map, rtol=1e-5, atol=1e-7)


def test_gradcam_on_a_vit_and_its_scale() -> None:
    from xaiclip_cli.explain.api import CamRunner
    from xaiclip_cli.models.registry import load_backend

    b = load_backend("toy", model="toy-vit", device="cpu")
    images, texts, _ = _toy_inputs(b)
    runner = CamRunner(b, texts, "gradcam", target=3, score="softmax")
    (res,) = runner.run([images[0]])
    x = runner.pixels([images[0]])[0]
    m = compute_map("gradcam", b, x, 3, text_features=runner.text_global, logit_scale=b.logit_scale)
    np.testing.assert_allclose(m, res.map, rtol=1e-5, atol=1e-7)
    other = compute_map("gradcam", b, x, 3, text_features=runner.text_global, logit_scale=2.0)
    assert not np.allclose(other, m)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


@pytest.mark.parametrize(("method", "kwargs", "needle"), [
    ("smdl", {}, "unknown baseline method"),
    ("rise", {"bogus": 1}, "unknown parameter"),
    ("rise", {"p": 1.5}, "(0, 1)"),
    ("rise", {"n": 0}, ">= 1"),
    ("rise", {"grid": 64}, "finer"),
    ("rise", {"fill": "white"}, "unknown fill"),
    ("rise", {"fill": "black"}, "preprocessing"),
    ("lime", {"samples": 1, "segments": _block_segments()}, ">= 2"),
    ("lime", {"segments": np.zeros((S, S), np.int32)}, "at least 2 segments"),
    ("lime", {"segments": np.zeros((8, 8), np.int32)}, "shape"),
    ("lime", {}, "pixels"),
    ("lime", {"image": np.zeros((S, S, 3), np.uint8), "quickshift_input": "lab"}, "quickshift input"),
    ("lime", {"image": np.zeros((S, S), np.uint8)}, "uint8 RGB"),
    ("lime", {"image": np.zeros((S, S, 3), np.uint8), "kernel_size": 0}, "kernel_size >= 1"),
    ("gradcam", {}, "CLIP backend"),
    ("gradient", {"batch": 0}, ">= 1"),
])
def test_bad_parameters_are_one_line_usage_errors(method: str, kwargs: dict, needle: str) -> None:
    sc = RegionScorer(torch.ones(S, S, dtype=torch.bool))
    kwargs = {"fill": "mean", **kwargs} if method in ("rise", "lime") else kwargs
    with pytest.raises(UsageError) as exc:
        compute_map(method, sc, _image(), 0, **kwargs)
    assert needle in _one_line(exc)


def test_bad_inputs_are_one_line_usage_errors() -> None:
    sc = RegionScorer(torch.ones(S, S, dtype=torch.bool))
    cases = [
        (lambda: compute_map("gradient", sc, _image(), 2), "out of range"),
        (lambda: compute_map("gradient", sc, _image(), -1), "out of range"),
        (lambda: compute_map("gradient", sc, torch.stack([_image(), _image()]), [0]), "2 images"),
        (lambda: compute_map("gradient", sc, torch.zeros(1, S, S), 0), "x_norm"),
        (lambda: compute_map("gradient", sc, torch.full((3, S, S), float("nan")), 0), "NaN"),
        (lambda: compute_map("gradient", sc, torch.zeros(3, S, S, dtype=torch.uint8), 0), "float"),
        (lambda: compute_map("gradient", sc, _image(), 0, seed=-1), "seed"),
        (lambda: compute_map("gradient", object(), _image(), 0), "cannot explain"),
    ]
    b = _toy_cnn()
    _, _, T = _toy_inputs(b)
    x = torch.zeros(3, 64, 64)
    cases += [
        (lambda: compute_map("gradient", b, x, 0), "text_features"),
        (lambda: compute_map("gradient", b, x, 0, text_features=T[:1]), "C >= 2"),
        (lambda: compute_map("gradient", b, x, 0, text_features=T, family="relu"), "family"),
        (lambda: compute_map("gradient", b, x, 0, text_features=T, logit_scale=-1.0), "positive"),
        (lambda: compute_map("gradient", b, x, 0, text_features=T[:, :4]), "dimension"),
        (lambda: compute_map("gradcam", b, x, 9, text_features=T), "out of range"),
        (lambda: compute_map("gradcam", b, x, 0, text_features=T, align="middle"), "align"),
    ]
    for call, needle in cases:
        with pytest.raises(UsageError) as exc:
            call()
        assert needle in _one_line(exc), needle


def test_sigmoid_family_explains_sigmoid_of_scaled_cosine_plus_bias() -> None:
    b = _toy_cnn()
    images, _, T = _toy_inputs(b)
    x = b.preprocess(images)[0]
    m = compute_map("gradient", b, x, 1, text_features=T, logit_scale=4.0, family="sigmoid", logit_bias=-2.0)
    xi = x[None].clone().requires_grad_(True)
    g, _ = b.encode_image(xi)
    p = torch.sigmoid(4.0 * (g @ T.t()) - 2.0)[0, 1]
    (grad,) = torch.autograd.grad(p, xi)
    np.testing.assert_allclose(m, grad[0].abs().amax(0).numpy(), rtol=1e-5, atol=1e-9)


def test_batched_maps_equal_single_maps() -> None:
    b = _toy_cnn()
    images, _, T = _toy_inputs(b, n=2)
    x = b.preprocess(images)
    for method, kw in (("gradcam", {}), ("rise", {"n": 40}), ("lime", {"samples": 20})):
        both = compute_map(method, b, x, [1, 3], text_features=T, logit_scale=10.0, **kw)
        assert both.shape == (2, 64, 64)
        for i, t in enumerate((1, 3)):
            np.testing.assert_allclose(both[i], compute_map(method, b, x[i], t, text_features=T, logit_scale=10.0,
                                                            **kw), rtol=1e-5, atol=1e-7, err_msg=method)


def test_resolved_params_fill_defaults_and_refuse_unknowns() -> None:
    from xaiclip_cli.explain.baselines import resolved_params

    r = resolved_params("rise", {"n": 100})
    assert r["n"] == 100 and r["grid"] == 7 and r["p"] == 0.5 and r["batch"] == 64 and r["fill"] == "black"
    assert resolved_params("lime", {"segments": np.zeros((2, 2))})["segments"] == "given (ndarray)"
    assert resolved_params("lime")["samples"] == 1000 and resolved_params("lime")["kernel_width"] == 0.25
    with pytest.raises(UsageError, match="unknown parameter"):
        resolved_params("gradient", {"n": 3})
    with pytest.raises(UsageError, match="unknown baseline method"):
        resolved_params("ig")


class NoGradClipScorer:
    """Shaped like smdl's ClipScorer: a backend, unit prototypes, s, family; probs under no_grad."""

    def __init__(self, backend, text, logit_scale: float) -> None:
        self.backend, self.text, self.logit_scale = backend, text, logit_scale
        self.family, self.logit_bias, self.n_classes = "softmax", 0.0, int(text.shape[0])

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return clip_probs(self.backend, self.text, self.logit_scale)(x)


def test_a_clip_scorer_is_explained_through_its_backend() -> None:
    b = _toy_cnn()
    images, _, T = _toy_inputs(b)
    x = b.preprocess(images)[0]
    sc = NoGradClipScorer(b, T, 10.0)
    for method in ("gradient", "gradcam"):
        np.testing.assert_allclose(compute_map(method, sc, x, 2),
                                   compute_map(method, b, x, 2, text_features=T, logit_scale=10.0), atol=1e-8)


def test_smdl_scorers_when_present() -> None:
    scorer = pytest.importorskip("xaiclip_cli.explain.smdl.scorer")
    import timm

    b = _toy_cnn()
    images, _, T = _toy_inputs(b)
    x = b.preprocess(images)[0]
    np.testing.assert_allclose(compute_map("gradient", scorer.ClipScorer(b, T, 10.0), x, 2),
                               compute_map("gradient", b, x, 2, text_features=T, logit_scale=10.0), atol=1e-8)
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=3, layers=[1, 1, 1, 1],
                            channels=[8, 8, 16, 16]).eval()
    m = compute_map("gradient", scorer.ClassifierScorer(net), x, 1)
    xi = x[None].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(xi).softmax(-1)[0, 1], xi)
    np.testing.assert_allclose(m, g[0].abs().amax(0).numpy(), rtol=1e-5, atol=1e-9)
    with pytest.raises(UsageError, match="CLIP backend"):
        compute_map("gradcam", scorer.ClassifierScorer(net), x, 1)
