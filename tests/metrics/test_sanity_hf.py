"""Sanity tower walk on Hugging Face towers (metrics.md §9: HF `encoder.layers` and the projection): tiny CLIP and
SigLIP built offline from configs; the units in order with their names, and `randomise` touching exactly one unit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xaiclip_cli.metrics import sanity as S

# Forward order (input side first); top-down cascading walks these lists backwards.
EXPECTED = {
    "clip": {
        "image": ["visual.embeddings", "visual.pre_layrnorm", "visual.encoder.layers.0", "visual.encoder.layers.1",
                  "visual.post_layernorm", "visual_projection"],
        "text": ["text.embeddings", "text.encoder.layers.0", "text.final_layer_norm", "text_projection"],
    },
    "siglip": {  # SigLIP has no separate projection: the vision MAP head and the text head project
        "image": ["visual.embeddings", "visual.encoder.layers.0", "visual.encoder.layers.1", "visual.post_layernorm",
                  "visual.head"],
        "text": ["text.embeddings", "text.encoder.layers.0", "text.final_layer_norm", "text.head"],
    },
}


@pytest.fixture(scope="module", params=["clip", "siglip"])
def hf(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from tests.models.conftest import build_tiny_clip, build_tiny_siglip
    from xaiclip_cli.models.hf import load_hf

    build = build_tiny_clip if request.param == "clip" else build_tiny_siglip
    d: Path = build(tmp_path_factory.mktemp(f"sanity_hf_{request.param}"))
    return request.param, load_hf(str(d), device="cpu")


def test_tower_units_names_and_order(hf) -> None:  # noqa: ANN001
    kind, backend = hf
    m = backend.model
    for tower in ("image", "text"):
        units = S.tower_units(backend, tower)
        assert [n for n, _ in units] == EXPECTED[kind][tower]
    # The units are the model's own modules (randomising them changes the backend), in the model's layer order.
    img = dict(S.tower_units(backend, "image"))
    assert img["visual.encoder.layers.1"] is m.vision_model.encoder.layers[1]
    assert img["visual.embeddings"] is m.vision_model.embeddings
    txt = dict(S.tower_units(backend, "text"))
    assert txt["text.encoder.layers.0"] is m.text_model.encoder.layers[0]
    snap = S.Snapshot(m)
    try:
        names, _ = S.randomisation_curve(lambda: [], S.tower_units(backend, "image"), seed=0)
        up, _ = S.randomisation_curve(lambda: [], S.tower_units(backend, "text"), order="bottom-up", seed=0)
    finally:
        snap.restore()  # the curves re-initialised the towers
    assert names == ["trained", *EXPECTED[kind]["image"][::-1]]  # top-down: projection/head first
    assert up == ["trained", *EXPECTED[kind]["text"]]


@pytest.mark.parametrize("tower,unit", [("image", "visual.encoder.layers.0"), ("image", -1), ("text", 0),
                                        ("text", "text.encoder.layers.0")])
def test_randomise_changes_exactly_that_unit(hf, tower: str, unit) -> None:  # noqa: ANN001
    kind, backend = hf
    m = backend.model
    snap = S.Snapshot(m)
    try:
        with torch.no_grad():  # "train" first: HF inits LayerNorms at 1/0, which their reset would reproduce
            g = torch.Generator().manual_seed(1)
            for p in m.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        units = S.tower_units(backend, tower)
        name, mod = units[unit] if isinstance(unit, int) else next(u for u in units if u[0] == unit)
        mine = {id(p) for p in mod.parameters()}
        before = {n: p.detach().clone() for n, p in m.named_parameters()}
        S.randomise(mod, seed=3)
        changed = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
        inside = {n for n, p in m.named_parameters() if id(p) in mine}
        assert inside and changed == inside, (name, sorted(inside ^ changed))
        # Seeded: the same seed re-draws the same values.
        first = {n: p.detach().clone() for n, p in m.named_parameters() if n in inside}
        S.randomise(mod, seed=3)
        assert all(torch.equal(p, first[n]) for n, p in m.named_parameters() if n in inside)
    finally:
        snap.restore()
    assert all(torch.equal(p, snap.state[n]) for n, p in m.named_parameters())
