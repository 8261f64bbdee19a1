"""Two-process DDP smoke test of `train fit` under torchrun with gloo on the CPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_gloo(splits: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "xaiclip_cli", "train", "fit", "--split-dir", str(splits), "--modality", "A", "--model",
           "test_resnet", "--pretrained", "false", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
           "--device", "cpu", "--num-workers", "0", "--threads", "1", "--output-dir", str(tmp_path), "--name", "d",
           "--best-hparams-dir", "", "--report-to", "none", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)  # only rank 0 prints
    assert result["epochs_run"] == 1
    run = tmp_path / "d"
    results = json.loads((run / "results.json").read_text())
    # Predictions of both ranks are gathered and de-padded: metrics cover every sample once.
    assert results["counts"] == {"train": 30, "val": 15, "test": 18}
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "test_metrics.csv").is_file()
