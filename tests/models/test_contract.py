"""The backend contract (architecture.md, conceptclip.md §6): the same checks for every backend fixture."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from xaiclip_cli.models.base import ClipBackend

from .conftest import BACKEND_FIXTURES

PROMPTS = ["a photo of a cell", "blood", "a large round nucleus with purple granules"]
LONG_PROMPT = " ".join(["cell"] * 200)


@pytest.fixture(params=BACKEND_FIXTURES)
def backend(request: pytest.FixtureRequest) -> ClipBackend:
    """Each registered backend fixture in turn."""
    return request.getfixturevalue(request.param)


def _images(backend: ClipBackend, n: int = 3, seed: int = 0, size: int | None = None) -> np.ndarray:
    """Smooth uint8 HWC images (so resampling differences stay small) at the backend's input size by default."""
    s = size or backend.image_size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:s, 0:s] / max(s - 1, 1)
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        img = np.stack([a * xx, b * yy, c * (1 - xx * yy)], axis=-1) * 255
        out.append(np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8))
    return np.stack(out)


def _norm_stats(backend: ClipBackend) -> tuple[list[float], list[float]] | None:
    """(mean, std) of the backend's normalisation (``image_mean``/``image_std`` or ``mean``/``std``), else None."""
    for holder in (getattr(backend, "image_processor", None), backend):
        for m_name, s_name in (("image_mean", "image_std"), ("mean", "std")):
            mean, std = getattr(holder, m_name, None), getattr(holder, s_name, None)
            if mean is not None and std is not None:
                return [float(m) for m in mean], [float(s) for s in std]
    return None


def test_facts_are_consistent(backend: ClipBackend) -> None:
    assert isinstance(backend.embed_dim, int) and backend.embed_dim > 0
    assert backend.num_prefix_tokens >= 0
    assert backend.score_family in ("softmax", "sigmoid")
    if backend.token_grid is not None:
        gh, gw = backend.token_grid
        assert gh * backend.patch_size == backend.image_size and gw >= 1
    assert isinstance(backend.vision_module(), nn.Module)


def test_encode_image_shapes_and_unit_norms(backend: ClipBackend) -> None:
    px = backend.preprocess(_images(backend, 3))
    assert px.shape == (3, 3, backend.image_size, backend.image_size)
    with torch.no_grad():
        g, tokens = backend.encode_image(px)
    assert g.shape == (3, backend.embed_dim)
    torch.testing.assert_close(g.norm(dim=-1), torch.ones(3), atol=1e-4, rtol=0)
    if tokens is not None:
        gh, gw = backend.token_grid
        # Tokens come back with the prefix (CLS/registers) removed: one per grid cell.
        assert tokens.shape == (3, gh * gw, backend.embed_dim)
        assert torch.isfinite(tokens).all()


def test_unnormalized_image_embedding_normalises_to_the_global(backend: ClipBackend) -> None:
    px = backend.preprocess(_images(backend, 2))
    with torch.no_grad():
        g, _ = backend.encode_image(px)
        raw = backend.encode_image_unnormalized(px)
    assert raw.shape == g.shape
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(2), atol=1e-3)  # really before the normalisation
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=-1), g, atol=1e-5, rtol=0)


def test_encode_text_shapes_and_unit_norms(backend: ClipBackend) -> None:
    ids, mask = backend.tokenize(PROMPTS)
    assert ids.shape == mask.shape and ids.shape[0] == len(PROMPTS)
    assert ids.shape[1] <= backend.context_length
    with torch.no_grad():
        g, tokens = backend.encode_text(ids, mask)
    assert g.shape == (len(PROMPTS), backend.embed_dim)
    torch.testing.assert_close(g.norm(dim=-1), torch.ones(len(PROMPTS)), atol=1e-4, rtol=0)
    if tokens is not None:
        assert tokens.shape == (len(PROMPTS), ids.shape[1], backend.embed_dim)
    # Distinct prompts give distinct embeddings (the text actually reaches the output).
    assert (g[0] - g[1]).abs().max() > 1e-4


def test_long_prompt_truncated_to_max_length(backend: ClipBackend) -> None:
    ids, mask = backend.tokenize([LONG_PROMPT])
    assert ids.shape == (1, backend.context_length)
    assert int(mask.sum()) == backend.context_length
    ids20, _ = backend.tokenize([LONG_PROMPT], max_length=20)
    assert ids20.shape == (1, 20)


def test_text_global_does_not_depend_on_padding(backend: ClipBackend) -> None:
    """The same prompt alone (padded to its longest) and beside a 200-word prompt (padded to max length)."""
    with torch.no_grad():
        alone = backend.encode_texts(PROMPTS[:1])
        ids, mask = backend.tokenize([PROMPTS[0], LONG_PROMPT])
        assert ids.shape[1] == backend.context_length
        padded = backend.encode_text(ids, mask)[0][:1]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)


def test_preprocess_uint8_equals_float_over_255(backend: ClipBackend) -> None:
    u8 = _images(backend, 2, seed=1)
    a = backend.preprocess(u8)
    b = backend.preprocess(u8.astype(np.float32) / 255.0)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # Other sizes are resampled: uint8 resizing rounds and clips, float does not, so only approximately equal.
    small = _images(backend, 2, seed=2, size=max(8, backend.image_size // 2))
    c, d = backend.preprocess(small), backend.preprocess(small.astype(np.float32) / 255.0)
    assert c.shape == (2, 3, backend.image_size, backend.image_size)
    stats = _norm_stats(backend)
    std = torch.tensor(stats[1] if stats else [0.5] * 3).view(1, 3, 1, 1)
    assert ((c - d) * std).abs().max() < 0.03  # in [0,1] pixel units: under 8 grey levels


def test_preprocess_accepts_grey_and_single_images(backend: ClipBackend) -> None:
    rgb = _images(backend, 1, seed=3)[0]
    grey = rgb[..., 0]
    a = backend.preprocess(grey)
    b = backend.preprocess(np.repeat(grey[..., None], 3, axis=-1))
    assert a.shape == (1, 3, backend.image_size, backend.image_size)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    torch.testing.assert_close(backend.preprocess(rgb), backend.preprocess(rgb[None]), atol=0, rtol=0)


def test_preprocess_value_range(backend: ClipBackend) -> None:
    stats = _norm_stats(backend)
    if stats is None:
        pytest.skip("backend exposes no image_mean/image_std")
    mean, std = stats
    s = backend.image_size
    black, white = np.zeros((s, s, 3), np.uint8), np.full((s, s, 3), 255, np.uint8)
    px = backend.preprocess(np.stack([black, white]))
    for c in range(3):
        torch.testing.assert_close(px[0, c], torch.full((s, s), -mean[c] / std[c]), atol=1e-5, rtol=0)
        torch.testing.assert_close(px[1, c], torch.full((s, s), (1 - mean[c]) / std[c]), atol=1e-5, rtol=0)
    if mean == [0.5] * 3 and std == [0.5] * 3:
        rnd = backend.preprocess(np.random.default_rng(4).integers(0, 256, (2, s, s, 3), dtype=np.uint8))
        assert rnd.min() >= -1.0 - 1e-6 and rnd.max() <= 1.0 + 1e-6


def test_two_calls_are_identical(backend: ClipBackend) -> None:
    px = backend.preprocess(_images(backend, 2, seed=5))
    ids, mask = backend.tokenize(PROMPTS)
    with torch.no_grad():
        g1, t1 = backend.encode_image(px)
        g2, t2 = backend.encode_image(px)
        h1, _ = backend.encode_text(ids, mask)
        h2, _ = backend.encode_text(ids, mask)
    assert torch.equal(g1, g2) and torch.equal(h1, h2)
    assert (t1 is None and t2 is None) or torch.equal(t1, t2)


def test_scores_follow_the_formulas(backend: ClipBackend) -> None:
    with torch.no_grad():
        g, _ = backend.encode_image(backend.preprocess(_images(backend, 2, seed=6)))
        t = backend.encode_texts(PROMPTS)
    cos = backend.score(g, t, "cosine")
    torch.testing.assert_close(cos, g @ t.T)
    assert cos.min() >= -1 - 1e-6 and cos.max() <= 1 + 1e-6
    assert math.isclose(backend.logit_scale, math.exp(backend.raw_logit_scale), rel_tol=1e-9)
    raw_bias = backend.raw_logit_bias
    assert backend.logit_bias == (0.0 if raw_bias is None else pytest.approx(raw_bias))
    logits = backend.score(g, t, "logit")
    torch.testing.assert_close(logits, backend.logit_scale * cos + backend.logit_bias, atol=1e-5, rtol=1e-6)
    probs = backend.score(g, t, "softmax")
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(probs, torch.softmax(logits, dim=-1))
    torch.testing.assert_close(backend.score(g, t, "sigmoid"), torch.sigmoid(logits))
    scalars = backend.scalars()
    assert scalars["logit_scale"] == pytest.approx(backend.raw_logit_scale)
    assert scalars["logit_scale_exp"] == pytest.approx(backend.logit_scale)


def test_vision_module_runs_in_encode_image_and_passes_gradients(backend: ClipBackend) -> None:
    calls: list[str] = []
    handles = [m.register_forward_hook(lambda *_, n=name: calls.append(n))
               for name, m in backend.vision_module().named_modules()]
    try:
        px = backend.preprocess(_images(backend, 1, seed=7)).requires_grad_(True)
        g, _ = backend.encode_image(px)
        g[0, 0].backward()
    finally:
        for h in handles:
            h.remove()
    # CAM hooks modules inside vision_module(): at least its leaves must run in encode_image.
    assert len(calls) > 1, "encode_image did not run vision_module()'s modules: CAM hooks would never fire"
    assert px.grad is not None and px.grad.abs().sum() > 0


def test_provenance_is_json_and_names_the_model(backend: ClipBackend) -> None:
    prov = backend.provenance()
    assert set(json.loads(json.dumps(prov))) == set(prov)  # JSON-serialisable as is
    assert prov["model_id"] and prov["model_revision"]
    assert "lib_versions" in prov and prov["lib_versions"]["torch"] == torch.__version__.split("+")[0]
