"""The image stage: plan rows, load + preprocess in a prefetch thread, encode, commit batches from a writer thread.

Batches are aligned to fixed row ranges inside each row file, so a resumed run encodes exactly the batches an
uninterrupted run would (same composition → same values) and only those not yet committed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.store import layout as L
from xaiclip_cli.store.index import (
    check_model,
    check_plan,
    prepare_root,
    remove_part_files,
    remove_store,
    safe_refresh_index,
)
from xaiclip_cli.store.merge import materialize, relink_if_renamed
from xaiclip_cli.store.provenance import StoreIdentity, identity_from_backend, intensity_provenance
from xaiclip_cli.store.results import StoreImageResult
from xaiclip_cli.store.target import check_rank_target
from xaiclip_cli.store.writer import (
    Batch,
    RowWriter,
    StoreLockedError,
    create_row_datasets,
    open_h5,
    refresh_counts,
    replace_file,
    set_attrs,
    try_open,
    writer_thread,
)

log = logging.getLogger("xaiclip.store")

Advance = Callable[[int], None]
ProgressFactory = Callable[[int | None], contextlib.AbstractContextManager[Advance]]  # total rows -> bar's advance


@dataclass
class ImageOptions:
    """How to write: target, layout, batch and part sizes, dtypes, safety switches, this process's rank."""

    h5: Path
    layout: str = "sharded"
    part_rows: int = L.DEFAULT_PART_ROWS
    batch_size: int = 32
    cls_dtype: str = "float32"
    tokens: bool = True
    overwrite: bool = False
    space_check: bool = True
    check_source: bool = False
    rank: int = 0
    world: int = 1
    manage_index: bool = True  # False for ranks of a multi-process run: only merge touches the index
    dataset_ref: str | None = None
    queue_size: int = 3
    commit_rows: int = 256  # commit (flush + written mask) at least every this many rows ...
    commit_seconds: float = 1.0  # ... or this often, and at the end of every row file
    # A finished single-process sharded run ends as one self-contained file (the parts are crash safety while
    # writing; a copied .h5 alone then works everywhere). False keeps the linked index and its parts folder.
    materialize: bool = True
    # 0: load + hash images in a prefetch thread of this process; N > 0: N spawned processes decode and hash the
    # images and hand uint8 batches back in shared memory (torch tensors), keeping the GIL free for the model loop.
    workers: int = 0


@dataclass
class RowFile:
    """One file of rows [row_start, row_stop): a part (renamed when complete) or the single store."""

    path: Path
    final: Path | None
    row_start: int
    row_stop: int
    pending: list[tuple[int, int]] = field(default_factory=list)  # local [a, b) batches still to encode
    index: int = -1  # part number, -1 for a single store
    handle: h5py.File | None = None
    writer: RowWriter | None = None
    group: list[Batch] = field(default_factory=list)  # encoded batches not yet committed (tokens on disk)
    group_started: float = 0.0

    @property
    def n(self) -> int:
        """Rows in the file."""
        return self.row_stop - self.row_start


def dataset_hashes(info: Any) -> dict[str, str]:
    """``dataset_md5``: the MD5 of the input file itself (what resume compares: a swapped file is refused);
    ``dataset_md5_official``: the MD5 MedMNIST publishes for that flag and size, beside it (equal for a pristine file).
    """
    file = Path(info.file) if info.file else None
    stated = str(info.md5 or "")
    if file is None or not file.is_file():
        return {"dataset_md5": stated}  # a folder or a manifest: no single file to hash
    from xaiclip_cli.data.npz import file_md5

    out = {"dataset_md5": file_md5(file)}
    if info.kind == "medmnist" and stated:
        out["dataset_md5_official"] = stated
        if stated != out["dataset_md5"]:
            log.warning("%s has MD5 %s, MedMNIST publishes %s for it: not the official file", file,
                        out["dataset_md5"], stated)
    return out


def source_attrs(source: Any, ref: str | None) -> dict[str, Any]:
    """Root attrs describing the input: `dataset` (JSON name), file, MD5, source image size."""
    info = source.info()
    name = info.extra.get("flag") or info.extra.get("name") if isinstance(info.extra, dict) else None
    if not name:
        r = info.ref or ref or info.kind
        name = r.split(":", 1)[1] if r.startswith("medmnist:") else r
    return {
        "dataset": L.json_attr(str(name)),
        "dataset_ref": str(ref or info.ref or ""),
        "dataset_file": str(info.file or ""),
        **dataset_hashes(info),
        "source_image_size": int(info.image_size or -1),
        "class_names": L.json_attr(list(info.class_names or [])),
        "dataset_limit": info.extra.get("limit") if isinstance(info.extra, dict) else None,  # --limit, if any
    }


def probe_backend(backend: Any, tokens: bool, cls_dtype: str) -> StoreIdentity:
    """Run one blank image through the model to learn D and T; returns the store identity."""
    import torch

    size = int(backend.image_size)
    blank = np.zeros((size, size, 3), dtype=np.uint8)
    with torch.inference_mode():
        g, tok = backend.encode_image(backend.preprocess([blank]))
    has_tokens = bool(tokens and tok is not None)
    if tokens and tok is None:
        log.warning("backend %s returns no image tokens; storing CLS features only", backend.name)
    n_tokens = int(tok.shape[1]) if tok is not None else -1
    if int(g.shape[-1]) != int(backend.embed_dim):
        raise XaiclipError(f"backend {backend.name}: features have width {g.shape[-1]}, embed_dim says "
                           f"{backend.embed_dim}")
    return identity_from_backend(backend, cls_dtype=cls_dtype, has_tokens=has_tokens, n_tokens=n_tokens)


def _part_attrs(identity: StoreIdentity, plan: L.Plan, k: int, src: dict[str, Any]) -> dict[str, Any]:
    a, b = plan.part_range(k)
    return {**identity.image_attrs(), **src, "layout": "sharded", "row_start": a, "row_stop": b,
            "n_written": 0, "complete": False, "plan": L.json_attr(plan.to_json()),
            "provenance": L.json_attr(identity.provenance), "part_rows": plan.part_rows, "n_rows": plan.n_rows}


def _create_part(path: Path, identity: StoreIdentity, plan: L.Plan, k: int, src: dict[str, Any]) -> None:
    a, b = plan.part_range(k)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        create_row_datasets(f, b - a, identity.embed_dim, identity.n_tokens, identity.cls_dtype,
                            identity.has_tokens)
        set_attrs(f, _part_attrs(identity, plan, k, src))
        f.flush()


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous [a, b) runs of True in a boolean vector."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.nonzero(d == 1)[0].tolist(), np.nonzero(d == -1)[0].tolist(), strict=True))


def _salvage_part(partial: Path, identity: StoreIdentity, plan: L.Plan, k: int, src: dict[str, Any]) -> np.ndarray:
    """Copy the committed rows of a part left by a killed run into a fresh file; returns its written mask.

    A file whose writer was killed may open yet refuse new writes (its end-of-allocation was never flushed), so
    the committed rows are carried over to a new file instead of appending in place.
    """
    fresh = partial.with_name(partial.name + ".tmp")
    _create_part(fresh, identity, plan, k, src)
    try:
        with h5py.File(partial, "r") as old, h5py.File(fresh, "r+") as new:
            written = old[L.WRITTEN][...].astype(bool)
            for a, b in _runs(written):
                for name in L.ROW_DATASETS:
                    if name in old and name in new and name != L.WRITTEN:
                        data = old[name][a:b]
                        new[name][a:b] = np.array(L.str_list(data), dtype=object) if name == L.SPLIT else data
            new.flush()
            new[L.WRITTEN][...] = written
            new.attrs["n_written"] = int(written.sum())
            new.flush()
    except (OSError, KeyError, RuntimeError, ValueError):
        log.warning("part %s could not be read back (killed mid-write); redoing it", partial)
        written = np.zeros(plan.part_range(k)[1] - plan.part_range(k)[0], dtype=bool)
        _create_part(fresh, identity, plan, k, src)
    os.replace(fresh, partial)
    return written


def _batches(n: int, bs: int, written: np.ndarray) -> list[tuple[int, int]]:
    """Aligned batches [a, b) of a file of n rows; those with any unwritten row."""
    out = []
    for a in range(0, n, bs):
        b = min(a + bs, n)
        if not bool(written[a:b].all()):
            out.append((a, b))
    return out


def _plan_parts(opts: ImageOptions, plan: L.Plan, identity: StoreIdentity, src: dict[str, Any]) -> tuple[
        list[RowFile], int]:
    """Row files this rank must work on (opening/repairing parts) and the number of rows already done."""
    fp = identity.fingerprint()
    files: list[RowFile] = []
    done = 0
    for k in range(plan.n_parts)[opts.rank::opts.world]:
        a, b = plan.part_range(k)
        final, partial = L.part_path(opts.h5, k), L.part_path(opts.h5, k, partial=True)
        if final.exists():
            f = try_open(final)
            if f is not None:
                with f:
                    if L.decode_str(f.attrs.get("fingerprint", "")) != fp:
                        raise UsageError(f"{final} was written with another model or settings; "
                                         "pass --overwrite or another --h5")
                    ok = bool(f.attrs.get("complete", False)) and int(np.count_nonzero(f[L.WRITTEN][...])) == b - a
                if ok:
                    done += b - a
                    continue
            log.warning("part %s is damaged or incomplete; redoing it", final)
            final.unlink()
        written = None
        if partial.exists():
            f = try_open(partial)
            if f is None:
                log.warning("part %s would not open (killed mid-write); redoing it", partial)
                partial.unlink()
            else:
                with f:
                    if L.decode_str(f.attrs.get("fingerprint", "")) != fp:
                        raise UsageError(f"{partial} was written with another model or settings; "
                                         "pass --overwrite or another --h5")
                written = _salvage_part(partial, identity, plan, k, src)
        if written is None:
            _create_part(partial, identity, plan, k, src)
            written = np.zeros(b - a, dtype=bool)
        done += int(np.count_nonzero(written))
        files.append(RowFile(partial, final, a, b, _batches(b - a, opts.batch_size, written), index=k))
    return files, done


def _plan_single(opts: ImageOptions, plan: L.Plan) -> tuple[list[RowFile], int]:
    with open_h5(opts.h5, "r") as f:
        written = f[L.WRITTEN][...]
    rf = RowFile(opts.h5, None, 0, plan.n_rows, _batches(plan.n_rows, opts.batch_size, written))
    return [rf], int(np.count_nonzero(written))


def _check_space(opts: ImageOptions, identity: StoreIdentity, unwritten: int) -> None:
    need = int(unwritten * L.row_bytes(identity.embed_dim, identity.n_tokens, identity.cls_dtype,
                                       identity.has_tokens) * 1.05)
    free = shutil.disk_usage(opts.h5.parent if opts.h5.parent.exists() else Path(".")).free
    if need > free:
        raise XaiclipError(f"not enough disk space for {opts.h5}: {unwritten} rows need {need / 1e9:.2f} GB, "
                           f"{free / 1e9:.2f} GB free; free space, use --no-tokens, or pass --no-space-check")


def _load_rows(source: Any, plan: L.Plan, rows: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray,
                                                                      np.ndarray]:
    """Images, labels, split codes and source indices of global rows (grouped per split for get_many)."""
    codes, idx = plan.row_source(rows)
    images: list[np.ndarray] = [None] * len(rows)  # type: ignore[list-item]
    labels = np.full(len(rows), -1, dtype=np.int64)
    for s in L.SPLITS:
        sel = np.nonzero(codes == L.SPLIT_CODES[s])[0]
        if len(sel) == 0:
            continue
        samples = source.get_many(s, [int(i) for i in idx[sel]])
        for j, smp in zip(sel, samples, strict=True):
            images[j] = np.asarray(smp.image)
            labels[j] = -1 if smp.label is None else int(smp.label)
    return images, labels, codes, idx


def _row_files_of_rank(opts: ImageOptions, plan: L.Plan) -> list[tuple[Path, int]]:
    """(existing file, first row) of every row file of this rank, finished or not."""
    if opts.layout == "single":
        return [(opts.h5, 0)]
    out = []
    for k in range(plan.n_parts)[opts.rank::opts.world]:
        for p in (L.part_path(opts.h5, k), L.part_path(opts.h5, k, partial=True)):
            if p.exists():
                out.append((p, plan.part_range(k)[0]))
                break
    return out


def _check_source(source: Any, plan: L.Plan, opts: ImageOptions) -> None:
    """--check-source: re-hash the images of written rows; refuse when any differs."""
    bad, first = 0, None
    for path, row_start in _row_files_of_rank(opts, plan):
        with open_h5(path, "r") as f:
            written = f[L.WRITTEN][...]
            hashes = f[L.IMAGE_HASH][...]
            sidx = f[L.SOURCE_INDEX][...]
        local = np.nonzero(written)[0]
        for a in range(0, len(local), 256):
            sel = local[a:a + 256]
            rows = sel + row_start
            images, _, _, idx = _load_rows(source, plan, rows)
            for j, img in enumerate(images):
                if not np.array_equal(L.image_hash(img), hashes[sel[j]]) or int(sidx[sel[j]]) != int(idx[j]):
                    bad += 1
                    first = int(rows[j]) if first is None else first
    if bad:
        raise XaiclipError(f"{opts.h5}: {bad} written rows no longer match their source images (first row {first}); "
                           "the input changed: pass --overwrite to re-encode")


def _load_hashed(source: Any, plan: L.Plan, rows: np.ndarray) -> tuple[Any, ...]:
    """The images of ``rows`` with their columns and content hashes: the loading both prefetchers share."""
    images, labels, codes, idx = _load_rows(source, plan, rows)
    return images, labels, codes, idx, np.stack([L.image_hash(im) for im in images])


class _Prefetcher:
    """Background thread: loads images, hashes them and runs backend.preprocess for the next batches."""

    def __init__(self, jobs: Iterator[tuple[RowFile, int, int]], source: Any, plan: L.Plan, backend: Any,
                 depth: int = 2) -> None:
        self._jobs, self._source, self._plan, self._backend = jobs, source, plan, backend
        self.q: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="xaiclip-prefetch", daemon=True)
        self.thread.start()

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for rf, a, b in self._jobs:
                if self.stop.is_set():
                    return
                rows = np.arange(rf.row_start + a, rf.row_start + b, dtype=np.int64)
                images, labels, codes, idx, hashes = _load_hashed(self._source, self._plan, rows)
                pixels = self._backend.preprocess(images)
                if not self._put((rf, a, b, pixels, rows, labels, codes, idx, hashes)):
                    return
            self._put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            self._put(exc)

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self.q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop producing and wait for the thread."""
        self.stop.set()
        while self.thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self.q.get_nowait()
            self.thread.join(timeout=0.05)


_WORKER_STATE: dict[str, Any] = {}


def _worker_init(source: Any, plan_json: dict[str, Any]) -> None:
    """Spawned worker: keep the source and plan; Ctrl-C is the parent's to handle (it terminates the pool)."""
    import signal

    import torch
    import torch.multiprocessing  # noqa: F401 - registers the shared-memory reductions for returned tensors

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    _WORKER_STATE.update(source=source, plan=L.Plan.from_json(plan_json))


def _worker_load(row_start: int, row_stop: int) -> tuple[Any, ...]:
    """Spawned worker: decode + hash the images of global rows [row_start, row_stop); uint8 batch in shared memory."""
    import torch

    rows = np.arange(row_start, row_stop, dtype=np.int64)
    images, labels, codes, idx, hashes = _load_hashed(_WORKER_STATE["source"], _WORKER_STATE["plan"], rows)
    same = all(im.dtype == np.uint8 and im.shape == images[0].shape for im in images)
    batch: Any = torch.from_numpy(np.stack(images)).share_memory_() if same else images
    return batch, labels, codes, idx, hashes


class _WorkerPrefetcher:
    """``workers`` spawned processes load the next batches (in order); the main process preprocesses and encodes.

    A bounded window of in-flight batches keeps memory flat; results are taken in submission order, so rows are
    encoded in exactly the order of the in-process prefetcher. A worker's exception is re-raised here unchanged.
    """

    def __init__(self, jobs: Iterator[tuple[RowFile, int, int]], source: Any, plan: L.Plan, backend: Any,
                 workers: int) -> None:
        import multiprocessing as mp

        import torch.multiprocessing  # noqa: F401 - the parent must know the shared-memory reductions too

        self._jobs, self._backend = jobs, backend
        self._window = 2 * workers
        self.pool = mp.get_context("spawn").Pool(workers, initializer=_worker_init,
                                                 initargs=(source, plan.to_json()))

    def __iter__(self) -> Iterator[Any]:
        import collections

        pending: collections.deque[tuple[RowFile, int, int, Any]] = collections.deque()
        jobs = iter(self._jobs)
        done = False
        while True:
            while not done and len(pending) < self._window:
                nxt = next(jobs, None)
                if nxt is None:
                    done = True
                    break
                rf, a, b = nxt
                pending.append((rf, a, b, self.pool.apply_async(_worker_load, (rf.row_start + a, rf.row_start + b))))
            if not pending:
                return
            rf, a, b, res = pending.popleft()
            batch, labels, codes, idx, hashes = res.get()
            images = list(batch.numpy()) if not isinstance(batch, list) else batch
            pixels = self._backend.preprocess(images)
            rows = np.arange(rf.row_start + a, rf.row_start + b, dtype=np.int64)
            yield rf, a, b, pixels, rows, labels, codes, idx, hashes

    def close(self) -> None:
        """Stop the workers now (nothing they still hold is needed) and reap them: no orphans, no shared memory."""
        self.pool.terminate()
        self.pool.join()


def is_single_store(h5: Path) -> bool:
    """True when ``h5`` is an xaiclip store with real (not virtual) image features: one self-contained file."""
    if not h5.is_file():
        return False
    f = try_open(h5)
    if f is None:
        return False
    with f:
        return L.SCHEMA_ATTR in f.attrs and L.IMAGE_FEATURES in f and not f[L.IMAGE_FEATURES].is_virtual


def run_image_stage(source: Any, backend: Any, opts: ImageOptions, advance: Advance | None = None,
                    progress: ProgressFactory | None = None) -> StoreImageResult:
    """Encode every unwritten row of ``source`` into the store at ``opts.h5``; resumable and idempotent.

    ``advance(n)`` is told of committed rows; or ``progress(total)`` opens a bar once the number of unwritten
    rows is known and yields the ``advance`` to use.
    """
    import torch

    t0 = time.perf_counter()
    opts.h5 = Path(opts.h5)
    if opts.workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {opts.workers}")
    if opts.layout not in L.LAYOUTS:
        raise UsageError(f"unknown layout {opts.layout!r} (sharded or single)")
    if opts.layout == "single" and opts.world > 1:
        raise UsageError("--layout single cannot be written by several processes; use --layout sharded")
    sizes = source.split_sizes()
    plan = L.Plan({s: int(sizes.get(s, 0)) for s in L.SPLITS}, opts.part_rows)
    if plan.n_rows == 0:
        raise UsageError(f"dataset {opts.dataset_ref or ''} has no images".replace("  ", " "))
    identity = probe_backend(backend, opts.tokens, opts.cls_dtype)
    intensity = intensity_provenance(source)
    if intensity is not None:  # the store records how its image files were mapped to uint8
        identity.provenance["intensity"] = intensity
    src = source_attrs(source, opts.dataset_ref)
    prov = identity.provenance if isinstance(identity.provenance, dict) else {}
    src["preprocess_path"] = str(prov.get("preprocess_path") or getattr(backend, "preprocess_path", "") or "")
    src["workers"] = int(opts.workers)  # how images were loaded (0: in-process thread); values do not depend on it
    if opts.overwrite and opts.manage_index:
        remove_store(opts.h5)
    if opts.layout == "sharded" and opts.materialize and opts.manage_index and is_single_store(opts.h5):
        # A store this command already materialised (or one written with --layout single): one file, resumed as such.
        log.debug("%s is a single self-contained file; continuing it with --layout single", opts.h5)
        opts.layout = "single"
    opts.h5.parent.mkdir(parents=True, exist_ok=True)
    created = False
    if opts.manage_index:
        created = prepare_root(opts.h5, plan, identity, opts.layout, src)
    elif opts.h5.exists() or opts.h5.is_symlink():
        check_rank_target(opts.h5)
        f = try_open(opts.h5)
        if f is not None:
            with f:
                check_model(f, opts.h5, identity, rows=True)
                if L.WRITTEN in f:
                    check_plan(f, opts.h5, plan, opts.layout, src)

    if opts.layout == "sharded" and opts.manage_index and not created:
        relink_if_renamed(opts.h5)  # renamed together with its parts folder: the index follows the folder
    if opts.layout == "sharded":
        # Parts finished by an earlier run enter the index now (nothing to do for a new index and no parts).
        if opts.manage_index and (not created or any(L.part_path(opts.h5, k).exists() for k in range(plan.n_parts))):
            safe_refresh_index(opts.h5, plan, fingerprint=identity.fingerprint())
        files, done_before = _plan_parts(opts, plan, identity, src)
    else:
        files, done_before = _plan_single(opts, plan)
    if opts.check_source:
        _check_source(source, plan, opts)
    todo_rows = sum(b - a for rf in files for a, b in rf.pending)
    if opts.space_check and todo_rows:
        _check_space(opts, identity, todo_rows)
    mine = sum(rf.n for rf in files) if opts.layout == "sharded" else plan.n_rows

    written_now = 0
    lock = threading.Lock()

    def commit(rf: RowFile, batch: Batch, last: bool) -> None:
        # Writer thread. Tokens go to disk at once; CLS, small columns and the written mask are committed per
        # group (commit_rows rows / commit_seconds / the file's last batch): fewer small HDF5 writes and flushes,
        # and a kill loses at most one group, which the next run redoes.
        nonlocal written_now
        if rf.handle is None or rf.writer is None:
            rf.handle = open_h5(rf.path, "r+")
            rf.writer = RowWriter(rf.handle)
            rf.group_started = time.monotonic()
        if batch.tokens is not None:
            rf.writer.write_tokens(batch.start, batch.tokens)
            batch.tokens = None
        rf.group.append(batch)
        rows = sum(b.n for b in rf.group)
        if not (last or rows >= opts.commit_rows or time.monotonic() - rf.group_started >= opts.commit_seconds):
            return
        n = rf.writer.commit(rf.group)
        rf.group, rf.group_started = [], time.monotonic()
        if rf.final is None:  # single store: the seed counters are refreshed per commit
            refresh_counts(rf.handle)
            rf.handle.flush()
        with lock:
            written_now += rows
        if advance is not None:
            advance(rows)
        if last and rf.final is not None:
            if n != rf.n:
                raise XaiclipError(f"{rf.path}: {n} of {rf.n} rows written after its last batch")
            rf.handle.attrs["complete"] = True
            rf.handle.flush()
            rf.handle.close()
            rf.handle = rf.writer = None
            replace_file(rf.path, rf.final)
            if opts.manage_index:
                refresh_part(rf.index)

    index_stale = False

    def refresh_part(k: int) -> None:
        # Best effort: a reader holding the index must not stall the writer; the final refresh catches up.
        nonlocal index_stale
        try:
            safe_refresh_index(opts.h5, plan, parts=[k], fingerprint=identity.fingerprint(), wait=0.0)
        except StoreLockedError:
            index_stale = True
            log.info("index %s is open in another process; part %d enters it at the end of the run", opts.h5, k)

    def jobs() -> Iterator[tuple[RowFile, int, int]]:
        for rf in files:
            for a, b in rf.pending:
                yield rf, a, b

    last_batch = {id(rf): rf.pending[-1] for rf in files if rf.pending}
    # A part whose rows were all written by a killed run but never renamed only needs finishing.
    for rf in files:
        if not rf.pending and rf.final is not None:
            with open_h5(rf.path, "r+") as f:
                f.attrs["complete"] = True
            replace_file(rf.path, rf.final)
            if opts.manage_index:
                refresh_part(rf.index)

    cls_np = np.dtype(opts.cls_dtype)

    def host_batch(a: int, b: int, g: Any, tok: Any, rows: np.ndarray, labels: np.ndarray, codes: np.ndarray,
                   idx: np.ndarray, hashes: np.ndarray) -> Batch:
        # Runs in the writer thread: the fp16 cast and device->host copy overlap the next forward, and the model
        # loop never waits for a copy (on a GPU .cpu() blocks only this thread until the kernels finish).
        with torch.inference_mode():
            cls = g.float().cpu().numpy().astype(cls_np, copy=False)
            toks = tok.to(torch.float16).cpu().numpy() if tok is not None else None
        return Batch(a, b, cls, toks, rows, labels, codes, idx.astype(np.int32), hashes)

    def job(rf: RowFile, a: int, b: int, g: Any, tok: Any, meta: tuple[np.ndarray, ...]) -> None:
        commit(rf, host_batch(a, b, g, tok, *meta), last_batch.get(id(rf)) == (a, b))

    bar = contextlib.ExitStack()
    if progress is not None and todo_rows:
        advance = bar.enter_context(progress(todo_rows))
    prefetch: _Prefetcher | _WorkerPrefetcher | None = None
    if todo_rows:
        prefetch = (_WorkerPrefetcher(jobs(), source, plan, backend, opts.workers) if opts.workers
                    else _Prefetcher(jobs(), source, plan, backend))
    device = getattr(backend, "device", None)
    try:
        with writer_thread(opts.queue_size) as writer:
            if prefetch is not None:
                for rf, a, b, pixels, rows, labels, codes, idx, hashes in prefetch:
                    if device is not None and isinstance(pixels, torch.Tensor):
                        pixels = pixels.to(device, non_blocking=True)
                    with torch.inference_mode():
                        g, tok = backend.encode_image(pixels)
                    tok = tok if identity.has_tokens else None
                    writer.submit(functools.partial(job, rf, a, b, g, tok, (rows, labels, codes, idx, hashes)))
    except OSError as exc:
        raise XaiclipError(f"writing {opts.h5} failed: {exc.strerror or exc}; the store is resumable: fix the cause "
                           "and rerun the same command") from exc
    finally:
        if prefetch is not None:
            prefetch.close()
        bar.close()
        for rf in files:
            if rf.handle is not None:
                try:
                    rf.handle.flush()
                    rf.handle.close()
                except Exception:  # noqa: BLE001 - closing after a failure must not mask it
                    pass
                rf.handle = rf.writer = None

    result_layout = opts.layout
    if opts.manage_index:
        if opts.layout == "sharded":
            if index_stale:  # some part could not enter the index while a reader held it: wait for it now
                safe_refresh_index(opts.h5, plan, fingerprint=identity.fingerprint())
        else:
            with open_h5(opts.h5, "r+") as f:
                refresh_counts(f)
                f.flush()
        with open_h5(opts.h5, "r") as f:
            n_done = int(f.attrs["n_written"])
        complete = n_done == plan.n_rows
        if complete and opts.layout == "sharded" and opts.materialize and opts.world == 1:
            t_m = time.perf_counter()
            materialize(opts.h5, opts.h5)
            result_layout = "single"
            log.debug("materialised %s into one self-contained file in %.1f s", opts.h5, time.perf_counter() - t_m)
        elif complete and opts.layout == "single" and L.parts_dir(opts.h5).is_dir():
            remove_part_files(opts.h5)  # left by a run killed between materialising and deleting the parts
    else:
        n_done = done_before + written_now
        complete = n_done == mine
    if result_layout == "single":
        parts_complete = 1 if complete else 0
    else:
        parts_complete = sum(1 for k in range(plan.n_parts) if L.part_path(opts.h5, k).exists())
    secs = time.perf_counter() - t0
    return StoreImageResult(
        h5=str(opts.h5), layout=result_layout, rows_total=plan.n_rows, rows_written=written_now,
        rows_skipped=done_before, rows_done=n_done, complete=complete, seconds=round(secs, 3),
        images_per_s=round(written_now / secs, 2) if secs > 0 else 0.0,
        parts_total=plan.n_parts if result_layout == "sharded" else 1, parts_complete=parts_complete,
        rank=opts.rank, world=opts.world,
    )
