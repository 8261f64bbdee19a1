"""One job runner for per-item jobs (cam run, attrib run, eval): items → plan → shard → run → markers → report.

A job is a list of N planned items (only their count and a done check matter here) and an ``execute`` function
``execute(payload, indices, device, advance) -> dict`` that processes the items at ``indices`` in one process and
returns its statistics. The runner

1. plans: ``todo`` = items whose done check fails (all with ``overwrite``);
2. shards: between torchrun/SLURM ranks (``parallel/ranks.py``) and between ``--gpus`` workers of each rank;
   worker ``w = rank·G + g`` of ``W = world·G``, either ``blocks`` (entries ``[w·⌈N/W⌉, min(N, (w+1)·⌈N/W⌉))`` of
   the *planned* list, so that a worker's share never moves on resume; with ``align`` = a > 1 the block length is
   ⌈N/W⌉ rounded up to a multiple of a, so that fixed groups of a items never straddle two workers) or ``strided``
   (``todo[w::W]``);
3. runs: in-process (``local``, a closure that may reuse already-loaded state) or one spawned process per GPU
   (``parallel/spawn.py``; the worker rebuilds its state from the JSON payload);
4. collects: per-item failures (``stats["failures"]``: list of ``{"index": i, "error": "..."}``), items of crashed
   workers that have no done marker, optional ``shards/worker-w-of-W.json`` counts and a ``failed.jsonl`` log;
5. reports: merged statistics (ints summed, lists concatenated, the first non-empty value otherwise) and the exit
   code rule shared by all jobs (:func:`exit_code`).

Hand-written because the job shape (fixed shards with done markers, clip-retrieval/img2dataset style) is ours and
small; process spawning stays in ``spawn.py``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from xaiclip_cli.errors import EXIT_OK, EXIT_PARTIAL, EXIT_RUNTIME
from xaiclip_cli.parallel.ranks import RankInfo, rank_from_env

Execute = Callable[[list[int], str, Callable[[int], None]], dict[str, Any]]
Sharding = Literal["blocks", "strided"]


def block_range(n: int, worker: int, workers: int, align: int = 1) -> tuple[int, int]:
    """Entries ``[w·⌈N/W⌉, min(N, (w+1)·⌈N/W⌉))`` of worker ``w`` of ``W`` (smdl.md §9); empty ranges allowed.

    ``align`` > 1 rounds the block length ⌈N/W⌉ up to a multiple of ``align`` (blocks start on group boundaries).
    """
    if workers < 1 or not 0 <= worker < workers:
        raise ValueError(f"worker {worker} outside {workers} workers")
    if align < 1:
        raise ValueError("align must be >= 1")
    step = math.ceil(math.ceil(n / workers) / align) * align if n else 0
    return min(n, worker * step), min(n, (worker + 1) * step)


def worker_indices(planned: int, todo: Sequence[int], worker: int, workers: int, sharding: Sharding,
                   align: int = 1) -> list[int]:
    """The todo indices worker ``worker`` of ``workers`` takes (see the module docstring for the two rules)."""
    if sharding == "strided":
        return list(todo[worker::workers])
    a, b = block_range(planned, worker, workers, align)
    return [i for i in todo if a <= i < b]


@dataclass
class JobSpec:
    """What to run: N planned items, the done check, and how to execute a share in-process or in a worker."""

    name: str
    planned: int
    is_done: Callable[[int], bool]
    local: Execute
    worker_target: str | None = None  # "module:function" with the signature of ``execute`` (spawned workers)
    payload: dict[str, Any] = field(default_factory=dict)  # JSON-able; the worker rebuilds its state from it
    sharding: Sharding = "strided"
    align: int = 1  # blocks sharding: block lengths are multiples of this (fixed groups stay on one worker)
    overwrite: bool = False
    output_dir: Path | None = None
    shard_reports: bool = False  # write OUT/shards/worker-w-of-W.json
    failed_log: bool = False  # append failures to OUT/failed.jsonl
    describe: Callable[[int], dict[str, Any]] | None = None  # extra fields of a failure record (path, target)


@dataclass
class JobReport:
    """What a job did: planned/skipped/todo counts, merged statistics, failures, seconds, worker outcomes."""

    planned: int
    skipped: int
    todo: list[int]
    done: int
    failures: list[dict[str, Any]]
    stats: dict[str, Any]
    seconds: float
    rank: RankInfo
    workers: int
    outcomes: list[Any] = field(default_factory=list)

    @property
    def failed(self) -> int:
        """Number of failed items."""
        return len(self.failures)

    @property
    def exit_code(self) -> int:
        """The shared exit rule (:func:`exit_code`)."""
        return exit_code(self.done, self.failed, self.skipped)


def exit_code(done: int, failed: int, skipped: int = 0) -> int:
    """0 when nothing failed; 3 (partial) when some items failed but others exist (done now or earlier); 1 when
    every item tried failed and none was done before."""
    if failed == 0:
        return EXIT_OK
    return EXIT_PARTIAL if done or skipped else EXIT_RUNTIME


def merge_stats(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Merge worker statistics: ints/floats summed, lists concatenated, otherwise the first non-empty value."""
    out: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            if k not in out or out[k] is None:
                out[k] = list(v) if isinstance(v, list) else v
            elif isinstance(v, bool) or not isinstance(v, (int, float, list)):
                continue
            elif isinstance(v, list):
                out[k].extend(v)
            else:
                out[k] += v
    return out


def local_shares(planned: int, todo: Sequence[int], gpus: Sequence[int], rank: RankInfo, sharding: Sharding,
                 align: int = 1) -> list[list[int]]:
    """The todo indices of each local worker of this rank (one list without ``--gpus`` or with one GPU)."""
    n_local = len(gpus) if len(gpus) > 1 else 1
    workers = rank.world * n_local
    return [worker_indices(planned, todo, rank.rank * n_local + g, workers, sharding, align)
            for g in range(n_local)]


def check_gpus(gpus: Sequence[int], device: str, flag: str = "--gpus") -> None:
    """Refuse (UsageError naming the option) GPU ids when CUDA is unavailable or has fewer devices."""
    from xaiclip_cli.devices import check_device_available

    # The same check every command's settings pass (devices.py); here for library callers of the runner.
    check_device_available("cpu" if device == "cpu" else "auto", gpus, gpus_option=flag)


def _worker_main(payload: dict[str, Any], rank: int, world: int, device: str, advance: Any) -> dict[str, Any]:
    """Spawned-worker entry: call the job's worker target on this worker's indices."""
    import importlib

    os.environ["XAICLIP_WORKER_RANK"] = str(rank)  # the local worker number, for per-worker file names
    module, func = payload["target"].split(":")
    fn = getattr(importlib.import_module(module), func)
    return fn(payload["job"], payload["indices"][rank], device, advance)


def run_job(spec: JobSpec, *, gpus: Sequence[int] = (), device: str = "cpu",
            advance: Callable[[int], None] | None = None, env: dict[str, str] | None = None,
            plan_hook: Callable[[list[int], RankInfo], None] | None = None) -> JobReport:
    """Plan, shard, run and collect one job (see the module docstring).

    ``advance(n)`` receives finished-item counts from every worker (the parent draws the only progress bar);
    ``plan_hook(todo, rank)`` runs after planning and before any work (e.g. to write the config).
    """
    step = advance or (lambda n: None)
    rank = rank_from_env(env)
    check_gpus(gpus, device)
    todo_all = [i for i in range(spec.planned) if spec.overwrite or not spec.is_done(i)]
    skipped = spec.planned - len(todo_all)
    n_local = len(gpus) if len(gpus) > 1 else 1
    workers = rank.world * n_local
    shares = local_shares(spec.planned, todo_all, gpus, rank, spec.sharding, spec.align)
    todo = sorted(i for s in shares for i in s)
    if plan_hook is not None:
        plan_hook(todo, rank)
    t0 = time.perf_counter()
    outcomes: list[Any] = []
    parts: list[dict[str, Any]] = []
    if n_local > 1:
        if spec.worker_target is None:
            raise ValueError(f"job {spec.name} has no worker target for --gpus")
        from xaiclip_cli.parallel.spawn import spawn_workers

        payload = {"target": spec.worker_target, "job": spec.payload, "indices": shares}
        outcomes = spawn_workers("xaiclip_cli.parallel.runner:_worker_main", payload, list(gpus),
                                 "cpu" if device == "cpu" else "cuda", step)
        for o, share in zip(outcomes, shares, strict=True):
            if o.exit_code == 0 and o.result is not None:
                parts.append(o.result)
                continue
            lost = [i for i in share if spec.overwrite or not spec.is_done(i)]
            parts.append({"failures": [{"index": i, "error": f"worker {o.rank} (gpu {o.gpu}) failed: {o.error}"}
                                       for i in lost], "worker_error": o.error})
    else:
        d = f"cuda:{gpus[0]}" if len(gpus) == 1 and device != "cpu" else device
        parts.append(spec.local(shares[0], d, step))
    seconds = time.perf_counter() - t0
    stats = merge_stats(parts)
    failures = sorted(stats.pop("failures", []) or [], key=lambda f: f["index"])
    done = int(stats.get("done", 0))
    if spec.describe is not None:
        failures = [{**spec.describe(f["index"]), **f} for f in failures]
    report = JobReport(spec.planned, skipped, todo, done, failures, stats, seconds, rank, workers, outcomes)
    if spec.output_dir is not None:
        _write_reports(spec, report, shares, parts, rank, n_local)
    return report


def _write_reports(spec: JobSpec, report: JobReport, shares: list[list[int]], parts: list[dict[str, Any]],
                   rank: RankInfo, n_local: int) -> None:
    out = Path(spec.output_dir)  # type: ignore[arg-type]
    if spec.failed_log and report.failures:
        with open(out / "failed.jsonl", "a", encoding="utf-8") as fh:
            for f in report.failures:
                fh.write(json.dumps({**f, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, ensure_ascii=False) + "\n")
    if not spec.shard_reports:
        return
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    for g, share in enumerate(shares):
        w = rank.rank * n_local + g
        part = parts[g] if g < len(parts) else {}
        a, b = block_range(spec.planned, w, report.workers, spec.align) if spec.sharding == "blocks" else (None, None)
        doc = {"worker": w, "workers": report.workers, "entries": [a, b], "todo": len(share),
               "done": int(part.get("done", 0)), "failed": len(part.get("failures", []) or []),
               "seconds": part.get("seconds"), "pid": os.getpid(), "launcher": rank.launcher}
        tmp = shard_dir / f".worker-{w}-of-{report.workers}.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2), encoding="utf-8")
        tmp.replace(shard_dir / f"worker-{w}-of-{report.workers}.json")
