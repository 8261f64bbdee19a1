"""Exit codes and messages for everyday mistakes: no CUDA, env-variable typos, '--idx 1,,2', damaged checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import xaiclip_cli.devices as devices
from tests.store.test_reader_fixtures import build_store
from xaiclip_cli.cli.main import app
from xaiclip_cli.config.base import unknown_env_keys
from xaiclip_cli.config.cam import CamSettings
from xaiclip_cli.config.train import TrainSettings
from xaiclip_cli.errors import UsageError

runner = CliRunner()


def _one_line(stderr: str, *fragments: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for frag in fragments:
        assert frag in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine as one without CUDA, whatever it really has."""
    monkeypatch.setattr(devices, "_cuda_state", lambda: (0, "no NVIDIA driver or GPU is visible"))


@pytest.mark.parametrize(("args", "needle"), [
    (["cam", "run", "--images", "IMG", "--text", "a", "--device", "cuda"], "--device cuda: CUDA is not available"),
    (["cam", "run", "--images", "IMG", "--text", "a", "--gpus", "0,1"], "--gpus 0,1: CUDA is not available"),
    (["cam", "layers", "--device", "cuda:1"], "--device cuda:1: CUDA is not available"),
    (["store", "text", "--h5", "H5", "--device", "cuda"], "--device cuda: CUDA is not available"),
    (["store", "image", "--h5", "H5", "--gpus", "0,1"], "--gpus 0,1: CUDA is not available"),
    (["train", "clip", "--device", "cuda", "--epochs", "1"], "--device cuda: CUDA is not available"),
    (["train", "fit", "--device", "cuda", "--split-dir", "S"], "--device cuda: CUDA is not available"),
])
def test_cuda_options_without_cuda_exit_2(tmp_path: Path, no_cuda: None, args: list[str], needle: str) -> None:
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    args = [{"IMG": str(img), "H5": str(tmp_path / "s.h5"), "S": str(tmp_path)}.get(a, a) for a in args]
    with_out = args[0] in ("cam", "train") and args[1] != "layers"
    r = runner.invoke(app, [*args, "--output-dir", str(tmp_path / "o")] if with_out else args)
    assert r.exit_code == 2, r.output
    _one_line(r.stderr, needle)
    assert not (tmp_path / "o").exists() and not (tmp_path / "s.h5").exists()  # refused before writing anything


def test_cuda_ids_beyond_the_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "_cuda_state", lambda: (2, ""))
    devices.check_device_available("cuda:1", [0, 1])
    with pytest.raises(UsageError, match=r"--device cuda:2: only 2 CUDA device\(s\)"):
        devices.check_device_available("cuda:2")
    with pytest.raises(UsageError, match=r"--gpus 0,3: GPU id\(s\) 3 not visible"):
        devices.check_device_available("auto", [0, 3])
    devices.check_device_available("cpu", [0, 5])  # --device cpu: CPU worker processes, no GPU needed


def test_unknown_env_keys_warn_with_the_nearest_field(tmp_path: Path) -> None:
    env = {"XAICLIP_CAM__METHD": "gradcam", "XAICLIP_CAM__METHOD": "eigencam", "XAICLIP_CAM__ZZZQQ": "1",
           "XAICLIP_STORE__BATCHSIZE": "3", "OTHER": "x"}
    msgs = unknown_env_keys(CamSettings, env)
    assert len(msgs) == 2
    assert "XAICLIP_CAM__METHD names no cam setting" in msgs[0] and "did you mean XAICLIP_CAM__METHOD" in msgs[0]
    assert "XAICLIP_CAM__ZZZQQ" in msgs[1] and "did you mean" not in msgs[1]
    nested = unknown_env_keys(TrainSettings, {"XAICLIP_TRAIN__TRAINING__DEVISE": "cpu",
                                            "XAICLIP_TRAIN__TRAINING__DEVICE": "cpu"})
    assert len(nested) == 1 and "did you mean XAICLIP_TRAIN__TRAINING__DEVICE" in nested[0]


def test_unknown_env_key_warns_on_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XAICLIP_STORE__BATCHSIZE", "3")
    r = runner.invoke(app, ["store", "text", "--h5", str(tmp_path / "s.h5"), "--print-config"])
    assert r.exit_code == 0, r.output
    warned = " ".join(r.stderr.split())
    assert "XAICLIP_STORE__BATCHSIZE names no store setting" in warned
    assert "XAICLIP_STORE__BATCH_SIZE" in warned


@pytest.mark.parametrize("bad", ["1,,2", "1,", ",1", "1, ,2"])
def test_idx_with_an_empty_position_is_refused(tmp_path: Path, bad: str) -> None:
    truth = build_store(tmp_path / "store.h5", layout="single")
    r = runner.invoke(app, ["db", "batch", "--h5", str(truth.path), "--split", "train", "--idx", bad,
                            "--out", str(tmp_path / "b.npz")])
    assert r.exit_code == 2, r.output
    _one_line(r.stderr, "--idx", "empty position")
    assert not (tmp_path / "b.npz").exists()
    ok = runner.invoke(app, ["db", "batch", "--h5", str(truth.path), "--split", "train", "--idx", "1, 0",
                             "--out", str(tmp_path / "ok.npz"), "--json"])
    assert ok.exit_code == 0, ok.output


def test_damaged_checkpoint_spec_exits_1_naming_the_file(tmp_path: Path) -> None:
    from xaiclip_cli.models.toy import toy_dir

    ck = tmp_path / "ck"
    shutil.copytree(toy_dir("toy-cnn"), ck)
    spec = ck / "xaiclip_clip.json"
    spec.write_text(spec.read_text()[:50])  # truncated by a full disk
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    r = runner.invoke(app, ["cam", "run", "--checkpoint", str(ck), "--images", str(img), "--text", "a",
                            "--output-dir", str(tmp_path / "o"), "--device", "cpu"])
    assert r.exit_code == 1, r.output
    _one_line(r.stderr, str(spec), "invalid JSON")


def test_damaged_training_checkpoint_exits_1_naming_the_file(tmp_path: Path) -> None:
    import torch

    from xaiclip_cli.errors import XaiclipError
    from xaiclip_cli.train.clip import _load_state

    good = tmp_path / "good.pt"
    torch.save({"a": torch.ones(3)}, good)
    assert torch.equal(_load_state(good)["a"], torch.ones(3))
    bad = tmp_path / "last.pt"
    bad.write_bytes(good.read_bytes()[:100])
    with pytest.raises(XaiclipError, match=f"checkpoint {bad}: cannot be read") as e:
        _load_state(bad)
    assert e.value.exit_code == 1 and "\n" not in str(e.value)
    assert json.dumps(str(e.value))
