"""`xaiclip attrib run|merge|show|export|baseline` end to end on the shipped toy-vit and toy cells: outputs, resume
after SIGKILL (one process and two CPU workers), merge checks, and every bad input's exit code and message."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xaiclip_cli.cli.main import app

REPO = Path(__file__).resolve().parents[2]
FAST = ["--division", "grid", "--grid", "3", "--threads", "1", "--device", "cpu"]  # 9 regions: 100 forwards/image


def _run(args: list[str]):
    return CliRunner().invoke(app, args)


def _ok(args: list[str]) -> dict:
    r = _run([*args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _npzs(out: Path) -> dict[str, dict[str, np.ndarray]]:
    res = {}
    for p in sorted((out / "items").rglob("*.npz")):
        with np.load(p) as z:
            res[p.relative_to(out).as_posix()] = {k: z[k] for k in z.files}
    return res


def _write_images(folder: Path, n: int, size: int = 40) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    out = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size + 6, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("attrib") / "run"
    res = _ok(["attrib", "run", "--dataset", "toycells", "--limit", "2", *FAST, "--output-dir", str(out)])
    assert res["done"] == 2 and res["failed"] == 0 and res["planned"] == 2
    return out


def test_run_writes_results_sidecars_markers_and_config(toy_run) -> None:
    from xaiclip_cli.explain.smdl import load_npz

    doc = json.loads((toy_run / "run.json").read_text())
    assert doc["division"]["mode"] == "grid" and doc["lambdas"] == [0.0, 0.05, 1.0, 1.0]
    assert doc["score"] == "softmax" and doc["image_size"] == 64 and doc["colour"] == "rgb" and doc["fill"] == "black"
    assert doc["model"]["weights_sha256"] and doc["inputs_sha256"] and doc["versions"]["torch"]
    assert doc["logit_scale"] == pytest.approx(14.4079, abs=1e-3)  # the toy model's exp(logit_scale), recorded
    assert [p["key"] for p in doc["plan"]["items"]] == ["test/test_00000", "test/test_00001"]
    from xaiclip_cli.data.refs import open_source

    src = open_source("toycells")
    names = src.info().class_names
    for i, it in enumerate(doc["plan"]["items"]):
        base = toy_run / "items" / it["target"] / it["key"]
        assert it["target"] == names[src.get("test", i).label]  # default target: the dataset label
        side = json.loads(base.with_suffix(".json").read_text())
        assert base.with_suffix(".done").is_file() and base.with_suffix(".done").stat().st_size == 0
        assert side["regions"] == 9 and side["forwards"] == 9 + 1 + 9 * 10  # exact: n + 1 + n(n+1)
        assert side["target"]["name"] == it["target"] and side["target"]["rule"] == "label"
        npz = load_npz(base.with_suffix(".npz"))
        assert sorted(npz["order"].tolist()) == list(range(9)) and npz["labels"].shape == (64, 64)
        assert npz["area_ins"][0] == 0 and npz["area_ins"][-1] == pytest.approx(1.0)
        assert float(npz["p_full"]) == pytest.approx(side["p_full"])
    shard = json.loads((toy_run / "shards" / "worker-0-of-1.json").read_text())
    assert shard["done"] == 2 and shard["entries"] == [0, 2]


def test_rerun_skips_and_different_config_is_refused(toy_run) -> None:
    before = {p: p.stat().st_mtime_ns for p in (toy_run / "items").rglob("*.npz")}
    res = _ok(["attrib", "run", "--dataset", "toycells", "--limit", "2", *FAST, "--output-dir", str(toy_run)])
    assert res["skipped"] == 2 and res["done"] == 0
    assert {p: p.stat().st_mtime_ns for p in (toy_run / "items").rglob("*.npz")} == before
    run_json = (toy_run / "run.json").read_text()
    r = _run(["attrib", "run", "--dataset", "toycells", "--limit", "2", *FAST, "--lambdas", "0,1,1,1",
              "--output-dir", str(toy_run)])
    assert r.exit_code == 2, r.output
    assert "another attrib run" in r.output and "lambdas" in r.output
    assert (toy_run / "run.json").read_text() == run_json


def test_merge_show_export(toy_run, tmp_path) -> None:
    from xaiclip_cli.explain.smdl import load_npz, recorded_auc

    res = _ok(["attrib", "merge", str(toy_run)])
    assert res["planned"] == 2 and res["complete"] == 2 and res["missing"] == 0
    rows = [json.loads(x) for x in (toy_run / "index.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rows] == ["test/test_00000", "test/test_00001"]
    aucs = [recorded_auc(load_npz(toy_run / r["npz"])) for r in rows]
    assert res["insertion_auc_mean"] == pytest.approx(np.mean([a[0] for a in aucs]))
    assert res["deletion_auc_mean"] == pytest.approx(np.mean([a[1] for a in aucs]))
    summary = json.loads((toy_run / "summary.json").read_text())
    assert summary["complete"] == 2
    exp = _ok(["attrib", "export", str(toy_run), "--out", str(tmp_path / "ref")])
    assert exp["exported"] == 2 and Path(exp["out"]).name == "grid-0.0-0.05-1.0-1.0"
    npy = sorted(Path(exp["out"]).glob("npy/*/test_00000.npy"))[0]
    regions = np.load(npy)
    assert regions.shape == (9, 64, 64, 3) and regions.dtype == np.uint8
    js = json.loads(sorted(Path(exp["out"]).glob("json/*/test_00000.json"))[0].read_text())
    npz = load_npz(toy_run / rows[0]["npz"])
    assert js["sub-k"] == 9 and js["consistency_score"] == pytest.approx(npz["consistency"].tolist())
    assert js["smdl_score_max_index"] == int(np.argmax(npz["objective"]))
    try:
        import xaiclip_cli.viz.attrib_figure  # noqa: F401
    except ImportError:
        pytest.skip("viz.attrib_figure (branch baselines) not merged yet")
    show = _ok(["attrib", "show", str(toy_run), "--out", str(tmp_path / "fig")])
    assert len(show["items"]) == 2 and all(Path(i["png"]).is_file() for i in show["items"])
    assert show["items"][0]["insertion_auc"] == pytest.approx(aucs[0][0], abs=1e-6)
    assert show["items"][0]["max_objective_index"] == int(np.argmax(npz["objective"]))


def test_merge_refuses_incomplete_and_mixed(toy_run, tmp_path) -> None:
    import shutil

    part = tmp_path / "part"
    shutil.copytree(toy_run, part)
    victim = next((part / "items").rglob("test_00001.done"))
    victim.unlink()
    r = _run(["attrib", "merge", str(part)])
    assert r.exit_code == 3, r.output
    assert "test/test_00001" in r.output
    assert _run(["attrib", "merge", str(part), "--allow-partial"]).exit_code == 0
    other = tmp_path / "other"
    _ok(["attrib", "run", "--dataset", "toycells", "--limit", "1", *FAST, "--fill", "mean", "--output-dir", str(other)])
    r = _run(["attrib", "merge", str(toy_run), str(other)])
    assert r.exit_code == 2, r.output
    assert "fill" in r.output


def test_list_with_blank_lines_begin_end_and_targets(tmp_path) -> None:
    imgs = _write_images(tmp_path / "imgs" / "sub", 3)
    lst = tmp_path / "val.txt"
    # blank and comment lines are dropped before indexing; paths may contain spaces (split at the LAST space)
    (tmp_path / "imgs" / "with space.png").write_bytes(imgs[0].read_bytes())
    lst.write_text("\n# header\nsub/img0.png 1\n\nsub/img1.png b\nwith space.png 0\nsub/img2.png 1")
    out = tmp_path / "out"
    res = _ok(["attrib", "run", "--list", str(lst), "--image-root", str(tmp_path / "imgs"), "--classes", "a,b",
               "--begin", "1", "--end", "3", *FAST, "--output-dir", str(out), "--export-smdl", str(tmp_path / "x")])
    assert res["planned"] == 2 and res["done"] == 2
    ref = tmp_path / "x" / "grid-0.0-0.05-1.0-1.0"
    assert sorted(p.relative_to(ref).as_posix() for p in ref.rglob("*.json")) == ["json/a/with space.json",
                                                                                   "json/b/img1.json"]
    assert np.load(ref / "npy" / "b" / "img1.npy").shape == (9, 64, 64, 3)
    keys = sorted(p.relative_to(out / "items").as_posix() for p in (out / "items").rglob("*.npz"))
    assert keys == ["a/with space.npz", "b/sub/img1.npz"]
    side = json.loads((out / "items" / "b" / "sub" / "img1.json").read_text())
    assert side["source"]["entry"] == 1 and side["source"]["line"] == 5 and side["path"].endswith("img1.png")


def test_images_target_pred_and_classifier_names(tmp_path) -> None:
    (img,) = _write_images(tmp_path / "in", 1)
    out = tmp_path / "out"
    res = _ok(["attrib", "run", "--images", str(img), "--text", "a round cell", "--text", "a dog", *FAST,
               "--search", "bidirectional", "--pending", "3", "--output-dir", str(out)])
    assert res["done"] == 1
    side = json.loads((out / "items" / "pred" / "img0.json").read_text())
    assert side["target"]["rule"] == "pred" and side["target"]["index"] == side["prediction"]["index"]
    assert side["front_len"] is not None and side["search"] == "bidirectional"


def _count_done(out: Path) -> int:
    return len(list((out / "items").rglob("*.done"))) if (out / "items").is_dir() else 0


def _kill_after(args: list[str], out: Path, markers: int, timeout: float = 240.0) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.Popen([sys.executable, "-m", "xaiclip_cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.monotonic()
    try:
        while _count_done(out) < markers and proc.poll() is None and time.monotonic() - t0 < timeout:
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: spawned workers die with their parent
        proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [[], ["--gpus", "0,1"]], ids=["one-process", "two-cpu-workers"])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, workers) -> None:
    base = ["attrib", "run", "--dataset", "toycells", "--limit", "4", *FAST]
    ref = tmp_path / "ref"
    _ok([*base, "--output-dir", str(ref)])
    out = tmp_path / "killed"
    for n in (1, 2):  # killed at two moments: after the first marker and after the second
        _kill_after([*base, *workers, "--output-dir", str(out)], out, n)
    assert _count_done(out) < 4
    res = _ok([*base, *workers, "--output-dir", str(out)])
    assert res["skipped"] + res["done"] == 4 and res["failed"] == 0
    got, want = _npzs(out), _npzs(ref)
    assert sorted(got) == sorted(want)
    for key in want:
        for name, arr in want[key].items():
            np.testing.assert_array_equal(got[key][name], arr, err_msg=f"{key}:{name}")
    assert _ok(["attrib", "merge", str(out)])["complete"] == 4
    assert not list(out.rglob("*.partial.npz"))


# --- bad inputs: one line, exit code, nothing written --------------------------------------------------------------
def _bad(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    out = tmp_path / "o"
    r = _run(["attrib", "run", *args, "--output-dir", str(out)])
    assert r.exit_code == code, r.output
    assert message in r.output, r.output
    assert "Traceback" not in r.output
    assert not out.exists(), "nothing may be written for a bad input"


def test_bad_inputs(tmp_path) -> None:
    (img,) = _write_images(tmp_path / "in", 1)
    lst = tmp_path / "l.txt"
    lst.write_text("in/img0.png 0\n\nin/img0.png 1\n")
    odd = tmp_path / "odd.txt"
    odd.write_text("nospace\n")
    cases = [
        (["--images", str(tmp_path / "nope.png"), "--text", "a", "--text", "b"], 2, "no such file or folder"),
        (["--list", str(lst), "--classes", "a,b", "--begin", "2", "--end", "1"], 2, "is after --end"),
        (["--list", str(lst), "--classes", "a,b", "--begin", "-1"], 2, "must be >= 0"),
        (["--list", str(lst), "--classes", "a,b", "--end", "-1"], 2, "must be >= 0"),
        (["--list", str(lst), "--classes", "a,b", "--end", "5"], 2, "has only 2 entries"),
        (["--list", str(odd), "--classes", "a,b"], 2, "expected '<relative path> <target>'"),
        (["--list", str(lst), "--classes", "a,c", "--target", "zebra"], 2, "unknown class 'zebra'"),
        (["--images", str(img), "--classes", "a,b", "--templates", "no placeholder"], 2, "has no {}"),
        (["--images", str(img), "--text", "only one"], 2, "at least 2 classes"),
        (["--images", str(img), "--text", "a", "--text", "b", "--division", "grid", "--grid", "1"], 2,
         "yields 1 region"),
        (["--images", str(img), "--text", "a", "--text", "b", "--division", "prior-patch", "--prior",
          str(tmp_path / "in")], 2, "no map for pred/img0.npy"),
        (["--images", str(img), "--text", "a", "--text", "b", "--lambdas", "1,2"], 2, "needs 4 values"),
        (["--images", str(img), "--list", str(lst), "--text", "a", "--text", "b"], 2, "give one of"),
    ]
    for args, code, msg in cases:
        _bad(tmp_path, [*args, "--device", "cpu"], code, msg)


def test_wrong_size_sam_masks_and_missing_list_image(tmp_path) -> None:
    (img,) = _write_images(tmp_path / "in", 1)
    masks = tmp_path / "sam"
    masks.mkdir()
    m = np.zeros((2, 10, 10), bool)
    m[0, :5] = True
    np.savez(masks / "img0.npz", masks=m)
    _bad(tmp_path, ["--images", str(img), "--text", "a", "--text", "b", "--division", "sam", "--sam-masks",
                    str(masks), "--device", "cpu"], 2, "SAM masks are 10x10 but the image is 64x64")
    lst = tmp_path / "l.txt"
    lst.write_text("in/img0.png 0\nin/gone.png 1\n")
    _bad(tmp_path, ["--list", str(lst), "--classes", "a,b", "--device", "cpu"], 2, "image not found: in/gone.png")


def test_gpus_without_cuda_exit_2(tmp_path, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (img,) = _write_images(tmp_path / "in", 1)
    _bad(tmp_path, ["--images", str(img), "--text", "a", "--text", "b", "--gpus", "0,1"], 2, "--gpus 0,1")


def test_unreadable_image_exit_1_and_partial_exit_3(tmp_path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    (d / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "o1"
    r = _run(["attrib", "run", "--images", str(d / "bad.png"), "--text", "a", "--text", "b", *FAST,
              "--output-dir", str(out), "--json"])
    assert r.exit_code == 1, r.output
    fails = [json.loads(x) for x in (out / "failed.jsonl").read_text().splitlines()]
    assert fails[0]["key"] == "bad" and "bad.png" in fails[0]["error"]
    _write_images(d, 1)
    r = _run(["attrib", "run", "--images", str(d), "--text", "a", "--text", "b", *FAST,
              "--output-dir", str(tmp_path / "o2"), "--json"])
    assert r.exit_code == 3, r.output
    assert json.loads(r.stdout)["done"] == 1


def test_baseline_maps_feed_prior_patch(tmp_path) -> None:
    out = tmp_path / "b"
    common = ["--dataset", "toycells", "--limit", "1", "--device", "cpu", "--threads", "1", "--output-dir", str(out)]
    res = _ok(["attrib", "baseline", "--method", "rise", "--rise-n", "64", *common])
    assert res["done"] == 1 and res["image_size"] == 64
    (m,) = list((out / "maps" / "rise").rglob("*.npy"))
    amap = np.load(m)
    assert amap.shape == (64, 64) and amap.dtype == np.float32 and np.isfinite(amap).all() and amap.std() > 0
    assert m.relative_to(out / "maps" / "rise").parts[1:] == ("test", "test_00000.npy")
    assert _ok(["attrib", "baseline", "--method", "rise", "--rise-n", "64", *common])["skipped"] == 1
    grad = _ok(["attrib", "baseline", "--method", "gradient", *common])
    assert grad["done"] == 1
    run = tmp_path / "run"
    res = _ok(["attrib", "run", "--dataset", "toycells", "--limit", "1", "--division", "prior-patch", "--prior",
               str(out / "maps" / "rise"), "--prior-grid", "4", "--cells-per-region", "2", "--threads", "1",
               "--device", "cpu", "--output-dir", str(run)])
    assert res["done"] == 1 and res["regions_first"] == 8  # 16 cells in groups of 2
    from xaiclip_cli.explain.smdl import load_npz

    npz = load_npz(next((run / "items").rglob("*.npz")))
    # element 0 holds the two most salient of the 4x4 prior cells (cv2 bilinear resize, as the division does)
    import cv2

    cells = cv2.resize(amap, (4, 4), interpolation=cv2.INTER_LINEAR).reshape(-1)
    top = np.argsort(-cells, kind="stable")[:2]
    lab = npz["labels"][::16, ::16].reshape(-1)  # one pixel per 16x16 cell
    assert set(np.flatnonzero(lab == 0)) == set(top.tolist())


def test_text_features_store_template_and_unknown_template(tmp_path) -> None:
    from tests.store.test_reader_fixtures import LABELS, build_store

    (img,) = _write_images(tmp_path / "in", 1)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(3, 64)).astype(np.float32)
    np.save(tmp_path / "f.npy", feats / np.linalg.norm(feats, axis=1, keepdims=True))
    out = tmp_path / "tf"
    _ok(["attrib", "run", "--images", str(img), "--text-features", str(tmp_path / "f.npy"), "--classes", "x,y,z",
         "--target", "z", *FAST, "--output-dir", str(out)])
    side = json.loads((out / "items" / "z" / "img0.json").read_text())
    assert side["target"] == {"index": 2, "name": "z", "rule": "z"}
    np.save(tmp_path / "raw.npy", feats * 3)  # not unit rows: the scale must never be baked in
    _bad(tmp_path, ["--images", str(img), "--text-features", str(tmp_path / "raw.npy"), "--device", "cpu"], 2,
         "must be unit vectors")
    h5 = tmp_path / "lib.h5"
    build_store(h5, d=64)
    out = tmp_path / "h5"
    res = _ok(["attrib", "run", "--dataset", "toycells", "--limit", "2", "--h5", str(h5), "--template",
               "label_prompts_t01", *FAST, "--output-dir", str(out)])
    assert res["classes"] == len(LABELS) and res["done"] == 2
    doc = json.loads((out / "run.json").read_text())
    assert doc["identity"]["classes"]["names"] == LABELS
    assert sorted(p["target"] for p in doc["plan"]["items"]) == ["eosinophil", "lymphocyte"]  # dataset labels by name
    _bad(tmp_path, ["--images", str(img), "--h5", str(h5), "--template", "label_prompts_t99", "--device", "cpu"], 2,
         "unknown template 'label_prompts_t99'")


def test_train_fit_classifier_run_folder(tmp_path) -> None:
    import torch

    from xaiclip_cli.train.model import build_model, model_meta

    model, _ = build_model("test_resnet", 2, 3, 32, "false")
    meta = model_meta("test_resnet", 2, 3, 32, [0.5], [0.25], ["benign", "malignant"], False, 0, False)
    (tmp_path / "fit" / "checkpoints").mkdir(parents=True)
    torch.save({"model": model.state_dict(), "meta": meta}, tmp_path / "fit" / "checkpoints" / "best.pt")
    (img,) = _write_images(tmp_path / "in", 1)
    out = tmp_path / "out"
    res = _ok(["attrib", "run", "--classifier", str(tmp_path / "fit"), "--images", str(img), "--target", "malignant",
               "--division", "grid", "--grid", "2", "--threads", "1", "--device", "cpu", "--output-dir", str(out)])
    assert res["done"] == 1 and res["image_size"] == 32 and res["classes"] == 2
    doc = json.loads((out / "run.json").read_text())
    assert doc["model"]["kind"] == "classifier" and len(doc["model"]["weights_sha256"]) == 64
    side = json.loads((out / "items" / "malignant" / "img0.json").read_text())
    assert side["target"]["index"] == 1 and side["forwards"] == 4 + 1 + 4 * 5
    _bad(tmp_path, ["--classifier", str(tmp_path / "in"), "--images", str(img), "--device", "cpu"], 2,
         "not a `xaiclip train fit` run folder")


def test_torchrun_rank_takes_its_block(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "out"
    res = _ok(["attrib", "run", "--dataset", "toycells", "--limit", "3", *FAST, "--output-dir", str(out)])
    assert res["planned"] == 3 and res["done"] == 1 and res["workers"] == 2  # entries [2, 3) of ceil(3/2) = 2
    assert [p.name for p in (out / "items").rglob("*.done")] == ["test_00002.done"]
    shard = json.loads((out / "shards" / "worker-1-of-2.json").read_text())
    assert shard["entries"] == [2, 3] and shard["done"] == 1
    assert json.loads((out / "run.json").read_text())["plan"]["n"] == 3  # the whole plan, for merge


def test_folder_dataset_items_named_after_files(tmp_path) -> None:
    _write_images(tmp_path / "ds" / "cat", 1)
    _write_images(tmp_path / "ds" / "dog", 1)
    out = tmp_path / "out"
    res = _ok(["attrib", "run", "--dataset", f"folder:{tmp_path / 'ds'}", "--split", "train", *FAST,
               "--output-dir", str(out)])
    assert res["done"] == 2
    keys = sorted(p.relative_to(out / "items").as_posix() for p in (out / "items").rglob("*.done"))
    assert keys == ["cat/train/cat/img0.done", "dog/train/dog/img0.done"]  # <target>/<split>/<rel dir>/<stem>
    side = json.loads((out / "items" / "dog" / "train" / "dog" / "img0.json").read_text())
    assert side["path"] == str(tmp_path / "ds" / "dog" / "img0.png") and side["source"]["label"] == 1


def test_export_of_same_stems_in_two_subfolders_writes_both(tmp_path) -> None:
    # a/img0.png and b/img0.png: the reference tree is flat per target, so the two must not overwrite each other.
    _write_images(tmp_path / "imgs" / "a", 1)
    _write_images(tmp_path / "imgs" / "b", 2)  # another seed: b/img0 differs from a/img0; b/img1 is unique
    out = tmp_path / "run"
    res = _ok(["attrib", "run", "--images", str(tmp_path / "imgs"), "--recursive", "--text", "a blood cell",
               "--text", "a red cell", *FAST, "--output-dir", str(out), "--export-smdl", str(tmp_path / "live")])
    assert res["done"] == 3
    exp = _ok(["attrib", "export", str(out), "--out", str(tmp_path / "ref")])
    assert exp["exported"] == 3
    names = sorted(p.name for p in Path(exp["out"]).glob("npy/*/*.npy"))
    assert names == ["a__img0.npy", "b__img0.npy", "img1.npy"]
    live = sorted(p.name for p in (tmp_path / "live").rglob("*.npy"))
    assert live == names  # run --export-smdl names them the same way
    a, b = (np.load(p) for p in sorted(Path(exp["out"]).glob("npy/*/*__img0.npy")))
    assert not np.array_equal(a, b)  # two different images, two different files
