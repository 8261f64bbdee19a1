"""Score terms and objective (smdl.md §4–5) against hand computations; scorers; search invariants on a fake model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xaiclip_cli.errors import UsageError
from xaiclip_cli.explain.smdl.scorer import ClassifierScorer, ClipScorer, text_prototypes
from xaiclip_cli.explain.smdl.search import (
    SmdlConfig,
    attribute,
    confidence_term,
    distance_matrix,
    effectiveness_of_sets,
    objective_of,
)


def test_confidence_softmax_by_hand() -> None:
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.7, 0.2, 0.1]])
    got = confidence_term(p, 0, "softmax")
    for row, g in zip(p.tolist(), got.tolist(), strict=True):
        h = -sum(v * math.log(v + 1e-7) for v in row)
        assert g == pytest.approx(1 - h / math.log(3), abs=1e-6)
    assert got[1] == pytest.approx(1.0, abs=1e-6)


def test_confidence_sigmoid_is_one_minus_binary_entropy() -> None:
    p = torch.tensor([[0.5, 0.9], [0.9, 0.5], [0.99, 0.1]])
    got = confidence_term(p, 0, "sigmoid")
    for q, g in zip([0.5, 0.9, 0.99], got.tolist(), strict=True):
        hb = -(q * math.log(q + 1e-7) + (1 - q) * math.log(1 - q + 1e-7))
        assert g == pytest.approx(1 - hb / math.log(2), abs=1e-6)
    assert got[0] == pytest.approx(0.0, abs=1e-6)


def test_effectiveness_by_hand() -> None:
    a = math.radians(30)
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [math.cos(a), math.sin(a)]])
    d = distance_matrix(f)
    assert d[0, 1] == pytest.approx(0.5, abs=1e-6) and d[0, 2] == pytest.approx(1 / 6, abs=1e-6)
    assert d[1, 2] == pytest.approx(1 / 3, abs=1e-6) and d[1, 1] == 1
    sets = torch.tensor([[0, 1, 2]])
    # min rows: 0 → 1/6, 1 → 1/3, 2 → 1/6
    assert float(effectiveness_of_sets(d, sets)[0]) == pytest.approx(2 / 3, abs=1e-6)
    assert float(effectiveness_of_sets(d, torch.tensor([[0, 1]]))[0]) == pytest.approx(1.0, abs=1e-6)
    assert effectiveness_of_sets(d, torch.tensor([[2]])).tolist() == [0.0]


def test_objective_and_lambdas() -> None:
    t = [torch.tensor([v]) for v in (0.2, 0.4, 0.6, 0.8)]
    assert float(objective_of((0, 0.05, 1, 1), *t)) == pytest.approx(0.05 * 0.4 + 0.6 + 0.8)
    assert float(objective_of((1, 1, 10, 1), *t)) == pytest.approx(0.2 + 0.4 + 6 + 0.8)
    assert SmdlConfig().lambdas == (0.0, 0.05, 1.0, 1.0)


class MeanImage(torch.nn.Module):
    """A deterministic 'image tower': per-channel means of 4 quadrants → 12-d feature."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 2).flatten(1)


class FakeBackend:
    """The minimum ClipScorer needs: encode_image, encode_texts, embed_dim, device."""

    embed_dim = 12
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.tower = MeanImage()
        torch.manual_seed(3)
        self.words = {}

    def encode_image(self, x: torch.Tensor):
        return F.normalize(self.tower(x) + 0.01, dim=-1), None

    def encode_texts(self, texts):
        out = []
        for t in texts:
            g = torch.Generator().manual_seed(sum(map(ord, t)))
            out.append(torch.randn(12, generator=g))
        return torch.stack(out) * 3.0  # not unit: text_prototypes must normalise


def test_clip_scorer_softmax_sigmoid_and_counters() -> None:
    be = FakeBackend()
    protos = F.normalize(torch.randn(4, 12, generator=torch.Generator().manual_seed(0)), dim=-1)
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    f = be.encode_image(x)[0]
    sc = ClipScorer(be, protos, 7.0)
    np.testing.assert_allclose(sc.probs(x).numpy(), torch.softmax(7.0 * f @ protos.T, -1).numpy(), atol=1e-6)
    assert sc.forwards == 5 and sc.model_seconds > 0
    sg = ClipScorer(be, protos, 7.0, family="sigmoid", logit_bias=-2.0)
    np.testing.assert_allclose(sg.probs(x).numpy(), torch.sigmoid(7.0 * f @ protos.T - 2.0).numpy(), atol=1e-6)
    with pytest.raises(UsageError, match="at least 2 classes"):
        ClipScorer(be, protos[:1], 7.0)
    with pytest.raises(UsageError, match="dimension"):
        ClipScorer(be, torch.ones(3, 5), 7.0)


def test_text_prototypes_average_of_unit_templates() -> None:
    be = FakeBackend()
    t = text_prototypes(be, [["a {}", "b"], ["c"]])
    raw = F.normalize(be.encode_texts(["a {}", "b"]), dim=-1)
    np.testing.assert_allclose(t[0].numpy(), F.normalize(raw.mean(0), dim=0).numpy(), atol=1e-6)
    np.testing.assert_allclose(t.norm(dim=1).numpy(), 1.0, atol=1e-6)
    with pytest.raises(UsageError, match="no prompt"):
        text_prototypes(be, [["a"], []])


class TimmLike(torch.nn.Module):
    """The timm classifier interface: forward_features, forward_head(pre_logits=...), num_classes."""

    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3)
        self.fc = torch.nn.Linear(6, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))

    def forward_head(self, h: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = h.mean((2, 3))
        return pooled if pre_logits else self.fc(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def test_classifier_scorer_uses_pre_logits() -> None:
    m = TimmLike().eval()
    sc = ClassifierScorer(m)
    x = torch.randn(2, 3, 16, 16)
    f, p = sc.features_and_probs(x)
    with torch.no_grad():
        np.testing.assert_allclose(p.numpy(), torch.softmax(m(x), -1).numpy(), atol=1e-6)
        pre = m.forward_head(m.forward_features(x), pre_logits=True)
    np.testing.assert_allclose(f.numpy(), F.normalize(pre, dim=-1).numpy(), atol=1e-6)
    assert sc.n_classes == 3 and sc.forwards == 2


def _setup(n_side: int = 3):
    be = FakeBackend()
    protos = F.normalize(torch.randn(3, 12, generator=torch.Generator().manual_seed(5)), dim=-1)
    sc = ClipScorer(be, protos, 20.0)
    x = torch.randn(3, 12, 12, generator=torch.Generator().manual_seed(2))
    b = torch.full_like(x, -1.0)
    lab = (torch.arange(12)[:, None] * n_side // 12) * n_side + torch.arange(12)[None, :] * n_side // 12
    masks = torch.stack([lab == i for i in range(n_side * n_side)])
    return sc, x, b, masks


def test_exact_terms_match_a_hand_evaluation_and_picks_are_argmax() -> None:
    sc, x, b, masks = _setup()
    nb = np.ones((12, 12), bool)
    r = attribute(sc, x, b, masks, 1, SmdlConfig(record_candidates=True), nb)
    n = masks.shape[0]
    assert sorted(r.order.tolist()) == list(range(n))
    assert r.forwards == n + 1 + n * (n + 1)
    union = torch.zeros(12, 12, dtype=torch.bool)
    feats = sc.features(torch.where(masks[:, None], x, b))
    d = distance_matrix(feats)
    for j, a in enumerate(r.order.tolist()):
        union = union | masks[a]
        p_in = sc.probs(torch.where(union, x, b)[None])
        p_out = sc.probs(torch.where(~union, x, b)[None])
        kept = r.order[: j + 1].tolist()
        eff = 0.0 if j == 0 else sum(min(float(d[i, k]) for k in kept if k != i) for i in kept)
        assert r.consistency[j] == pytest.approx(float(p_in[0, 1]), abs=1e-6)
        assert r.collaboration[j] == pytest.approx(1 - float(p_out[0, 1]), abs=1e-6)
        assert r.confidence[j] == pytest.approx(float(confidence_term(p_in, 1, "softmax")[0]), abs=1e-6)
        assert r.effectiveness[j] == pytest.approx(eff, abs=1e-5)
        assert r.objective[j] == pytest.approx(0.05 * eff + float(p_in[0, 1]) + 1 - float(p_out[0, 1]), abs=1e-5)
    for step in r.extra["candidates"]:  # the pick is the first maximum among candidates
        obj = step["objective"]
        pick = r.order[step["step"]]
        assert step["candidates"][int(np.argmax(obj))] == pick
    assert r.p_black == pytest.approx(float(sc.probs(b[None])[0, 1]), abs=1e-6)
    assert r.area_ins[0] == 0 and r.area_ins[-1] == 1 and r.area_del[0] == 0 and r.area_del[-1] == 1


def test_k_stops_early_and_counts_forwards() -> None:
    sc, x, b, masks = _setup()
    r = attribute(sc, x, b, masks, 0, SmdlConfig(k=3), np.ones((12, 12), bool))
    n = 9
    assert len(r.order) == 3 and len(r.area_ins) == 4
    assert r.forwards == n + 1 + 1 + 2 * (9 + 8 + 7)  # features, full, black, three steps


def test_bidirectional_and_lazy_rank_everything() -> None:
    sc, x, b, masks = _setup(4)
    nb = np.ones((12, 12), bool)
    ex = attribute(sc, x, b, masks, 2, SmdlConfig(), nb)
    for cfg in (SmdlConfig(search="bidirectional", pending=4), SmdlConfig(search="lazy"),
                SmdlConfig(search="bidirectional", lazy=True, pending=4)):
        r = attribute(sc, x, b, masks, 2, cfg, nb)
        assert sorted(r.order.tolist()) == list(range(16))
        assert r.forwards < ex.forwards
        assert np.isfinite(r.consistency).all() and len(r.objective) == 16
        # the last stitched point keeps everything: p(full) and 1 − p(fill only)
        assert r.consistency[-1] == pytest.approx(r.p_full, abs=1e-6)
        assert r.collaboration[-1] == pytest.approx(1 - r.p_black, abs=1e-6)
    bi = attribute(sc, x, b, masks, 2, SmdlConfig(search="bidirectional", pending=4), nb)
    assert bi.front_len is not None and "consistency_decrease" in bi.extra


def test_lazy_first_step_reuses_the_element_forwards_and_matches_exact() -> None:
    # k = 1: lazy's first step evaluates every candidate, like exact, but its insertion images (each element alone on
    # the fill) are the element-feature forwards, so only the n complements are forwarded.
    sc, x, b, masks = _setup()
    nb = np.ones((12, 12), bool)
    n = 9
    ex = attribute(sc, x, b, masks, 1, SmdlConfig(k=1), nb)
    lz = attribute(sc, x, b, masks, 1, SmdlConfig(search="lazy", k=1), nb)
    assert ex.forwards == n + 1 + 1 + 2 * n and lz.forwards == n + 1 + 1 + n
    assert lz.order.tolist() == ex.order.tolist()
    for t in ("confidence", "effectiveness", "consistency", "collaboration", "objective"):
        assert getattr(lz, t)[0] == pytest.approx(float(getattr(ex, t)[0]), abs=1e-6)


def test_lazy_refresh_every_step_is_exact_greedy_and_stale_trigger_counts() -> None:
    sc, x, b, masks = _setup(4)
    nb = np.ones((12, 12), bool)
    ex = attribute(sc, x, b, masks, 2, SmdlConfig(), nb)
    every = attribute(sc, x, b, masks, 2, SmdlConfig(search="lazy", lazy_refresh=1), nb)
    assert every.order.tolist() == ex.order.tolist()  # all candidates fresh at every step = plain greedy
    np.testing.assert_allclose(every.objective, ex.objective, atol=1e-6)
    # lazy_stale 0: any overestimate of the best gain by the stale bounds refreshes the next step; a huge value never.
    eager = attribute(sc, x, b, masks, 2, SmdlConfig(search="lazy", lazy_stale=0.0, lazy_budget=0), nb)
    never = attribute(sc, x, b, masks, 2, SmdlConfig(search="lazy", lazy_stale=1e9, lazy_budget=0), nb)
    assert never.extra["lazy_stale_triggers"] == 0
    assert eager.extra["lazy_stale_triggers"] > 0
    assert eager.extra["lazy_refreshes"] > never.extra["lazy_refreshes"]  # a trigger may fall on a periodic step
    assert eager.forwards > never.forwards
    assert never.extra["lazy_stale"] == 1e9 and never.extra["lazy_batch"] == 4


def test_lazy_budget_caps_the_optional_work() -> None:
    # 49 regions: exact counts 2,500 forwards. With every stale step triggering a refresh (lazy_stale 0) and no cap,
    # lazy spends more than a third of that; the default cap (1/3 → 833) skips refreshes and extra batches instead.
    sc, x, b, masks = _setup(7)
    nb = np.ones((12, 12), bool)
    free = attribute(sc, x, b, masks, 0, SmdlConfig(search="lazy", lazy_stale=0.0, lazy_budget=0), nb)
    capped = attribute(sc, x, b, masks, 0, SmdlConfig(search="lazy", lazy_stale=0.0), nb)
    assert free.forwards > 833 >= capped.forwards
    assert capped.extra["lazy_budget"] == 833 and capped.extra["lazy_skipped_for_budget"] > 0
    assert free.extra["lazy_budget"] is None and free.extra["lazy_skipped_for_budget"] == 0
    assert sorted(capped.order.tolist()) == list(range(49))


def test_counterfactual_records_p_pred() -> None:
    sc, x, b, masks = _setup()
    nb = np.ones((12, 12), bool)
    pred = int(sc.probs(x[None])[0].argmax())
    other = (pred + 1) % 3
    r = attribute(sc, x, b, masks, other, SmdlConfig(record_counterfactual=True), nb)
    assert r.prediction == pred and r.p_pred is not None and len(r.p_pred) == 9
    assert r.p_pred[-1] == pytest.approx(float(sc.probs(x[None])[0, pred]), abs=1e-6)
    assert attribute(sc, x, b, masks, pred, SmdlConfig(record_counterfactual=True), nb).p_pred is None


def test_warnings_for_flat_or_saturated_scores() -> None:
    sc, x, b, masks = _setup()
    flat = ClipScorer(sc.backend, sc.text, 1e-4)
    r = attribute(flat, x, b, masks, 0, SmdlConfig(k=1), np.ones((12, 12), bool))
    assert any("near-uniform" in w for w in r.extra["warnings"])


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (SmdlConfig(search="greedy"), "unknown search"),
        (SmdlConfig(k=0), "--k"),
        (SmdlConfig(lazy=True), "bidirectional"),
        (SmdlConfig(max_batch=-1), "max-batch"),
        (SmdlConfig(search="lazy", lazy_stale=-0.1), "lazy-stale"),
        (SmdlConfig(search="lazy", lazy_budget=1.5), "lazy-budget"),
        (SmdlConfig(lambdas=(0, 1, float("nan"), 1)), "finite"),
    ],
)
def test_bad_configs(cfg: SmdlConfig, message: str) -> None:
    sc, x, b, masks = _setup()
    with pytest.raises(UsageError, match=message):
        attribute(sc, x, b, masks, 0, cfg, np.ones((12, 12), bool))


def test_bad_masks_and_target() -> None:
    sc, x, b, masks = _setup()
    nb = np.ones((12, 12), bool)
    with pytest.raises(UsageError, match="out of range"):
        attribute(sc, x, b, masks, 3, SmdlConfig(), nb)
    with pytest.raises(UsageError, match="disjoint"):
        attribute(sc, x, b, torch.cat([masks, masks[:1]]), 0, SmdlConfig(), nb)
    with pytest.raises(UsageError, match="at least 2"):
        attribute(sc, x, b, torch.ones(1, 12, 12, dtype=torch.bool), 0, SmdlConfig(), nb)
    with pytest.raises(UsageError, match="differ in size"):
        attribute(sc, x, b, masks[:, :6], 0, SmdlConfig(), nb)


def test_bidirectional_without_back_list_is_exact() -> None:
    """With P ≥ n no back list is built: the order and curves are exact greedy's."""
    sc, x, b, masks = _setup()
    nb = np.ones((12, 12), bool)
    ex = attribute(sc, x, b, masks, 1, SmdlConfig(), nb)
    bi = attribute(sc, x, b, masks, 1, SmdlConfig(search="bidirectional", pending=20), nb)
    assert bi.order.tolist() == ex.order.tolist() and bi.front_len == 9
    np.testing.assert_allclose(bi.consistency, ex.consistency, atol=1e-6)
    np.testing.assert_allclose(bi.collaboration, ex.collaboration, atol=1e-6)
