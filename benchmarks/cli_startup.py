"""Benchmark: wall time of `xaiclip --help` (and each group's --help) against `python -c pass`, as a ratio.

Prints one JSON record. The CLI must not import torch/transformers/timm/matplotlib at start-up, so the ratio
measures only Typer, pydantic and our own modules.
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import time


def _median_seconds(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(repeats: int = 7) -> dict:
    """Measure and print the record."""
    base = _median_seconds([sys.executable, "-c", "pass"], repeats)
    help_root = _median_seconds([sys.executable, "-m", "xaiclip_cli", "--help"], repeats)
    groups = {
        g: _median_seconds([sys.executable, "-m", "xaiclip_cli", g, "--help"], max(3, repeats // 2))
        for g in ("store", "db", "cam", "attrib", "eval", "train")
    }
    torch_import = _median_seconds([sys.executable, "-c", "import torch"], 3)
    record = {
        "benchmark": "cli_startup",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "python_pass_s": round(base, 4),
        "xaiclip_help_s": round(help_root, 4),
        "ratio_help_vs_python": round(help_root / base, 2),
        "group_help_s": {k: round(v, 4) for k, v in groups.items()},
        "import_torch_s": round(torch_import, 4),
        "ratio_help_vs_import_torch": round(help_root / torch_import, 3),
    }
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
