"""End to end on the shipped toy model: store text + store image --limit, then db verify/summarize/sample.

Values are checked against a direct encode of the same images and prompts by the same backend.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from xaiclip_cli.cli.main import app
from xaiclip_cli.resources import resource_dir

pytestmark = pytest.mark.skipif(not (resource_dir("toy", "toy-vit") / "xaiclip_clip.json").is_file(),
                                reason="shipped toy-vit model not present")

runner = CliRunner()
LIMIT = 6  # images per split


def _run(args: list[str], code: int = 0) -> dict:
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == code, r.output
    return json.loads(r.stdout) if r.stdout.strip() else {}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    h5 = tmp_path_factory.mktemp("e2e") / "toy.h5"
    t = _run(["store", "text", "--h5", str(h5), "--prompts", "toycells", "--device", "cpu", "--threads", "1"])
    assert t["written"] > 0 and t["skipped"] == 0
    i = _run(["store", "image", "--h5", str(h5), "--dataset", "toycells", "--limit", str(LIMIT), "--batch-size", "4",
              "--part-rows", "8", "--device", "cpu", "--threads", "1"])
    # Written as 3 parts (crash safety), finished as one self-contained file.
    assert (i["rows_total"], i["rows_written"], i["complete"], i["parts_total"]) == (3 * LIMIT, 3 * LIMIT, True, 1)
    assert i["layout"] == "single" and not h5.with_name("toy.parts").exists()
    return h5


@pytest.fixture(scope="module")
def backend():  # noqa: ANN201 - a ClipBackend
    from xaiclip_cli.models.registry import load_backend

    return load_backend("toy", "toy-vit", device="cpu")


def test_db_verify_summarize_sample(store: Path, tmp_path: Path) -> None:
    v = _run(["db", "verify", "--h5", str(store), "--require-complete", "--full"])
    assert v["ok"] is True, v
    s = _run(["db", "summarize", "--h5", str(store)])
    assert s["split_counts"] == {"train": LIMIT, "val": LIMIT, "test": LIMIT}
    assert s["ids_preview"] == [0, 1, 2, 3, 4]
    assert s["image_features"][0] == 3 * LIMIT and s["image_token_features"][0] == 3 * LIMIT
    assert s["provenance"]["model_id"] and s["n_templates"] > 0
    out = tmp_path / "row0.npz"
    smp = _run(["db", "sample", "0", "--h5", str(store), "--out", str(out)])
    assert (smp["id"], smp["split"]) == (0, "train")
    with np.load(out) as z, h5py.File(store, "r") as f:
        np.testing.assert_array_equal(z["image_feature"], f["image_features"][0])
        np.testing.assert_array_equal(z["image_token_feature"], f["image_token_features"][0])
        assert int(f.attrs["dataset_limit"]) == LIMIT


def test_values_match_a_direct_encode(store: Path, backend) -> None:  # noqa: ANN001
    from xaiclip_cli.data.refs import open_source

    src = open_source("toycells")
    with h5py.File(store, "r") as f:
        cls, tok = f["image_features"][...], f["image_token_features"][...]
        labels, split = f["labels"][...], [s.decode() for s in f["split"][...]]
        groups = {n: (g["text_features"][...], [t.decode() for t in g["texts"][...]], int(g.attrs["max_length"]))
                  for n, g in f["templates"].items()}
    row = 0
    for sp in ("train", "val", "test"):
        samples = src.get_many(sp, list(range(LIMIT)))
        with torch.inference_mode():
            g, t = backend.encode_image(backend.preprocess([s.image for s in samples]))
        sl = slice(row, row + LIMIT)
        np.testing.assert_allclose(cls[sl], g.float().numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(tok[sl].astype(np.float32), t.to(torch.float16).float().numpy(),
                                   atol=2e-3, rtol=2e-3)  # fp16 storage: one ulp at the values' scale
        assert list(labels[sl]) == [s.label for s in samples] and split[sl] == [sp] * LIMIT
        row += LIMIT
    for name, (feats, texts, max_length) in groups.items():
        assert max_length == backend.context_length
        ids, mask = backend.tokenize(texts, max_length=max_length)
        with torch.inference_mode():
            g, _ = backend.encode_text(ids, mask)
        np.testing.assert_allclose(feats, g.float().numpy(), atol=1e-5, rtol=0, err_msg=name)


def test_rerun_is_a_noop_and_limit_change_is_refused(store: Path) -> None:
    args = ["store", "image", "--h5", str(store), "--dataset", "toycells", "--part-rows", "8", "--device", "cpu"]
    again = _run([*args, "--limit", str(LIMIT)])
    assert again["rows_written"] == 0 and again["rows_skipped"] == 3 * LIMIT
    r = runner.invoke(app, [*args, "--limit", str(LIMIT + 1)])
    assert r.exit_code == 2 and "--overwrite" in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.slow
def test_gpus_spawn_path_on_cpu_matches_one_process(store: Path, tmp_path: Path) -> None:
    """--gpus 0,1 --device cpu: two spawned workers share the parts, then the automatic merge (no GPU needed)."""
    h5 = tmp_path / "spawn.h5"
    res = _run(["store", "image", "--h5", str(h5), "--dataset", "toycells", "--limit", str(LIMIT), "--part-rows", "4",
                "--batch-size", "4", "--gpus", "0,1", "--device", "cpu", "--threads", "1"])
    assert (res["world"], res["rows_written"], res["complete"], res["parts_total"]) == (2, 3 * LIMIT, True, 5)
    assert res["layout"] == "single" and not (tmp_path / "spawn.parts").exists()  # merged into one file
    assert _run(["db", "verify", "--h5", str(h5), "--require-complete", "--full"])["ok"] is True
    with h5py.File(h5, "r") as a, h5py.File(store, "r") as b:
        np.testing.assert_allclose(a["image_features"][...], b["image_features"][...], atol=1e-5, rtol=0)
        np.testing.assert_allclose(a["image_token_features"][...].astype(np.float32),
                                   b["image_token_features"][...].astype(np.float32), atol=2e-3, rtol=2e-3)
        assert a["labels"][...].tolist() == b["labels"][...].tolist()
