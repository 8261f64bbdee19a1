"""`eval faithfulness` as a sharded, resumable job: plan the maps, shard fixed groups over workers, one collector.

Planning, sharding (``blocks`` of the planned maps, aligned to fixed groups), worker dispatch (``--gpus`` = one
spawned process per GPU, ``--gpus 0,1 --device cpu`` = CPU worker processes, torchrun/SLURM ranks) and failure
collection go through ``parallel/runner.py``. Worker ``w`` appends to its own ``progress.<w>.jsonl`` (header
``{"settings": guard, "model": ...}``, then one record ``{"row", "x", "y_deletion", "y_insertion"}`` per map, plus
``wid``/``of``: the group written together and its size; a legacy ``progress.jsonl`` is read too), so no two
processes write one file. After the shards, one collector reads
every log and writes ``eval.json``, ``per_image.csv``, ``curves.npz`` and ``curves.png`` in map order: the parent
(one rank), or under several ranks the first rank that finds every map recorded and wins the ``O_EXCL`` lock
``.collect.lock``.

Maps are perturbed and scored in fixed groups of ``per`` planned maps (``i // per``) whatever the sharding, so the
forward batches, and hence every per-image value bit for bit, are those of a one-process run (CPU and GPU
kernels give last-bit differences between batch compositions); a group whose records a kill cut short is redone
whole on resume, so a resumed run is exact too. Within a process a read-ahead thread loads the next group's images
and builds the next perturbed batches while the model runs on the current one (``parallel/prefetch.py``; on CPU
only when torch leaves a core free); the batches are the same, so the values are too.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.metrics import results as R

log = logging.getLogger("xaiclip.eval")

LEGACY_LOG = "progress.jsonl"
LOCK = ".collect.lock"
NOT_GUARDED = ("bootstrap", "bootstrap_seed")  # only change the summary: may change on resume
READ_AHEAD = 2  # items (perturbed batches) the producer thread builds ahead of the model, when it has a core


def faithfulness_settings(s: Any) -> dict[str, Any]:
    """The ``settings`` block of eval.json: every setting that changes a number."""
    from xaiclip_cli.metrics import insertion_deletion as ID
    from xaiclip_cli.metrics.commands import _model_common

    kind, value = ID.parse_baseline(s.baseline)
    facts = ID.CONVENTION_FACTS[s.convention]
    return {"protocol": "b (re-evaluated pixel ranking)", "convention": s.convention, **facts,
            "baseline": ID.baseline_record(kind, value),
            "unit": s.unit, "steps": s.steps, "max_fraction": s.max_fraction, "rise_step": s.rise_step,
            **_model_common(s), "aggregation": "mean of per-image AUC", "seed": s.seed,
            "bootstrap": s.bootstrap, "bootstrap_seed": s.seed}


def guard_of(settings: dict[str, Any]) -> dict[str, Any]:
    """What the per-image values depend on, JSON-normalised (the header of every progress log)."""
    return json.loads(json.dumps({k: v for k, v in settings.items() if k not in NOT_GUARDED}, default=str))


def group_size(s: Any) -> int:
    """Maps per group: their 2·(s+1) perturbed inputs fill about four forward batches (few partial batches)."""
    return max(1, (4 * s.batch_size) // (2 * (s.steps + 1)))


def log_path(out: Path, worker: int) -> Path:
    """The progress log of worker ``worker`` (global number rank·G + g)."""
    return Path(out) / f"progress.{worker}.jsonl"


def log_files(out: Path) -> list[Path]:
    """Every progress log of a folder: the legacy one-process log first, then the workers' in worker order."""
    out = Path(out)
    found = [p for p in out.glob("progress.*.jsonl") if p.name.split(".")[1].isdigit()]
    legacy = [out / LEGACY_LOG] if (out / LEGACY_LOG).is_file() else []
    return legacy + sorted(found, key=lambda p: int(p.name.split(".")[1]))


def _header(path: Path) -> dict[str, Any] | None:
    """The first line of a log as a dict; None when the file is empty or the line is unreadable."""
    with open(path, encoding="utf-8") as fh:
        first = fh.readline()
    try:
        head = json.loads(first)
    except ValueError:
        return None
    return head if isinstance(head, dict) else None


def check_logs(out: Path, guard: dict[str, Any]) -> None:
    """Refuse (exit 2, naming each differing key) a folder whose progress logs hold other settings."""
    for p in log_files(out):
        head = _header(p)
        if head is None:
            continue
        saved = head.get("settings") or {}
        if saved != guard:
            keys = sorted(k for k in set(saved) | set(guard) if saved.get(k) != guard.get(k))
            diff = ", ".join(f"{k}: {saved.get(k)!r} -> {guard.get(k)!r}" for k in keys)
            raise UsageError(f"{p} was written with different settings ({diff}); pass --overwrite to start over")


def _log_records(lines: list[str]) -> Iterator[dict[str, Any]]:
    """The complete records of a log's lines: a group written together (same ``wid``) counts only when all its
    ``of`` records are there, so a group cut by a kill is redone whole (with the same batches); records without
    ``wid`` (earlier versions) count one by one; unreadable lines (cut by a kill) are skipped."""
    block: list[dict[str, Any]] = []
    wid: str | None = None
    of = 0
    for ln in [*lines, None]:
        rec: dict[str, Any] | None = None
        if ln is not None:
            try:
                rec = json.loads(ln)
            except ValueError:
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("row"), dict) or "image" not in rec["row"]:
                continue
        key = rec.get("wid") if rec is not None else None
        if block and (rec is None or key != wid):
            if len(block) == of:
                yield from block
            block = []
        if rec is None:
            break
        if key is None:
            yield rec
            continue
        wid, of = key, int(rec.get("of", 0))
        block.append(rec)


def read_logs(out: Path, guard: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(records by map key, model provenance) from every log written with ``guard`` (others are ignored)."""
    records: dict[str, dict[str, Any]] = {}
    model: dict[str, Any] = {}
    for p in log_files(out):
        lines = p.read_text(encoding="utf-8").splitlines()
        try:
            head = json.loads(lines[0]) if lines else None
        except ValueError:
            head = None
        if not isinstance(head, dict) or head.get("settings") != guard:
            continue
        model = model or dict(head.get("model") or {})
        for rec in _log_records(lines[1:]):
            records[rec["row"]["image"]] = rec
    return records, model


def open_log(path: Path, header: dict[str, Any], truncate: bool) -> int:
    """An O_APPEND descriptor on a worker's log; a new (or truncated) log gets its header atomically, and a line
    cut by a kill is closed so the next record starts on its own line."""
    if truncate or not path.is_file() or path.stat().st_size == 0:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(header, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) != b"\n":
            os.write(fd, b"\n")
    return fd


def _write_all(fd: int, data: bytes) -> None:
    # One write call per group in the normal case: a group's records land together.
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


@dataclass
class FaithState:
    """One process's view of the job: settings, planned maps, image resolver, model and scorers (lazy)."""

    s: Any
    settings: dict[str, Any]
    guard: dict[str, Any]
    items: list[Any]
    resolver: Any
    out: Path
    per: int
    backend: Any = None
    model: dict[str, Any] = field(default_factory=dict)
    scorers: dict[tuple[str, ...], Any] = field(default_factory=dict)
    warn: Callable[[str], None] = field(default=lambda m: log.warning(m))

    def load(self, device: str) -> None:
        """Load the backend once, on the device the runner gives this worker."""
        if self.backend is not None:
            return
        from xaiclip_cli.metrics.commands import _load_backend

        self.backend = _load_backend(self.s, device)
        from xaiclip_cli.metrics.scoring import model_record

        self.model = model_record(self.backend)

    def scorer(self, prompts: list[str]) -> Any:
        """The target scorer of one text set (texts encoded once per process)."""
        from xaiclip_cli.metrics.scoring import cached_scorer

        return cached_scorer(self.scorers, self.backend, prompts, self.s.score)


def build_state(s: Any, warn: Callable[[str], None] | None = None) -> FaithState:
    """Plan the maps and check everything that would fail for every map before anything is written (exit 2)."""
    from xaiclip_cli.metrics import insertion_deletion as ID
    from xaiclip_cli.metrics.maps import collect
    from xaiclip_cli.metrics.scoring import ImageResolver, texts_of

    settings = faithfulness_settings(s)
    items = collect(s.maps, s.limit)
    resolver = ImageResolver(s.images, s.dataset, s.split)
    resolver.check_counts(items)
    for it in items:  # a map without texts is a usage error of the run, found before any worker starts
        if it.phi is not None and np.isfinite(it.phi).all():
            texts_of(it, s.text)
    ID.parse_baseline(s.baseline)
    st = FaithState(s, settings, guard_of(settings), items, resolver, Path(s.output_dir), group_size(s))
    if warn is not None:
        st.warn = warn
    return st


def _one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@dataclass
class _Sub:
    """One text set's maps of a group, ready to score: inputs, rankings and perturbation plan (producer side),
    targets and scores (filled by the consumer)."""

    sub: list[Any]  # (item, row, names, scorer, image) of every map of the text set
    sc: Any
    x: Any  # unperturbed pixels of every map of ``sub`` (the batch of the target forward, when one is needed)
    keep: list[int]  # positions in ``sub`` of the maps with a valid ranking
    xs: Any
    bs: Any
    rk: Any
    cnts: list[np.ndarray]
    ns: list[int]
    plan: Any
    invalid: list[dict[str, Any]]  # skipped records of invalid maps
    tt: list[int] = field(default_factory=list)
    tg_all: Any = None
    vals: Any = None


@dataclass
class _Group:
    """One fixed group of maps: skipped records and failures found while preparing, and its scorable subsets."""

    idx: list[int]
    recs: list[dict[str, Any]]
    fails: list[dict[str, Any]]
    subs: list[_Sub]


def _scorers(st: FaithState, indices: list[int]) -> None:
    """Create (in the calling thread, which owns the model) the scorer of every text set ``indices`` may need."""
    from xaiclip_cli.metrics.scoring import texts_of

    for i in indices:
        it = st.items[i]
        if it.phi is not None and np.isfinite(it.phi).all():
            st.scorer(texts_of(it, st.s.text)[1])


def prepare_group(st: FaithState, idx: list[int]) -> _Group:
    """Everything of one group but the model: images, pixels, baselines, rankings, counts and perturbation plans
    (runs in the read-ahead thread; the scorers exist already, see :func:`_scorers`)."""
    import torch

    from xaiclip_cli.metrics import insertion_deletion as ID
    from xaiclip_cli.metrics.scoring import texts_of

    s = st.s
    kind, value = ID.parse_baseline(s.baseline)
    g = _Group(idx, [], [], [])
    group: list[Any] = []
    for i in idx:
        it = st.items[i]
        row = {"image": it.key, "target": it.target_name or "", "label": "", "status": "ok", "reason": "",
               "method": it.method or it.kind, "image_stem": it.stem}
        if it.phi is None:
            g.recs.append({"row": {**row, "status": "skipped", "reason": it.reason}})
            continue
        if not np.isfinite(it.phi).all():
            g.recs.append({"row": {**row, "status": "skipped", "reason": "nan"}})
            continue
        try:
            img = st.resolver.get(it)
        except UsageError:
            raise
        except XaiclipError as exc:  # this image only (unreadable file): failed.jsonl, retried on a rerun
            g.fails.append({"index": i, "error": _one_line(exc)})
            st.warn(f"{it.key}: {_one_line(exc)}")
            continue
        if img is None:
            g.recs.append({"row": {**row, "status": "skipped", "reason": "missing_image"}})
            continue
        names, prompts = texts_of(it, s.text)
        group.append((it, row, names, st.scorer(prompts), img))
    from xaiclip_cli.metrics.commands import by_text_set

    for sub, sc, x in by_text_set(group):  # one subset per text set, in first-seen order
        base = ID.make_baseline(kind, x, mean=sc.mean, std=sc.std, value=value, seed=s.seed)
        keep, ranks, cnts, ns, invalid = [], [], [], [], []
        for j, (it, row, *_rest) in enumerate(sub):
            try:
                r = ID.pixel_ranks(it.phi, sc.size, s.unit, s.convention)
            except ID.InvalidMap as exc:
                invalid.append({"row": {**row, "status": "skipped", "reason": exc.reason}})
                continue
            n = ID.n_features(it.phi.shape, sc.size, s.unit)
            keep.append(j)
            ranks.append(torch.as_tensor(r))
            cnts.append(ID.counts(n, s.steps, s.convention, s.max_fraction, s.rise_step))
            ns.append(n)
        if not keep:
            g.subs.append(_Sub(sub, sc, x, [], None, None, None, [], [], None, invalid))
            continue
        xs, bs = x[keep], base[keep]
        rk = torch.stack(ranks).to(xs.device)
        plan = ID.plan_curves(len(keep), cnts, ["deletion", "insertion"], xs.device)
        g.subs.append(_Sub(sub, sc, x, keep, xs, bs, rk, cnts, ns, plan, invalid))
    return g


def _work(st: FaithState, groups: list[list[int]]) -> Iterator[tuple[str, Any, Any, Any]]:
    """The producer: per group ("group", g), then ("batch", subset, job slice, perturbed images) of each forward
    batch (the batches of a one-process run), then ("end", g)."""
    from xaiclip_cli.metrics import insertion_deletion as ID

    for idx in groups:
        g = prepare_group(st, idx)
        yield "group", g, None, None
        for sub in g.subs:
            if sub.keep:
                for sl, batch in ID.perturbed_batches(sub.xs, sub.bs, sub.rk, sub.plan, st.s.batch_size):
                    yield "batch", sub, sl, batch
        yield "end", g, None, None


def _start_group(st: FaithState, g: _Group) -> None:
    """Targets of each subset (one forward of its unperturbed images where a rule needs it) and its score array."""
    import torch

    from xaiclip_cli.metrics.commands import _targets

    for sub in g.subs:
        tg = _targets(st, sub.sub, sub.x)  # also for a subset of invalid maps only, as a sequential run does
        if not sub.keep:
            continue
        sub.tt = [tg[j] for j in sub.keep]
        sub.tg_all = torch.as_tensor(np.asarray(sub.tt, dtype=np.int64), device=sub.xs.device)[sub.plan.img]
        sub.vals = np.empty(sub.plan.size, dtype=np.float64)


def _group_records(st: FaithState, g: _Group) -> list[dict[str, Any]]:
    """The records of a scored group: skipped maps, then per subset its invalid maps and its scored maps."""
    from xaiclip_cli.metrics import insertion_deletion as ID

    s = st.s
    recs = list(g.recs)
    for sub in g.subs:
        recs += sub.invalid
        if not sub.keep:
            continue
        ys = sub.plan.curves(sub.vals)
        y_del, y_ins, cnts, ns, tt = ys["deletion"], ys["insertion"], sub.cnts, sub.ns, sub.tt
        for k, j in enumerate(sub.keep):
            row, names = sub.sub[j][1], sub.sub[j][2]
            row = {**row, "target": names[tt[k]], "target_index": tt[k],
                   "deletion_auc": ID.auc(cnts[k], ns[k], y_del[k], s.convention),
                   "insertion_auc": ID.auc(cnts[k], ns[k], y_ins[k], s.convention),
                   "score_full": float(y_del[k][0]), "score_baseline": float(y_ins[k][0]), "n_features": ns[k]}
            recs.append({"row": row, "x": np.asarray(ID.x_axis(cnts[k], ns[k])).tolist(),
                         "y_deletion": np.asarray(y_del[k]).tolist(), "y_insertion": np.asarray(y_ins[k]).tolist()})
    return recs


def read_ahead_depth(device: Any) -> int:
    """How far the producer thread runs ahead: :data:`READ_AHEAD` on CUDA (it queues kernels while the model
    runs) or when torch leaves a CPU core free for it; 0 (sequential) when torch's threads take every core, as a
    second thread would only compete with the model there."""
    import torch

    if torch.device(device).type == "cuda":
        return READ_AHEAD
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return READ_AHEAD if torch.get_num_threads() < cores else 0


def execute(st: FaithState, indices: list[int], device: str, advance: Callable[[int], None],
            worker: int) -> dict[str, Any]:
    """Score the maps at ``indices`` in this process, appending their records to worker ``worker``'s log.

    A read-ahead thread prepares the groups and builds the perturbed batches (:func:`_work`) while this thread
    runs the model on the previous batch (:func:`read_ahead_depth`); batches, and so every value, are those of a
    sequential run.
    """
    from xaiclip_cli.parallel.prefetch import read_ahead

    if not indices:
        return {"done": 0, "failures": []}
    st.load(device)
    t0 = time.perf_counter()
    _scorers(st, indices)
    groups = [list(grp) for _g, grp in itertools.groupby(sorted(indices), key=lambda i: i // st.per)]
    fd = open_log(log_path(st.out, worker), {"settings": st.guard, "model": st.model}, bool(st.s.overwrite))
    done, failures = 0, []
    try:
        work = read_ahead(_work(st, groups), read_ahead_depth(st.backend.device), name="xaiclip-faithfulness-batches")
        for kind, obj, sl, batch in work:
            if kind == "batch":  # obj: the subset the batch belongs to
                obj.vals[sl] = obj.sc(batch, obj.tg_all[sl]).detach().double().cpu().numpy().reshape(-1)
                continue
            g: _Group = obj
            if kind == "group":
                _start_group(st, g)
            else:
                recs = _group_records(st, g)
                if recs:  # one write per group, tagged so that a group cut by a kill is redone whole
                    tag = {"wid": os.urandom(6).hex(), "of": len(recs)}
                    _write_all(fd, "".join(json.dumps({**r, **tag}, default=float) + "\n" for r in recs).encode())
                done += len(recs)
                failures += g.fails
                advance(len(g.idx))
    finally:
        os.close(fd)
    return {"done": done, "failures": failures, "model": st.model, "loop_s": time.perf_counter() - t0,
            "forwards": sum(sc.forwards for sc in st.scorers.values()),
            "model_s": sum(sc.model_seconds for sc in st.scorers.values())}


def _settings_payload(s: Any) -> dict[str, Any]:
    return s.model_dump(mode="json") if hasattr(s, "model_dump") else json.loads(json.dumps(vars(s), default=str))


def faithfulness_share(payload: dict[str, Any], indices: list[int], device: str, advance: Any) -> dict[str, Any]:
    """Runner worker target: rebuild the job from the settings and score the maps at ``indices``."""
    from xaiclip_cli.config.eval import EvalSettings

    st = build_state(EvalSettings.model_validate(payload["settings"]))
    worker = int(payload["rank"]) * int(payload["n_local"]) + int(os.environ.get("XAICLIP_WORKER_RANK", "0"))
    return execute(st, indices, device, advance, worker)


def _check_output(out: Path, overwrite: bool) -> None:
    """Refuse a folder with a finished result (a result with failed maps may be resumed)."""
    ej = out / "eval.json"
    if not ej.exists() or overwrite:
        return
    try:
        partial = int(json.loads(ej.read_text(encoding="utf-8")).get("counts", {}).get("failed", 0)) > 0
    except (OSError, ValueError, AttributeError, TypeError):
        partial = False
    if not partial:
        raise UsageError(f"{ej} exists; pass --overwrite to replace the results in {out}")


def _start_over(out: Path, rank: Any, workers: int, n_local: int) -> None:
    """--overwrite: each rank empties its own workers' logs; rank 0 removes results, the lock, other logs."""
    mine = range(rank.rank * n_local, (rank.rank + 1) * n_local)
    for p in log_files(out):
        w = p.name.split(".")[1]
        if (w.isdigit() and int(w) in mine) or (rank.rank == 0 and (not w.isdigit() or int(w) >= workers)):
            p.unlink()
    if rank.rank == 0:
        for name in (*R.RESULT_FILES, LOCK, "failed.jsonl"):
            (out / name).unlink(missing_ok=True)


@contextmanager
def _no_progress(total: int | None, description: str, unit: str = "items") -> Iterator[Callable[[int], None]]:
    yield lambda n=1: None


def run(s: Any, progress: Callable[..., Any] | None = None, warn: Callable[[str], None] | None = None,
        env: dict[str, str] | None = None) -> dict[str, Any]:
    """Plan, shard, run and collect `eval faithfulness`; returns {"doc", "exit_code", "collected", ...}.

    ``doc`` is the eval.json document (or, on a rank that does not collect, the same shape with what is recorded
    so far, not written). ``progress(total, description, unit=...)`` yields ``advance(n)`` (RunContext.progress).
    """
    from xaiclip_cli.parallel.ranks import rank_from_env
    from xaiclip_cli.parallel.runner import JobSpec, check_gpus, local_shares, run_job

    warn = warn or (lambda m: log.warning(m))
    progress = progress or _no_progress
    st = build_state(s)  # each failed map is logged where it fails (worker or parent); one summary warning below
    out = st.out
    _check_output(out, bool(s.overwrite))
    if not s.overwrite and out.is_dir():
        check_logs(out, st.guard)
    device = "cpu" if s.device == "cpu" else s.device
    check_gpus(s.gpus, device)
    rank = rank_from_env(env)
    device = _rank_device(device, s.gpus, rank)
    n_local = len(s.gpus) if len(s.gpus) > 1 else 1
    workers = rank.world * n_local
    done = set(read_logs(out, st.guard)[0]) if out.is_dir() and not s.overwrite else set()
    live: dict[str, Any] = {"on": False, "keys": None}

    def is_done(i: int) -> bool:
        if live["on"]:  # after the shards (maps of a crashed worker): what the logs hold then, read once
            if live["keys"] is None:
                live["keys"] = set(read_logs(out, st.guard)[0])
            return st.items[i].key in live["keys"]
        return st.items[i].key in done

    def local(indices: list[int], dev: str, advance: Any) -> dict[str, Any]:
        return execute(st, indices, dev, advance, rank.rank)

    def plan_hook(todo: list[int], rk: Any) -> None:
        out.mkdir(parents=True, exist_ok=True)
        if s.overwrite:
            _start_over(out, rk, workers, n_local)
        live["on"] = True  # the crashed-worker check runs after every worker has exited

    spec = JobSpec("eval faithfulness", len(st.items), is_done, local,
                   worker_target="xaiclip_cli.metrics.faithfulness_job:faithfulness_share",
                   payload={"settings": _settings_payload(s) if n_local > 1 else {}, "rank": rank.rank,
                            "n_local": n_local},
                   sharding="blocks", align=st.per, overwrite=bool(s.overwrite), output_dir=out, failed_log=True,
                   describe=lambda i: {"image": st.items[i].key, "path": str(st.items[i].path)})
    todo_all = [i for i in range(len(st.items)) if s.overwrite or st.items[i].key not in done]
    if len(todo_all) < len(st.items):
        log.info("resuming: %d of %d maps already recorded in %s", len(st.items) - len(todo_all), len(st.items), out)
    todo_n = sum(len(x) for x in local_shares(len(st.items), todo_all, s.gpus, rank, "blocks", st.per))
    with progress(todo_n, "eval faithfulness", unit="maps") as advance:
        # Nothing left for this rank (a collect-only rerun): no worker processes to start.
        report = run_job(spec, gpus=s.gpus if todo_n else (), device=device, advance=advance, env=env,
                         plan_hook=plan_hook)
    for o in report.outcomes:
        if o.exit_code != 0 or o.result is None:
            warn(f"worker {o.rank} (gpu {o.gpu}) failed: {o.error}; rerun to resume its maps")
    if report.failures:
        f = report.failures[0]
        more = f" and {report.failed - 1} more" if report.failed > 1 else ""
        warn(f"{report.failed} map(s) failed, listed in {out / 'failed.jsonl'} ({f.get('image')}: {f['error']}"
             f"{more}); rerun the same command to retry them")
    records, model = read_logs(out, st.guard)
    failed_keys = {st.items[f["index"]].key for f in report.failures}
    missing = [it.key for it in st.items if it.key not in records and it.key not in failed_keys]
    collected = False
    if not rank.distributed:
        collected = True
    elif not missing and not failed_keys:
        collected = _lock(out)
        if not collected:
            log.info("another rank collects the results in %s", out)
    else:
        log.info("rank %d of %d: %d map(s) not recorded yet; the last rank to finish writes eval.json", rank.rank,
                 rank.world, len(missing) + len(failed_keys))
    stats = report.stats
    doc = collect_results(st, records, model or stats.get("model") or st.model, stats, len(failed_keys),
                          write=collected)
    return {"doc": doc, "exit_code": report.exit_code, "collected": collected, "failures": report.failures,
            "workers": report.workers, "seconds": report.seconds}


def _rank_device(device: str, gpus: list[int], rank: Any) -> str:
    """Under torchrun/SLURM without --gpus, a rank on a CUDA machine takes the GPU of its local rank."""
    if not rank.distributed or gpus or device not in ("auto", "cuda"):
        return device
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"cuda:{rank.local_rank % n}" if n else device


def _lock(out: Path) -> bool:
    """Take the collector lock (O_EXCL: exactly one rank wins)."""
    try:
        fd = os.open(out / LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}) + "\n")
    return True


def collect_results(st: FaithState, records: dict[str, dict[str, Any]], model: dict[str, Any],
                    stats: dict[str, Any], failed: int, write: bool = True) -> dict[str, Any]:
    """The eval.json document of every recorded map in map order (and, with ``write``, the result files)."""
    s, out = st.s, st.out
    recs = [records[it.key] for it in st.items if it.key in records]
    rows = [rec["row"] for rec in recs]
    ok_recs = [rec for rec in recs if rec["row"]["status"] == "ok"]
    ok = [rec["row"] for rec in ok_recs]
    keys = ["insertion_auc", "deletion_auc", "score_full", "score_baseline"]
    metrics = R.summarise(ok, keys, s.bootstrap, s.seed) if write else {}
    lengths = {len(rec["x"]) for rec in ok_recs}
    files: dict[str, Any] = {"per_image": "per_image.csv", "curves": None, "plot": None}
    notes: list[str] = [] if len(lengths) <= 1 else [
        "maps with different grids give curves of different lengths: curves.npz not written (per-image values in "
        "per_image.csv)"]
    if failed:
        notes.append(f"{failed} map(s) failed (see failed.jsonl); rerun the same command to retry them")
    if write and ok_recs and len(lengths) == 1:
        arrays = {"image": np.asarray([r["image"] for r in ok], dtype=str)}
        for mode in ("insertion", "deletion"):
            arrays[f"x_{mode}"] = np.asarray([rec["x"] for rec in ok_recs], dtype=np.float64)
            arrays[f"y_{mode}"] = np.asarray([rec[f"y_{mode}"] for rec in ok_recs], dtype=np.float64)
        R.write_curves(out, arrays)
        R.plot_mean_curves(out, {m: (arrays[f"x_{m}"], arrays[f"y_{m}"]) for m in ("insertion", "deletion")},
                           title=f"{s.convention} insertion/deletion, baseline {s.baseline}, {s.steps} steps, "
                           f"{len(ok)} images", ylabel=f"{s.score} of the target", seed=s.seed)
        files.update(curves="curves.npz", plot="curves.png")
    counts: dict[str, Any] = {"images": len(st.items), "evaluated": len(ok), "skipped": R.skipped_counts(rows),
                              "forwards": int(stats.get("forwards") or 0)}
    if failed:
        counts["failed"] = failed
    if not write:
        counts["recorded"] = len(rows)
        notes.append("not collected on this rank: the last rank to finish writes eval.json")
    per_class = R.summarise(ok, ["insertion_auc", "deletion_auc"], s.bootstrap, s.seed, group_key="target") \
        if write else {}
    timing = {"loop_s": float(stats.get("loop_s") or 0.0), "model_s": float(stats.get("model_s") or 0.0)}
    doc = R.eval_document("faithfulness", st.settings, counts, metrics, model=model, per_class=per_class,
                          extra={"timing": timing, "notes": notes}, files={"dir": str(out), **files})
    if write:
        R.write_per_image(out, rows)
        R.write_eval_json(out, doc)
    return doc
