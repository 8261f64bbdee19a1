"""One worker process per GPU (spawn context; the GPU is pinned before CUDA is initialised); counts flow back.

Workers report progress as integers on a queue; only the parent draws a progress bar.
"""

from __future__ import annotations

import importlib
import os
import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from xaiclip_cli.errors import EXIT_INTERRUPTED


@dataclass
class WorkerOutcome:
    """What one worker returned: its rank, GPU, exit code, result (a dict) or error line."""

    rank: int
    gpu: int | None
    exit_code: int
    result: dict[str, Any] | None = None
    error: str | None = None


def _child(target: str, payload: dict[str, Any], rank: int, world: int, gpu: int | None, device: str,
           progress: Any, results: Any) -> None:
    # Pin the GPU before anything can touch CUDA: the child process is fresh (spawn), torch is not imported yet.
    if gpu is not None and device != "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    os.environ["XAICLIP_WORKER"] = "1"
    module, func = target.split(":")
    fn = getattr(importlib.import_module(module), func)
    code, result, error = 0, None, None
    try:
        result = fn(payload, rank, world, "cpu" if device == "cpu" else ("cuda" if gpu is not None else device),
                    lambda n: progress.put(int(n)))
    except KeyboardInterrupt:
        code, error = EXIT_INTERRUPTED, "interrupted"
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
        code = int(getattr(exc, "exit_code", 1))
        error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    results.put((rank, code, result, error))


def spawn_workers(target: str, payload: dict[str, Any], gpus: Sequence[int], device: str = "cuda",
                  advance: Callable[[int], None] | None = None) -> list[WorkerOutcome]:
    """Run ``target(payload, rank, world, device, advance)`` ("module:function") once per GPU; wait for all."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    progress, results = ctx.Queue(), ctx.Queue()
    world = len(gpus)
    procs = []
    for rank, gpu in enumerate(gpus):
        p = ctx.Process(target=_child, args=(target, payload, rank, world, gpu, device, progress, results),
                        name=f"xaiclip-worker-{rank}", daemon=False)
        p.start()
        procs.append(p)
    got: dict[int, tuple[int, Any, Any]] = {}
    try:
        while len(got) < world:
            try:
                n = progress.get(timeout=0.1)
                if advance is not None:
                    advance(n)
            except queue.Empty:
                pass
            while True:
                try:
                    r, code, res, err = results.get_nowait()
                    got[r] = (code, res, err)
                except queue.Empty:
                    break
            if len(got) < world and not any(p.is_alive() for p in procs) and results.empty():
                break
    except KeyboardInterrupt:
        # The workers share the terminal's process group and got the same SIGINT; let them finish their batch.
        for p in procs:
            p.join(timeout=30)
        raise
    for p in procs:
        p.join()
    while True:
        try:
            n = progress.get_nowait()
            if advance is not None:
                advance(n)
        except queue.Empty:
            break
    out = []
    for rank, (gpu, p) in enumerate(zip(gpus, procs, strict=True)):
        if rank in got:
            code, res, err = got[rank]
            out.append(WorkerOutcome(rank, gpu, code, res, err))
        else:
            out.append(WorkerOutcome(rank, gpu, p.exitcode or 1, None, f"worker exited with code {p.exitcode}"))
    return out
