"""`xaiclip eval` commands end to end: smdl (compact + legacy layouts), localization on toy cells, bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.metrics.test_insertion_deletion import C, Q, _oracle_regions, _reference_evaluator
from xaiclip_cli.cli.main import app

runner = CliRunner()


def _run(args: list[str], code: int = 0) -> dict:
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == code, r.output
    if code in (0, 3):
        return json.loads(r.stdout)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    return {"stderr": r.stderr}


def _rows(p: Path) -> list[dict[str, str]]:
    with open(p, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------------------ smdl
def _compact(out: Path, target: str, stem: str, area: list[float], c: list[float], q: list[float],
             done: bool = True) -> None:
    d = out / "items" / target
    d.mkdir(parents=True, exist_ok=True)
    k = len(c)
    np.savez_compressed(d / f"{stem}.npz", labels=np.zeros((4, 4), np.int16), order=np.arange(k, dtype=np.int16),
                        consistency=np.float32(c), collaboration=np.float32(q), area_ins=np.float32(area),
                        area_del=np.float32(area))
    (d / f"{stem}.json").write_text(json.dumps({"path": f"/img/{stem}.png", "target": target}))
    if done:
        (d / f"{stem}.done").write_text("")


def test_smdl_compact_protocol_example(tmp_path: Path) -> None:
    res = tmp_path / "attrib"
    _compact(res, "cat", "a", [0, 0.25, 0.5, 0.75], C, Q)
    _compact(res, "cat", "b", [0, 0.25, 0.5, 0.75], C, Q, done=False)  # unfinished: skipped, counted
    (res / "run.json").write_text(json.dumps({"config": {"division": "slico", "lambdas": [0, 0.05, 1, 1]}}))
    out = tmp_path / "ev"
    doc = _run(["eval", "smdl", "--results", str(res), "--output-dir", str(out), "--bootstrap", "50"])
    assert doc["evaluated"] == 1 and doc["skipped"] == {"incomplete": 1}
    full = json.loads((out / "eval.json").read_text())
    # float32 storage of the lists: exact to float32 precision
    assert full["metrics"]["insertion_auc"]["mean"] == pytest.approx(0.44375, abs=1e-7)
    assert full["metrics"]["deletion_auc"]["mean"] == pytest.approx(0.25625, abs=1e-7)
    rows = _rows(out / "per_image.csv")
    assert [r["status"] for r in rows] == ["ok", "skipped"] and rows[1]["insertion_auc"] == ""
    z = np.load(out / "curves.npz")
    np.testing.assert_allclose(z["x_insertion"][0], [0, 0.25, 0.5, 0.75], atol=1e-7)
    assert (out / "curves.png").stat().st_size > 1000


def test_smdl_legacy_layout_equals_reference_evaluator(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "export" / "slico-0.0-0.05-1.0-1.0"
    refs = []
    for cls in ("cat", "dog"):
        for j in range(2):
            h = 10
            img = rng.integers(1, 256, (h, h, 3)).astype(np.uint8)
            img[rng.random((h, h)) < 0.15] = 0
            lab = rng.integers(0, 5, (h, h))
            regions = np.stack([np.where((lab == k)[..., None], img, 0) for k in rng.permutation(5)]).astype(np.uint8)
            (root / "npy" / cls).mkdir(parents=True, exist_ok=True)
            (root / "json" / cls).mkdir(parents=True, exist_ok=True)
            np.save(root / "npy" / cls / f"im{j}.npy", regions)
            (root / "json" / cls / f"im{j}.json").write_text(json.dumps({
                "consistency_score": np.sort(rng.random(5)).tolist(),
                "collaboration_score": np.sort(rng.random(5)).tolist()}))
            refs.append(_reference_evaluator(root / "npy" / cls / f"im{j}.npy", root / "json" / cls / f"im{j}.json"))
    out = tmp_path / "ev"
    _run(["eval", "smdl", "--results", str(tmp_path / "export"), "--output-dir", str(out), "--bootstrap", "0"])
    full = json.loads((out / "eval.json").read_text())
    ref = np.array(refs)
    assert abs(full["metrics"]["insertion_auc"]["mean"] - ref[:, 0].mean()) < 1e-9
    assert abs(full["metrics"]["deletion_auc"]["mean"] - ref[:, 1].mean()) < 1e-9
    assert set(full["per_class"]) == {"cat", "dog"}
    # oracle regions through the legacy layout too
    (root / "npy" / "cat" / "im0.npy").unlink()
    np.save(root / "npy" / "cat" / "im0.npy", _oracle_regions())
    (root / "json" / "cat" / "im0.json").write_text(json.dumps({"consistency_score": C, "collaboration_score": Q}))
    (root / "json" / "dog" / "im1.json").unlink()  # missing json: skipped and counted
    doc = _run(["eval", "smdl", "--results", str(tmp_path / "export"), "--output-dir", str(out), "--overwrite"])
    assert doc["skipped"] == {"missing_json": 1}
    rows = {r["image"]: r for r in _rows(out / "per_image.csv")}
    assert float(rows["cat/im0"]["insertion_auc"]) == pytest.approx(0.44375, abs=1e-12)
    assert float(rows["cat/im0"]["deletion_auc"]) == pytest.approx(0.25625, abs=1e-12)


def test_smdl_refuses_attrib_folders_with_different_configs(tmp_path: Path) -> None:
    for name, lam in (("a", [0, 0.05, 1, 1]), ("b", [1, 1, 1, 1])):
        _compact(tmp_path / name, "cat", "x", [0, 0.25, 0.5, 0.75], C, Q)
        (tmp_path / name / "run.json").write_text(json.dumps({"config": {"division": "slico", "lambdas": lam}}))
    r = _run(["eval", "smdl", "--results", str(tmp_path / "a"), "--results", str(tmp_path / "b"),
              "--output-dir", str(tmp_path / "o")], code=2)
    assert "different attrib config" in r["stderr"] and "lambdas" in r["stderr"]
    # the same check guards attrib folders given as rank maps
    r = _run(["eval", "localization", "--maps", str(tmp_path / "a"), "--maps", str(tmp_path / "b"), "--dataset",
              "toycells", "--output-dir", str(tmp_path / "o")], code=2)
    assert "different attrib config" in r["stderr"]
    r = _run(["eval", "smdl", "--results", str(tmp_path / "none"), "--output-dir", str(tmp_path / "o")], code=2)
    assert "no such folder" in r["stderr"]


# ----------------------------------------------------------------------------------------------- localization
@pytest.fixture(scope="module")
def toy_maps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Maps drawn from the toy cells' own masks (a perfect explainer) in cam-run layout with sidecars."""
    from xaiclip_cli.data.toycells import ToyCellsSource

    src = ToyCellsSource()
    d = tmp_path_factory.mktemp("maps") / "test"
    d.mkdir()
    for i in range(6):
        m = src.get("test", i).mask.astype(np.float64)
        np.savez(d / f"test_{i:05d}_perfect_x.npz", raw=m, map=m)
        (d / f"test_{i:05d}_perfect_x.json").write_text(json.dumps({
            "image": {"dataset": "toycells", "split": "test", "index": i}, "method": "perfect",
            "target_name": "x", "target_index": 0, "target_score": 0.1 * i}))
    return d.parent


def test_localization_perfect_maps_on_toycells(toy_maps: Path, tmp_path: Path) -> None:
    out = tmp_path / "loc"
    doc = _run(["eval", "localization", "--maps", str(toy_maps), "--output-dir", str(out), "--bootstrap", "100",
                "--thresholds", "0.25:0.75:0.25"])
    m = {r["metric"]: r["mean"] for r in doc["metrics"]}
    assert m["pointing_hit"] == 1.0 and m["energy"] == pytest.approx(1.0) and m["iou@0.5"] == pytest.approx(1.0)
    assert m["auprc"] == pytest.approx(1.0) and m["iou_mean"] == pytest.approx(1.0)
    full = json.loads((out / "eval.json").read_text())
    assert set(full["breakdown"]["mask_area"]) <= {"small", "medium", "large"}
    assert full["per_class"] and full["metrics"]["pointing_game_class_mean"]["mean"] == 1.0
    assert "confidence_link_spearman" in full["extra"]
    # alias
    _run(["eval", "localisation", "--maps", str(toy_maps), "--output-dir", str(tmp_path / "l2"), "--bootstrap", "0",
          "--thresholds", "otsu"])


def test_localization_bad_inputs(toy_maps: Path, tmp_path: Path) -> None:
    d = tmp_path / "maps"
    d.mkdir()
    np.save(d / "test_00000.npy", np.full((8, 8), np.nan))  # NaN map: skipped 'nan'
    np.save(d / "test_00001.npy", np.random.default_rng(0).random((8, 8)))
    np.save(d / "other.npy", np.ones((8, 8)))  # no mask for this stem
    masks = tmp_path / "masks"
    masks.mkdir()
    np.save(masks / "test_00000.npy", np.ones((16, 16), bool))
    np.save(masks / "test_00001.npy", np.zeros((16, 16), bool))  # empty mask: skipped 'empty_mask'
    doc = _run(["eval", "localization", "--maps", str(d), "--masks", str(masks), "--output-dir", str(tmp_path / "o"),
                "--bootstrap", "0"], code=3)
    assert doc["evaluated"] == 0
    full = json.loads((tmp_path / "o" / "eval.json").read_text())
    assert full["counts"]["skipped"] == {"nan": 1, "empty_mask": 1, "missing_mask": 1}
    assert full["counts"]["evaluated"] == 0
    r = _run(["eval", "localization", "--maps", str(d), "--output-dir", str(tmp_path / "o2")], code=2)
    assert "no masks" in r["stderr"]
    r = _run(["eval", "localization", "--maps", str(d), "--masks", str(tmp_path / "nope"),
              "--output-dir", str(tmp_path / "o3")], code=2)
    assert "no such folder" in r["stderr"]
    r = _run(["eval", "localization", "--maps", str(d), "--masks", str(masks), "--thresholds", "2",
              "--output-dir", str(tmp_path / "o4")], code=2)
    assert "thresholds" in r["stderr"]


def test_localization_mask_kind_nuclei(tmp_path: Path) -> None:
    from tests.data.conftest import make_npz, write_png
    from xaiclip_cli.data.toycells import ToyCellsSource

    src = ToyCellsSource()
    d = tmp_path / "maps"
    d.mkdir()
    for i in range(3):  # maps equal to the nuclei masks, paired with toy-cells rows by their stem
        np.save(d / f"test_{i:05d}.npy", src.get_mask("test", i, "nuclei").astype(np.float64))
    args = ["eval", "localization", "--maps", str(d), "--dataset", "toycells", "--bootstrap", "0"]
    doc = _run([*args, "--mask-kind", "nuclei", "--output-dir", str(tmp_path / "n")])
    m = {r["metric"]: r["mean"] for r in doc["metrics"]}
    assert m["iou@0.5"] == 1.0 and m["dice@0.5"] == 1.0 and m["pointing_hit"] == 1.0
    assert json.loads((tmp_path / "n" / "eval.json").read_text())["settings"]["mask_kind"] == "nuclei"
    doc = _run([*args, "--output-dir", str(tmp_path / "c")])
    m = {r["metric"]: r["mean"] for r in doc["metrics"]}
    hand = []
    for i in range(3):
        n, c = src.get_mask("test", i, "nuclei").astype(bool), src.get("test", i).mask.astype(bool)
        hand.append((n & c).sum() / (n | c).sum())
    assert m["iou@0.5"] == pytest.approx(np.mean(hand), abs=1e-12) and m["iou@0.5"] < 0.7
    assert json.loads((tmp_path / "c" / "eval.json").read_text())["settings"]["mask_kind"] == "cell"
    # refusals: one line, exit 2, no output folder
    masks = tmp_path / "masks"
    masks.mkdir()
    r = _run([*args, "--mask-kind", "nuclei", "--masks", str(masks), "--output-dir", str(tmp_path / "x1")], code=2)
    assert "--masks DIR" in r["stderr"] and not (tmp_path / "x1").exists()
    make_npz(tmp_path / "bloodmnist.npz")
    r = _run(["eval", "localization", "--maps", str(d), "--dataset", f"medmnist:{tmp_path / 'bloodmnist.npz'}",
              "--mask-kind", "nuclei", "--output-dir", str(tmp_path / "x2")], code=2)
    assert "has no nuclei masks" in r["stderr"] and not (tmp_path / "x2").exists()
    for cls in ("a", "b"):
        write_png(tmp_path / "imgs" / "test" / cls / "im.png", (10, 20, 30))
    r = _run(["eval", "localization", "--maps", str(d), "--dataset", f"folder:{tmp_path / 'imgs'}",
              "--mask-kind", "nuclei", "--output-dir", str(tmp_path / "x3")], code=2)
    assert "has no nuclei masks" in r["stderr"] and not (tmp_path / "x3").exists()
    r = runner.invoke(app, [*args, "--mask-kind", "nucleus", "--output-dir", str(tmp_path / "x4")])
    assert r.exit_code == 2 and "'cell', 'nuclei'" in r.stderr and not (tmp_path / "x4").exists()


def test_localization_tuned_threshold(toy_maps: Path, tmp_path: Path) -> None:
    doc = _run(["eval", "localization", "--maps", str(toy_maps), "--thresholds", "tuned", "--tune-maps",
                str(toy_maps), "--output-dir", str(tmp_path / "t"), "--bootstrap", "0"])
    m = {r["metric"]: r["mean"] for r in doc["metrics"]}
    assert m["iou@tuned"] == pytest.approx(1.0)
    assert any("tuned per class" in n for n in doc["notes"])
    r = _run(["eval", "localization", "--maps", str(toy_maps), "--thresholds", "tuned", "--output-dir",
              str(tmp_path / "t2")], code=2)
    assert "--tune-maps" in r["stderr"]
