"""CLIP training: loss formula by hand, loss falls, resume == uninterrupted, run dir / export, the CLI command."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from xaiclip_cli.cli.main import app
from xaiclip_cli.config.train_clip import ClipTrainSettings
from xaiclip_cli.data.base import DataSource, Sample, SourceInfo
from xaiclip_cli.train.clip import retrieval_metrics, train_clip, zero_shot_metrics
from xaiclip_cli.train.clip_loss import clip_loss

TINY = {
    "image_model": "resnet10t", "image_kwargs": {"channels": [8, 8, 16, 16], "stem_width": 8, "output_stride": 8},
    "image_size": 32, "text_config": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                      "intermediate_size": 32},
    "context_length": 16, "embed_dim": 8, "batch_size": 16, "learning_rate": 3e-3, "warmup_epochs": 0,
    "weight_decay": 0.0, "device": "cpu", "threads": 1, "seed": 3,
}


class QuadrantSource(DataSource):
    """4 classes: a bright square in quadrant k of a dark noisy 32×32 image (easy, deterministic)."""

    names = ["top left", "top right", "bottom left", "bottom right"]

    def __init__(self, sizes: dict[str, int] | None = None) -> None:
        self.sizes = sizes or {"train": 64, "val": 16, "test": 16}

    def split_sizes(self) -> dict[str, int]:
        return dict(self.sizes)

    def get(self, split: str, index: int) -> Sample:
        rng = np.random.default_rng([len(split), index])
        label = index % 4
        img = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
        r, c = divmod(label, 2)
        img[r * 16 + 3:r * 16 + 13, c * 16 + 3:c * 16 + 13] = 230
        return Sample(image=img, label=label, split=split, index=index)

    def info(self) -> SourceInfo:
        return SourceInfo(kind="quadrants", ref="quadrants", class_names=list(self.names))


def settings(tmp_path: Path, **kw) -> ClipTrainSettings:
    return ClipTrainSettings(**{**TINY, "output_dir": tmp_path / "runs", "name": "r",
                                "templates": ["a square at the {label}", "{label}"], **kw})


def test_loss_equals_a_hand_computation_on_3x3() -> None:
    img = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=-1)
    txt = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.5, 0.5], [-0.3, 1.0]]), dim=-1)
    s, b = 2.0, -0.5
    sim = [[s * float(img[i] @ txt[j]) + b for j in range(3)] for i in range(3)]

    def ce_rows(m: list[list[float]], targets: list[list[float]]) -> float:
        total = 0.0
        for row, t in zip(m, targets, strict=True):
            lse = math.log(sum(math.exp(v) for v in row))
            total += -sum(tj * (v - lse) for v, tj in zip(row, t, strict=True))
        return total / len(m)

    eye = [[1.0 if i == j else 0.0 for j in range(3)] for i in range(3)]
    simt = [list(col) for col in zip(*sim, strict=True)]
    expected = 0.5 * (ce_rows(sim, eye) + ce_rows(simt, eye))
    assert float(clip_loss(img, txt, s, b)) == pytest.approx(expected, rel=1e-6)
    # Label-aware: samples 0 and 1 share a label, so each spreads its target over both.
    soft = [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]
    expected_soft = 0.5 * (ce_rows(sim, soft) + ce_rows(simt, soft))
    got = float(clip_loss(img, txt, s, b, labels=torch.tensor([4, 4, 1])))
    assert got == pytest.approx(expected_soft, rel=1e-6)
    # All labels distinct: label-aware equals the plain loss.
    assert float(clip_loss(img, txt, s, b, labels=torch.tensor([0, 1, 2]))) == pytest.approx(expected, rel=1e-6)


def test_eval_metrics_by_hand() -> None:
    img = torch.eye(3)
    protos = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    m = zero_shot_metrics(img, protos, torch.tensor([0, 1, 0]))
    assert m["zs_acc"] == pytest.approx(2 / 3)
    r = retrieval_metrics(img, torch.tensor([[0, 1.0, 0], [1.0, 0, 0], [0, 0, 1.0]]), ks=(1, 2))
    assert r["i2t_r1"] == pytest.approx(1 / 3) and r["t2i_r1"] == pytest.approx(1 / 3) and r["i2t_r2"] == 1.0
    g = retrieval_metrics(img, torch.tensor([[0, 1.0, 0], [1.0, 0, 0], [0, 0, 1.0]]),
                          groups=torch.tensor([0, 0, 1]), ks=(1,))
    assert g["i2t_r1"] == 1.0


def test_loss_falls_and_run_dir_and_export(tmp_path: Path) -> None:
    s = settings(tmp_path, epochs=4, label_aware=True)
    res = train_clip(s, QuadrantSource())
    run = Path(res["run_dir"])
    for f in ("config.yaml", "metrics.csv", "results.json", "checkpoints/last.pt", "checkpoints/best.pt",
              "export/xaiclip_clip.json", "export/model.safetensors", "export/tokenizer.json"):
        assert (run / f).is_file(), f
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"]) - 0.05
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 4
    results = json.loads((run / "results.json").read_text())
    assert results["best_epoch"] == res["best_epoch"] and "zs_acc" in results["test"]
    # best.pt holds the best epoch's weights, and the export is that model.
    best = torch.load(run / "checkpoints/best.pt", weights_only=True)
    assert best["epoch"] == res["best_epoch"]
    assert best["metric"] == pytest.approx(max(float(r["val_zs_auc"]) for r in rows))
    from safetensors.torch import load_file

    exported = load_file(str(run / "export/model.safetensors"))
    assert all(torch.equal(exported[k], v) for k, v in best["model"].items())
    meta = json.loads((run / "export/xaiclip_clip.json").read_text())
    assert meta["class_names"] == QuadrantSource.names and meta["templates"] == ["a square at the {label}", "{label}"]
    assert meta["image_size"] == 32 and meta["context_length"] == 16


def test_resume_after_stop_equals_uninterrupted_run(tmp_path: Path) -> None:
    full = train_clip(settings(tmp_path / "a", epochs=3, augment=True), QuadrantSource())
    part = train_clip(settings(tmp_path / "b", epochs=3, augment=True), QuadrantSource(), stop_after_epochs=1)
    assert part["finished"] is False and part["epochs_run"] == 1
    with pytest.raises(Exception, match="not empty"):
        train_clip(settings(tmp_path / "b", epochs=3, augment=True), QuadrantSource())
    resumed = train_clip(settings(tmp_path / "b", epochs=3, augment=True, resume=True), QuadrantSource())
    assert resumed["finished"] is True and resumed["epochs_run"] == 3
    a = torch.load(Path(full["run_dir"]) / "checkpoints/last.pt", weights_only=True)
    b = torch.load(Path(resumed["run_dir"]) / "checkpoints/last.pt", weights_only=True)
    assert a["step"] == b["step"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert [r["train_loss"] for r in a["rows"]] == [r["train_loss"] for r in b["rows"]]


def _pairs_csv(tmp_path: Path) -> Path:
    from PIL import Image

    src = QuadrantSource({"train": 20})
    rows = []
    for i in range(20):
        s = src.get("train", i)
        Image.fromarray(s.image).save(tmp_path / f"img{i}.png")
        rows.append({"path": f"img{i}.png", "caption": f"a square at the {src.names[s.label]}"})
    p = tmp_path / "pairs.csv"
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "caption"])
        w.writeheader()
        w.writerows(rows)
    return p


def test_cli_pairs_export_to_and_refusals(tmp_path: Path) -> None:
    pairs = _pairs_csv(tmp_path)
    cfg = tmp_path / "clip.yaml"
    cfg.write_text(yaml.safe_dump({"train": {**TINY, "epochs": 2}}))
    runner = CliRunner()
    args = ["train", "clip", "--config", str(cfg), "--pairs", str(pairs), "--output-dir", str(tmp_path / "runs"),
            "--name", "p", "--export-to", str(tmp_path / "model"), "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["select_metric"] == "val_mean_r1" and out["n_train"] == 18 and out["epochs_run"] == 2
    assert (tmp_path / "model" / "xaiclip_clip.json").is_file()
    from xaiclip_cli.models.registry import load_backend

    b = load_backend("checkpoint", model=str(tmp_path / "model"), device="cpu")
    assert b.image_size == 32 and b.token_grid == (4, 4)
    # Same run dir again without --resume: usage error (exit 2), one line on stderr.
    r2 = runner.invoke(app, [*args[:-3], "--json"])
    assert r2.exit_code == 2 and "not empty" in r2.stderr and len(r2.stderr.strip().splitlines()) == 1
    r3 = runner.invoke(app, [*args[:-4], "q", "--export-to", str(tmp_path / "model")])
    assert r3.exit_code == 2 and "--overwrite" in r3.stderr
    r4 = runner.invoke(app, ["train", "clip", "--pairs", str(tmp_path / "missing.csv"), "--output-dir",
                             str(tmp_path / "runs"), "--name", "m"])
    assert r4.exit_code == 2 and "missing.csv" in r4.stderr
    r5 = runner.invoke(app, ["train", "clip", "--image-kwargs", "[1, 2]"])
    assert r5.exit_code == 2 and "image_kwargs" in r5.stderr


def test_best_selection_breaks_saturated_ties_by_val_loss() -> None:
    from xaiclip_cli.train.clip import _better

    assert _better(0.9, 1.0, None, None)
    assert _better(0.95, 3.0, 0.9, 1.0)  # higher metric wins whatever the loss
    assert not _better(0.9, 1.0, 0.9, 1.0)  # a full tie keeps the earlier epoch
    assert _better(1.0, 0.5, 1.0, 0.7) and not _better(1.0, 0.8, 1.0, 0.7)
    assert not _better(float("nan"), 0.1, 0.5, 1.0)


def test_image_pool_settings_reach_the_model_spec(tmp_path: Path) -> None:
    from xaiclip_cli.models.clip_model import ClipModel
    from xaiclip_cli.models.text_tower import build_tokenizer
    from xaiclip_cli.train.clip import model_spec

    tok = build_tokenizer(["a square at the top left"], 16)
    plain = model_spec(settings(tmp_path), tok)
    assert "pool" not in plain["image_tower"]  # the default keeps the timm head and the old spec
    spec = model_spec(settings(tmp_path, image_pool="attn", image_pool_heads=2), tok)
    assert spec["image_tower"]["pool"] == "attn" and spec["image_tower"]["pool_heads"] == 2
    m = ClipModel.from_spec(spec)
    assert m.image_pool is not None and m.image_pool.num_heads == 2 and m.image_pool.feat_size == (4, 4)
    learned = model_spec(settings(tmp_path, image_pool="attn", image_pool_query="learned"), tok)
    assert learned["image_tower"]["pool_query"] == "learned" and "pool_heads" not in learned["image_tower"]
    assert ClipModel.from_spec(learned).image_pool.cls_token is not None
    runner = CliRunner()
    r = runner.invoke(app, ["train", "clip", "--image-pool", "attn", "--image-pool-heads", "2", "--print-config"])
    assert r.exit_code == 0, r.output
    printed = yaml.safe_load(r.stdout)["train"]
    assert printed["image_pool"] == "attn" and printed["image_pool_heads"] == 2
    bad = runner.invoke(app, ["train", "clip", "--image-pool", "max"])
    assert bad.exit_code == 2 and "max" in bad.stderr
