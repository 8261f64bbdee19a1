"""`eval faithfulness` sharded: two CPU worker processes and torchrun ranks give a one-process run's exact values;
SIGKILL then resume equals an uninterrupted run; an unreadable image goes to failed.jsonl (exit 3) and is retried."""

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

from tests.cli.eval_maps import TEXTS, write_rand_maps
from xaiclip_cli.cli.main import app
from xaiclip_cli.resources import resource_dir

pytestmark = pytest.mark.skipif(not (resource_dir("toy", "toy-cnn") / "xaiclip_clip.json").is_file(),
                                reason="shipped toy-cnn model not present")
REPO = Path(__file__).resolve().parents[2]
BASE = ["eval", "faithfulness", "--backend", "toy", "--model", "toy-cnn", "--device", "cpu", "--threads", "1",
        "--bootstrap", "0"]
TWO = ["--gpus", "0,1", "--device", "cpu"]  # two CPU worker processes


def _run(args: list[str], code: int = 0) -> dict:
    r = CliRunner().invoke(app, [*args, "--json"])
    assert r.exit_code == code, r.output
    if code in (0, 3):
        return json.loads(r.stdout)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    return {"stderr": r.stderr}


def _records(out: Path) -> int:
    n = 0
    for p in out.glob("progress.*.jsonl"):
        n += sum(1 for ln in p.read_text().splitlines()[1:] if ln.endswith("}"))
    return n


def _same_result(a: Path, b: Path) -> None:
    assert (a / "per_image.csv").read_bytes() == (b / "per_image.csv").read_bytes()
    za, zb = np.load(a / "curves.npz"), np.load(b / "curves.npz")
    assert sorted(za.files) == sorted(zb.files)
    for k in za.files:
        np.testing.assert_array_equal(za[k], zb[k], err_msg=k)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID",
                                                            "SLURM_NTASKS", "SLURM_LOCALID")}
    return {**env, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", **extra}


@pytest.mark.slow
def test_two_cpu_workers_equal_one_process_and_guard_all_logs(tmp_path: Path) -> None:
    maps = write_rand_maps(tmp_path / "maps", 6)
    # steps 4, batch 10: groups of 40 // 10 = 4 maps, so the shards are [0, 4) and [4, 6) (blocks aligned to 4)
    args = [*BASE, "--maps", str(maps), "--steps", "4", "--batch-size", "10"]
    one, two = tmp_path / "one", tmp_path / "two"
    d1 = _run([*args, "--output-dir", str(one)])
    d2 = _run([*args, *TWO, "--output-dir", str(two)])
    assert d1["evaluated"] == d2["evaluated"] == 6 and d1["metrics"] == d2["metrics"]
    _same_result(one, two)
    logs = sorted(p.name for p in two.glob("progress*.jsonl"))
    assert logs == ["progress.0.jsonl", "progress.1.jsonl"]
    lines = [(two / n).read_text().splitlines() for n in logs]
    assert [len(x) - 1 for x in lines] == [4, 2]  # each worker wrote only its own block
    assert json.loads(lines[0][0])["settings"] == json.loads(lines[1][0])["settings"]
    assert json.loads(lines[0][0])["model"]["backend"] == "toy"
    assert sorted(json.loads(ln)["row"]["image"] for ln in lines[1][1:]) == ["test_00004_rand", "test_00005_rand"]
    full = json.loads((two / "eval.json").read_text())
    assert full["counts"]["forwards"] == 6 * 2 * 5 and "failed" not in full["counts"]
    # a resume with other settings is refused for every worker's log, naming the key; nothing is touched
    (two / "eval.json").unlink()
    before = {n: (two / n).read_bytes() for n in logs}
    r = _run([*args, *TWO, "--steps", "6", "--output-dir", str(two)], code=2)
    assert "progress.0.jsonl was written with different settings (steps: 4 -> 6)" in r["stderr"]
    assert {n: (two / n).read_bytes() for n in logs} == before and not (two / "eval.json").exists()
    # the same settings: nothing left to do, the collector writes the same result again
    d3 = _run([*args, *TWO, "--output-dir", str(two)])
    assert d3["evaluated"] == 6 and json.loads((two / "eval.json").read_text())["counts"]["forwards"] == 0
    _same_result(one, two)


def _kill_after(args: list[str], out: Path, records: int, timeout: float = 240.0) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "xaiclip_cli", *args], env=_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.monotonic()
    try:
        while proc.poll() is None and time.monotonic() - t0 < timeout:
            if out.is_dir() and _records(out) >= records:
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the spawned workers die with their parent
        proc.wait()


@pytest.mark.slow
def test_sigkill_of_two_workers_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    n = 16
    maps = write_rand_maps(tmp_path / "maps", n)
    # groups of 256 // 102 = 2 maps (shards [0, 8) and [8, 16)); batches of 64 span the two maps of a group
    args = [*BASE, "--maps", str(maps), "--steps", "50", "--batch-size", "64"]
    ref = tmp_path / "ref"
    _run([*args, "--output-dir", str(ref)])
    out = tmp_path / "killed"
    for k in (2, 6):  # killed at two moments
        _kill_after([*args, *TWO, "--output-dir", str(out)], out, k)
    got = _records(out)
    assert 2 <= got < n and not (out / "eval.json").exists(), got
    res = _run([*args, *TWO, "--output-dir", str(out)])
    assert res["evaluated"] == n
    full = json.loads((out / "eval.json").read_text())
    assert 0 < full["counts"]["forwards"] <= (n - got) * (2 * 51 + 1)  # only the maps not recorded before
    _same_result(ref, out)


def _png_maps(tmp_path: Path) -> tuple[Path, Path]:
    imgs, maps = tmp_path / "imgs", tmp_path / "maps"
    imgs.mkdir()
    maps.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        p = imgs / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(p)
        np.save(maps / f"img{i}.npy", rng.random((8, 8)))
        (maps / f"img{i}.json").write_text(json.dumps({"image": {"path": str(p)}, "texts": TEXTS,
                                                       "target_index": 0}))
    return imgs, maps


def test_unreadable_image_goes_to_failed_jsonl_exit_3_and_rerun_retries_it(tmp_path: Path) -> None:
    imgs, maps = _png_maps(tmp_path)
    good = (imgs / "img1.png").read_bytes()
    (imgs / "img1.png").write_bytes(b"not a png")
    out = tmp_path / "o"
    args = [*BASE, "--maps", str(maps), "--steps", "4", "--output-dir", str(out)]
    doc = _run(args, code=3)
    assert doc["evaluated"] == 2 and doc["skipped"] == {}  # a failure is not a skip
    fails = [json.loads(ln) for ln in (out / "failed.jsonl").read_text().splitlines()]
    assert len(fails) == 1 and fails[0]["image"] == "img1" and fails[0]["index"] == 1
    assert "cannot read image" in fails[0]["error"]
    full = json.loads((out / "eval.json").read_text())
    assert full["counts"]["failed"] == 1 and full["counts"]["images"] == 3
    assert [r["image"] for r in _csv(out)] == ["img0", "img2"]
    first = {r["image"]: r for r in _csv(out)}
    (imgs / "img1.png").write_bytes(good)
    doc = _run(args)  # a result with failures resumes without --overwrite: only the failed map is redone
    assert doc["evaluated"] == 3
    full = json.loads((out / "eval.json").read_text())
    assert "failed" not in full["counts"] and full["counts"]["forwards"] == 1 * 2 * 5
    rows = {r["image"]: r for r in _csv(out)}
    assert rows["img0"] == first["img0"] and rows["img2"] == first["img2"]
    _run(args, code=2)  # now complete: refused without --overwrite


def test_legacy_progress_jsonl_is_resumed(tmp_path: Path) -> None:
    maps = write_rand_maps(tmp_path / "maps", 3)
    out = tmp_path / "o"
    args = [*BASE, "--maps", str(maps), "--steps", "4", "--output-dir", str(out)]
    _run([*args, "--limit", "2"])
    (out / "progress.0.jsonl").rename(out / "progress.jsonl")  # the one-process log of earlier versions
    (out / "eval.json").unlink()
    doc = _run(args)
    assert doc["evaluated"] == 3
    assert json.loads((out / "eval.json").read_text())["counts"]["forwards"] == 1 * 2 * 5
    assert len((out / "progress.0.jsonl").read_text().splitlines()) == 2  # header + the one new record
    (out / "progress.7.jsonl").write_text((out / "progress.0.jsonl").read_text())  # as if from a bigger run
    before = sorted(p.name for p in out.iterdir())
    _run([*args, "--overwrite", "--maps", str(tmp_path / "nope")], code=2)  # a bad input deletes nothing
    assert sorted(p.name for p in out.iterdir()) == before
    doc = _run([*args, "--overwrite", "--steps", "6"])  # starts over: every old log and result replaced
    assert doc["evaluated"] == 3
    assert sorted(p.name for p in out.glob("progress*.jsonl")) == ["progress.0.jsonl"]
    lines = (out / "progress.0.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["settings"]["steps"] == 6
    assert json.loads((out / "eval.json").read_text())["counts"]["forwards"] == 3 * 2 * 7


def _csv(out: Path) -> list[dict[str, str]]:
    import csv

    with open(out / "per_image.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_gpus_without_cuda_exit_2_and_nothing_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    maps = write_rand_maps(tmp_path / "maps", 2)
    out = tmp_path / "o"
    r = CliRunner().invoke(app, [*BASE[:6], "--maps", str(maps), "--gpus", "0,1", "--output-dir", str(out)])
    assert r.exit_code == 2, r.output
    assert "--gpus 0,1" in r.output and "CUDA is not available" in r.output and "Traceback" not in r.output
    assert not out.exists()


@pytest.mark.slow
def test_torchrun_ranks_as_two_processes_give_one_complete_result(tmp_path: Path) -> None:
    maps = write_rand_maps(tmp_path / "maps", 6)
    args = [*BASE, "--maps", str(maps), "--steps", "4", "--batch-size", "10"]
    ref = tmp_path / "ref"
    _run([*args, "--output-dir", str(ref)])
    out = tmp_path / "ranks"
    docs = []
    for rank in (0, 1):
        p = subprocess.run([sys.executable, "-m", "xaiclip_cli", *args, "--output-dir", str(out), "--json"],
                           env=_env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0"), cwd=REPO, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        docs.append(json.loads(p.stdout))
        if rank == 0:  # rank 1's block is not recorded yet: rank 0 does not collect
            assert not (out / "eval.json").exists() and not (out / ".collect.lock").exists()
            assert any("not collected" in n for n in docs[0]["notes"])
    assert docs[1]["evaluated"] == 6 and (out / ".collect.lock").is_file()
    assert sorted(p.name for p in out.glob("progress*.jsonl")) == ["progress.0.jsonl", "progress.1.jsonl"]
    _same_result(ref, out)
