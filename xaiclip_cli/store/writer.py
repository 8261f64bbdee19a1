"""Low-level HDF5 writing: create row datasets, commit batches (features → columns → written mask), VDS index.

Commit order is what makes resume exact: a batch's features and small columns are flushed before its rows are
marked ``written`` and flushed again, so a row marked written on disk always has its features on disk.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
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


def write_batch_columns(f: h5py.Group, batch: Batch, split_names: np.ndarray) -> None:
    """Features and small columns of a batch (not yet the written mask)."""
    sl = slice(batch.start, batch.stop)
    f[L.IMAGE_FEATURES][sl] = batch.cls
    if batch.tokens is not None and L.IMAGE_TOKENS in f:
        f[L.IMAGE_TOKENS][sl] = batch.tokens
    f[L.IDS][sl] = batch.ids
    f[L.LABELS][sl] = batch.labels
    f[L.SPLIT][sl] = split_names
    f[L.SOURCE_SPLIT][sl] = batch.source_split
    f[L.SOURCE_INDEX][sl] = batch.source_index
    f[L.IMAGE_HASH][sl] = batch.image_hash


def commit_batch(f: h5py.File, batch: Batch) -> int:
    """Write one batch with the crash-safe order and return the file's new ``n_written``."""
    names = np.array([L.CODE_SPLITS[int(c)] for c in batch.source_split], dtype=object)
    write_batch_columns(f, batch, names)
    f.flush()  # features on disk before any row claims to be written
    f[L.WRITTEN][batch.start:batch.stop] = True
    n = int(np.count_nonzero(f[L.WRITTEN][...]))
    f.attrs["n_written"] = n
    f.flush()
    return n


def refresh_counts(f: h5py.File) -> tuple[int, dict[str, int]]:
    """Recompute root ``n_written`` and ``split_counts`` from the written mask and source_split."""
    written = f[L.WRITTEN][...]
    counts = L.split_counts(f[L.SOURCE_SPLIT][...], written)
    n = int(np.count_nonzero(written))
    f.attrs["n_written"] = n
    f.attrs["split_counts"] = L.json_attr(counts)
    return n, counts


def open_h5(path: Path, mode: str) -> h5py.File:
    """Open an HDF5 file, turning HDF5's errors into one-line XaiclipErrors naming the file."""
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        raise XaiclipError(f"cannot open {path}: {str(exc).splitlines()[0]}; delete it or pass --overwrite") from exc


def try_open(path: Path, mode: str = "r") -> h5py.File | None:
    """Open or return None when the file is damaged (a part killed mid-write)."""
    try:
        return h5py.File(path, mode)
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
