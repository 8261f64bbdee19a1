"""eval faithfulness with the read-ahead thread: when it is used, and the same records bit for bit without it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xaiclip_cli.metrics import faithfulness_job as FJ

TEXTS = ["a lymphocyte", "a neutrophil", "an eosinophil"]


def test_depth_needs_a_free_core_or_cuda(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(FJ.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert FJ.read_ahead_depth("cpu") == FJ.READ_AHEAD == 2
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert FJ.read_ahead_depth("cpu") == 0  # torch takes both cores: sequential
    assert FJ.read_ahead_depth("cuda:0") == 2  # kernels are queued while the GPU runs the model


def _maps(d: Path, n: int) -> Path:
    d.mkdir()
    rng = np.random.default_rng(4)
    for i in range(n):
        phi = rng.random((8, 8)) if i != 3 else np.full((8, 8), np.nan)  # one skipped map inside a group
        np.save(d / f"test_{i:05d}.npy", phi)
        side = {"image": {"dataset": "toycells", "split": "test", "index": i},
                "texts": [{"name": t, "prompt": t} for t in (TEXTS if i % 2 else TEXTS[:2])]}
        if i % 3:
            side["target_index"] = 1
        (d / f"test_{i:05d}.json").write_text(json.dumps(side))
    return d


@pytest.mark.parametrize("target", ["sidecar", "best"])
def test_read_ahead_gives_the_sequential_records(tmp_path: Path, monkeypatch, target: str) -> None:
    from xaiclip_cli.config.eval import EvalSettings

    maps = _maps(tmp_path / "maps", 7)
    docs, files = {}, {}
    for depth in (0, 2):
        monkeypatch.setattr(FJ, "read_ahead_depth", lambda device, d=depth: d)
        out = tmp_path / f"out{depth}"
        # batch 9, steps 4: groups of 36 // 10 = 3 maps, two text sets per group, batches spanning maps and sets
        s = EvalSettings(backend="toy", model="toy-cnn", device="cpu", threads=1, maps=[maps], steps=4, batch_size=9,
                         target=target, output_dir=out, overwrite=True, bootstrap=20)
        docs[depth] = FJ.run(s)["doc"]
        files[depth] = {n: (out / n).read_bytes() for n in ("per_image.csv", "curves.npz")}
    assert files[0] == files[2]
    assert docs[0]["metrics"] == docs[2]["metrics"] and docs[0]["counts"] == docs[2]["counts"]
    assert docs[2]["counts"]["evaluated"] == 6 and docs[2]["counts"]["skipped"] == {"nan": 1}
    rows = (tmp_path / "out2" / "per_image.csv").read_text().splitlines()
    assert len(rows) == 8  # header + every map, the skipped one listed
    # map 1 by hand: its image, its three texts, target 1 (sidecar) — the unperturbed score is score_full
    if target == "sidecar":
        import csv

        from xaiclip_cli.data.refs import open_source
        from xaiclip_cli.metrics.scoring import TargetScorer
        from xaiclip_cli.models.registry import load_backend

        row = next(r for r in csv.DictReader(rows) if r["image"].startswith("test_00001"))
        sc = TargetScorer(load_backend("toy", "toy-cnn", device="cpu"), TEXTS, "softmax")
        img = open_source("toycells").get("test", 1).image
        x = sc.pixels([np.repeat(img[:, :, None], 3, 2) if img.ndim == 2 else img])
        assert row["target"] == TEXTS[1] and float(row["score_full"]) == pytest.approx(float(sc.scores(x)[0, 1]),
                                                                                       abs=1e-6)
