"""Low-level HDF5 writing: create row datasets, commit batches (features → columns → written mask), VDS index.

Commit order is what makes resume exact: a batch's features and small columns are flushed before its rows are
marked ``written`` and flushed again, so a row marked written on disk always has its features on disk.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from xaiclip_cli.errors import XaiclipError
from xaiclip_cli.store import layout as L


@dataclass
class Batch:
    """Encoded rows [start, stop) of one row file (local row numbers) plus their small columns."""

    start: int
    stop: int
    cls: np.ndarray
    tokens: np.ndarray | None
    ids: np.ndarray
    labels: np.ndarray
    source_split: np.ndarray
    source_index: np.ndarray
    image_hash: np.ndarray

    @property
    def n(self) -> int:
        """Rows in the batch."""
        return self.stop - self.start


def set_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    """Write attrs (None values are skipped; str stays a vlen str attr)."""
    for k, v in attrs.items():
        if v is None:
            continue
        obj.attrs[k] = v


def create_row_datasets(f: h5py.Group, n_rows: int, d: int, t: int | None, cls_dtype: str,
                        has_tokens: bool, features: bool = True) -> None:
    """Create the preallocated row datasets (§3.1) with their fills; features optional (the index uses VDS)."""
    if features:
        f.create_dataset(L.IMAGE_FEATURES, shape=(n_rows, d), dtype=np.dtype(cls_dtype),
                         chunks=L.feature_chunks(L.IMAGE_FEATURES, n_rows, d) if n_rows else None,
                         fillvalue=np.nan)
        if has_tokens:
            assert t is not None and t > 0
            f.create_dataset(L.IMAGE_TOKENS, shape=(n_rows, t, d), dtype=L.TOKEN_DTYPE,
                             chunks=L.feature_chunks(L.IMAGE_TOKENS, n_rows, d, t) if n_rows else None,
                             fillvalue=np.nan)
    for name, spec in L.small_column_specs().items():
        kwargs: dict[str, Any] = {"shape": (n_rows, *spec.tail), "dtype": spec.dtype}
        if n_rows:
            kwargs["chunks"] = L.small_chunks(name, n_rows)
        if name != L.SPLIT:
            kwargs["fillvalue"] = spec.fill
        f.create_dataset(name, **kwargs)
        if name == L.SPLIT and n_rows:
            # vlen strings have no usable fill value in HDF5: write "" explicitly so unwritten rows read as "".
            f[name][:] = np.array([""] * n_rows, dtype=object)


def create_feature_vds(f: h5py.File, index_path: Path, plan: L.Plan, d: int, t: int | None, cls_dtype: str,
                       has_tokens: bool) -> None:
    """Virtual image_features / image_token_features over every planned part (relative paths, NaN fill)."""
    specs = [(L.IMAGE_FEATURES, (d,), np.dtype(cls_dtype))]
    if has_tokens:
        specs.append((L.IMAGE_TOKENS, (int(t or 0), d), L.TOKEN_DTYPE))
    for name, tail, dtype in specs:
        vl = h5py.VirtualLayout(shape=(plan.n_rows, *tail), dtype=dtype)
        for k in range(plan.n_parts):
            a, b = plan.part_range(k)
            src = h5py.VirtualSource(L.part_relpath(index_path, k), name, shape=(b - a, *tail), dtype=dtype)
            vl[a:b] = src
        f.create_virtual_dataset(name, vl, fillvalue=np.nan)


DIRECT_ROW_BYTES = 64 * 1024  # rows at least this large go one H5Dwrite_chunk each; smaller ones one write per batch


def direct_chunk_ok(ds: h5py.Dataset) -> bool:
    """True when rows of ``ds`` can go straight to disk as chunks: one row per chunk, no filters, little-endian.

    H5Dwrite_chunk skips HDF5's selection/conversion machinery (a copy per row); the bytes of an uncompressed
    (1, T, D) chunk are exactly the row in C order.
    """
    chunks = ds.chunks
    return (chunks is not None and chunks[0] == 1 and tuple(chunks[1:]) == tuple(ds.shape[1:])
            and ds.id.get_create_plist().get_nfilters() == 0 and ds.dtype.byteorder in ("<", "=", "|")
            and not ds.is_virtual)


class RowWriter:
    """Commits batches to one open row file; dataset handles are looked up once (h5py name lookups are slow).

    Token rows may be written ahead of their commit (``write_tokens``): they only count once the written mask
    says so, and a commit always flushes every feature before it marks rows written.
    """

    def __init__(self, f: h5py.File) -> None:
        self.f = f
        self.ds = {name: f[name] for name in L.ROW_DATASETS if name in f}
        tok = self.ds.get(L.IMAGE_TOKENS)
        self.direct_tokens = tok is not None and direct_chunk_ok(tok)
        self.written = self.ds[L.WRITTEN][...].astype(bool)  # this process is the file's only writer
        self.n_written = int(np.count_nonzero(self.written))

    def write_tokens(self, start: int, tokens: np.ndarray) -> None:
        """Token rows [start, start+len) straight to disk (one direct chunk write per row when possible)."""
        ds = self.ds[L.IMAGE_TOKENS]
        if not self.direct_tokens:
            ds[start:start + len(tokens)] = tokens
            return
        rows = np.ascontiguousarray(tokens, dtype=ds.dtype)  # no copy for C-contiguous float16 from torch
        if rows.shape[1:] != ds.shape[1:]:
            raise ValueError(f"token rows have shape {rows.shape[1:]}, the store holds {ds.shape[1:]}")
        tail = (0,) * (rows.ndim - 1)
        if rows[0].nbytes < DIRECT_ROW_BYTES:
            # Small rows: one low-level H5Dwrite of the whole batch costs less Python (and GIL) than a call per
            # row, which the model thread feels on a small model; measured crossover ≈ 64 KiB per row.
            fspace = ds.id.get_space()
            fspace.select_hyperslab((start, *tail), rows.shape)
            ds.id.write(h5py.h5s.create_simple(rows.shape), fspace, rows)
            return
        for i in range(len(rows)):
            ds.id.write_direct_chunk((start + i, *tail), rows[i])

    def write_columns(self, batch: Batch, split_names: np.ndarray) -> None:
        """Features and small columns of a batch (not yet the written mask); tokens=None: written already."""
        sl = slice(batch.start, batch.stop)
        ds = self.ds
        ds[L.IMAGE_FEATURES][sl] = batch.cls
        if batch.tokens is not None and L.IMAGE_TOKENS in ds:
            self.write_tokens(batch.start, batch.tokens)
        ds[L.IDS][sl] = batch.ids
        ds[L.LABELS][sl] = batch.labels
        ds[L.SPLIT][sl] = split_names
        ds[L.SOURCE_SPLIT][sl] = batch.source_split
        ds[L.SOURCE_INDEX][sl] = batch.source_index
        ds[L.IMAGE_HASH][sl] = batch.image_hash

    def commit(self, batches: Batch | Sequence[Batch]) -> int:
        """Commit one batch or a group with the crash-safe order; returns the file's new ``n_written``.

        Order: features + small columns of every batch, flush, then the written mask and ``n_written``, flush —
        a row marked written on disk always has its data on disk. Adjacent batches are written as one slice.
        """
        group = [batches] if isinstance(batches, Batch) else list(batches)
        for run in merge_adjacent(group):
            names = np.array([L.CODE_SPLITS[int(c)] for c in run.source_split], dtype=object)
            self.write_columns(run, names)
        self.f.flush()  # features on disk before any row claims to be written
        w = self.ds[L.WRITTEN]
        for start, stop in _ranges(group):
            w[start:stop] = True
            self.written[start:stop] = True
        self.n_written = int(np.count_nonzero(self.written))
        self.f.attrs["n_written"] = self.n_written
        self.f.flush()
        return self.n_written


def _ranges(batches: Sequence[Batch]) -> list[tuple[int, int]]:
    """[start, stop) row ranges covered by ``batches``, adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for b in sorted(batches, key=lambda x: x.start):
        if out and out[-1][1] == b.start:
            out[-1] = (out[-1][0], b.stop)
        else:
            out.append((b.start, b.stop))
    return out


def merge_adjacent(batches: Sequence[Batch]) -> list[Batch]:
    """Batches in row order, adjacent ones joined into one (fewer, larger HDF5 writes); tokens only if all None."""
    out: list[Batch] = []
    for b in sorted(batches, key=lambda x: x.start):
        prev = out[-1] if out else None
        if prev is not None and prev.stop == b.start and prev.tokens is None and b.tokens is None:
            out[-1] = Batch(prev.start, b.stop, np.concatenate([prev.cls, b.cls]), None,
                            np.concatenate([prev.ids, b.ids]), np.concatenate([prev.labels, b.labels]),
                            np.concatenate([prev.source_split, b.source_split]),
                            np.concatenate([prev.source_index, b.source_index]),
                            np.concatenate([prev.image_hash, b.image_hash]))
        else:
            out.append(b)
    return out


def commit_batch(f: h5py.File, batch: Batch) -> int:
    """Write one batch with the crash-safe order and return the file's new ``n_written`` (see RowWriter)."""
    return RowWriter(f).commit(batch)


def refresh_counts(f: h5py.File) -> tuple[int, dict[str, int]]:
    """Recompute root ``n_written`` and ``split_counts`` from the written mask and source_split."""
    written = f[L.WRITTEN][...]
    counts = L.split_counts(f[L.SOURCE_SPLIT][...], written)
    n = int(np.count_nonzero(written))
    f.attrs["n_written"] = n
    f.attrs["split_counts"] = L.json_attr(counts)
    return n, counts


# How long a writer waits for another process (usually a reader) to release the HDF5 file lock before giving up.
LOCK_WAIT_S = 10.0
_LOCK_BACKOFF_S = (0.05, 1.0)  # first and largest pause between attempts


class StoreLockedError(XaiclipError):
    """Another process holds the HDF5 file lock for longer than LOCK_WAIT_S (exit 1)."""


def is_lock_error(exc: BaseException) -> bool:
    """True for HDF5's 'unable to lock file' (errno EAGAIN/EWOULDBLOCK), i.e. another process has the file open."""
    if isinstance(exc, BlockingIOError):
        return True
    return "unable to lock file" in str(exc).lower()


def _open_waiting(path: Path, mode: str, wait: float | None) -> h5py.File:
    """h5py.File, retried with a growing back-off while the file is locked; StoreLockedError after ``wait`` s."""
    wait = LOCK_WAIT_S if wait is None else wait
    deadline = time.monotonic() + wait
    pause = _LOCK_BACKOFF_S[0]
    while True:
        try:
            return h5py.File(path, mode)
        except OSError as exc:
            if not is_lock_error(exc):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                verb = "read" if mode == "r" else "write"
                raise StoreLockedError(
                    f"store is locked by another process (a reader?): cannot open {path} to {verb} after "
                    f"{wait:g} s; close the other program (db, Python session) and rerun the same command") from exc
            time.sleep(min(pause, left))
            pause = min(pause * 2, _LOCK_BACKOFF_S[1])


def open_h5(path: Path, mode: str, wait: float | None = None) -> h5py.File:
    """Open an HDF5 file, waiting out another process's lock; HDF5 errors become one-line XaiclipErrors."""
    try:
        return _open_waiting(path, mode, wait)
    except OSError as exc:
        raise XaiclipError(f"cannot open {path}: {str(exc).splitlines()[0]}; delete it or pass --overwrite") from exc


def try_open(path: Path, mode: str = "r", wait: float | None = None) -> h5py.File | None:
    """Open, or return None when the file is damaged (a part killed mid-write); a locked file is not damaged."""
    try:
        return _open_waiting(path, mode, wait)
    except (OSError, KeyError, RuntimeError):
        return None


def replace_file(tmp: Path, final: Path) -> None:
    """Atomic rename of a finished file into place."""
    os.replace(tmp, final)


class WriterThread:
    """One thread owns the HDF5 handles; a bounded queue of jobs (callables) feeds it, errors surface in the caller.

    Bounded so that a slow disk throttles the model loop instead of filling memory.
    """

    def __init__(self, maxsize: int = 3) -> None:
        self._q: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=maxsize)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xaiclip-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._q.get()
            try:
                if job is None:
                    return
                if self._error is None and not self._stop.is_set():
                    job()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = exc
            finally:
                self._q.task_done()

    def check(self) -> None:
        """Re-raise a writer error in the calling thread."""
        if self._error is not None:
            raise self._error

    def submit(self, job: Callable[[], None]) -> None:
        """Queue a job (blocks while the queue is full); raises a pending writer error first."""
        while True:
            self.check()
            try:
                self._q.put(job, timeout=0.2)
                return
            except queue.Full:
                continue

    def drain(self) -> None:
        """Wait until every queued job ran; re-raise the first error."""
        self._q.join()
        self.check()

    def abort(self) -> None:
        """Skip the jobs still queued (the one running finishes), then stop the thread."""
        self._stop.set()
        self.close()

    def close(self) -> None:
        """Stop the thread after the queued jobs."""
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()


@contextlib.contextmanager
def writer_thread(maxsize: int = 3) -> Iterator[WriterThread]:
    """A WriterThread that is always stopped (drained on success, aborted on error)."""
    w = WriterThread(maxsize)
    try:
        yield w
        w.drain()
    except BaseException:
        w.abort()
        raise
    finally:
        w.close()
