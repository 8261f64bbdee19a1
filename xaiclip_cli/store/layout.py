"""The one definition of the feature-store layout: dataset/attr names, dtypes, chunks, fills, naming and JSON helpers.

Shared by the writer (store text/image/merge) and the reader (db ...). See shared/specs/store.md. Everything a
reader needs to interpret a store is named here, so both sides cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

# --- versions ------------------------------------------------------------------------------------------------
SCHEMA_VERSION = "xaiclip-store/1"
SCHEMA_ATTR = "schema_version"  # root attr holding SCHEMA_VERSION; absent in a seed-written file
SEED_VERSION = "1.0"  # root attr `version` of the seed layout
CREATED_AT_FORMAT = "%Y-%m-%d %H:%M:%S"

# --- splits ----------------------------------------------------------------------------------------------------
SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "test": 2}
CODE_SPLITS: dict[int, str] = {v: k for k, v in SPLIT_CODES.items()}
UNWRITTEN_SPLIT_CODE = 255

# --- row datasets (root of a single store / the index / every part) -------------------------------------------
IMAGE_FEATURES = "image_features"
IMAGE_TOKENS = "image_token_features"
IDS = "ids"
LABELS = "labels"
SPLIT = "split"
WRITTEN = "written"
SOURCE_SPLIT = "source_split"
SOURCE_INDEX = "source_index"
IMAGE_HASH = "image_hash"

FEATURE_DATASETS = (IMAGE_FEATURES, IMAGE_TOKENS)
SMALL_COLUMNS = (IDS, LABELS, SPLIT, WRITTEN, SOURCE_SPLIT, SOURCE_INDEX, IMAGE_HASH)
ROW_DATASETS = FEATURE_DATASETS + SMALL_COLUMNS

IMAGE_HASH_BYTES = 16  # BLAKE2b-128 of the uint8 HWC bytes
SMALL_CHUNK = 4096
CLS_CHUNK = 64
TOKEN_DTYPE = np.dtype("float16")
CLS_DTYPES = ("float32", "float16")


def string_dtype() -> Any:
    """The vlen UTF-8 string dtype used for `split`, `texts` and meta/ JSON (seed-compatible)."""
    return h5py.string_dtype("utf-8")


@dataclass(frozen=True)
class ColumnSpec:
    """dtype, per-row trailing shape, chunk rows and fill value of one small row column."""

    name: str
    dtype: Any
    tail: tuple[int, ...]
    fill: Any


def small_column_specs() -> dict[str, ColumnSpec]:
    """Specs of the small row columns (§3.1 table); `split` uses the vlen str dtype."""
    return {
        IDS: ColumnSpec(IDS, np.dtype("int64"), (), -1),
        LABELS: ColumnSpec(LABELS, np.dtype("int64"), (), -1),
        SPLIT: ColumnSpec(SPLIT, string_dtype(), (), ""),
        WRITTEN: ColumnSpec(WRITTEN, np.dtype("bool"), (), False),
        SOURCE_SPLIT: ColumnSpec(SOURCE_SPLIT, np.dtype("uint8"), (), UNWRITTEN_SPLIT_CODE),
        SOURCE_INDEX: ColumnSpec(SOURCE_INDEX, np.dtype("int32"), (), -1),
        IMAGE_HASH: ColumnSpec(IMAGE_HASH, np.dtype("uint8"), (IMAGE_HASH_BYTES,), 0),
    }


def feature_chunks(name: str, n_rows: int, d: int, t: int | None = None) -> tuple[int, ...]:
    """Chunk shape of a feature dataset: CLS (64, D), tokens (1, T, D) — one sample per chunk (fits the 1 MiB cache)."""
    if name == IMAGE_FEATURES:
        return (max(1, min(CLS_CHUNK, n_rows)), d)
    if name == IMAGE_TOKENS:
        assert t is not None
        return (1, t, d)
    raise KeyError(name)


def small_chunks(name: str, n_rows: int) -> tuple[int, ...]:
    """Chunk shape of a small column: (4096,) rows (capped at N), plus the trailing shape."""
    spec = small_column_specs()[name]
    return (max(1, min(SMALL_CHUNK, n_rows)), *spec.tail)


# --- root attributes --------------------------------------------------------------------------------------------
# The seed's tree view (§1.1, its `_root_attr_keys`) lists exactly these 13 root attr names and "..." for the others.
SEED_TREE_ROOT_ATTRS = (
    "D", "T_img", "created_at", "version", "split_counts",
    "logit_scale", "logit_bias", "concept_logit_scale", "concept_logit_bias",
    "label_texts", "prompt_temp_for_labels", "concept_texts", "prompt_temp_for_concepts",
)
# Every root attr of the seed view (§1 table): the 13 above plus `dataset`, which the seed writes but its tree
# does not list (so `db tree` shows it under "..."). `db verify` requires all 14.
SEED_ROOT_ATTRS = (*SEED_TREE_ROOT_ATTRS, "dataset")
# Root attrs holding JSON text (json.dumps(..., ensure_ascii=False)).
JSON_ROOT_ATTRS = (
    "split_counts", "label_texts", "prompt_temp_for_labels", "concept_texts", "prompt_temp_for_concepts",
    "dataset", "lib_versions",
)
# The four raw scalars (log-space scale, raw bias), float; NaN when the model has none.
SCALAR_ATTRS = ("logit_scale", "logit_bias", "concept_logit_scale", "concept_logit_bias")
EXP_SCALAR_ATTRS = ("logit_scale_exp", "concept_logit_scale_exp")
PROMPT_LIST_ATTRS = ("label_texts", "prompt_temp_for_labels", "concept_texts", "prompt_temp_for_concepts")
# Provenance attrs (§3.2) plus `model_fingerprint` (model only; what the text stage checks) and `part_rows`.
PROVENANCE_ATTRS = (
    SCHEMA_ATTR, "xaiclip_version", "model_id", "model_revision", "lib_versions", "dataset_file",
    "dataset_md5", "dataset_md5_official", "source_image_size", "model_input_size", "compute_dtype", "cls_dtype",
    "token_dtype",
    "cls_normalized", "tokens_projected", "tokens_normalized", "has_tokens", "logit_scale_exp",
    "concept_logit_scale_exp", "layout", "n_rows", "n_written", "fingerprint", "model_fingerprint", "part_rows",
)
LAYOUTS = ("sharded", "single")

# --- meta/ ------------------------------------------------------------------------------------------------------
META = "meta"
META_PROVENANCE = "provenance"
META_PROCESSOR = "processor_config"
META_PLAN = "plan"
META_DATASETS = (META_PROVENANCE, META_PROCESSOR, *PROMPT_LIST_ATTRS, META_PLAN)

# --- templates/ -------------------------------------------------------------------------------------------------
TEMPLATES = "templates"
TEXT_FEATURES = "text_features"
TEXT_TOKENS = "text_token_features"
TEXTS = "texts"
ATTENTION_MASK = "attention_mask"
LENGTHS = "lengths"
GROUP_ATTRS = ("K", "D", "T_txt", "texts_hash", "created_at", "template", "kind", "max_length", "fingerprint")
TEMPLATE_KINDS = ("concept", "label")
_GROUP_RE = re.compile(r"^(concept|label)_prompts_t(\d{2,})$")

# --- parts (sharded layout) -------------------------------------------------------------------------------------
PART_ATTRS = ("row_start", "row_stop", "fingerprint", "n_written", "complete")
PART_PARTIAL_SUFFIX = ".partial"
DEFAULT_PART_ROWS = 1024

# HDF5 object headers hold at most 64 KB of attributes (h5py#1855/#1053); larger lists live only in meta/.
ATTR_LIMIT_BYTES = 64 * 1024
ATTR_SAFE_BYTES = 48 * 1024  # leave room for the other attrs of the same object header

# Byte sizes of one row, for the disk-space check.
SMALL_ROW_BYTES = 8 + 8 + 8 + 1 + 1 + 4 + IMAGE_HASH_BYTES


# --- naming helpers ---------------------------------------------------------------------------------------------
def template_group_name(kind: str, index: int) -> str:
    """`concept_prompts_t01` … for template position ``index`` (0-based) of ``kind`` ('concept' or 'label')."""
    if kind not in TEMPLATE_KINDS:
        raise ValueError(f"unknown template kind {kind!r}")
    return f"{kind}_prompts_t{index + 1:02d}"


def parse_template_group_name(name: str) -> tuple[str, int] | None:
    """Inverse of template_group_name: (kind, 0-based index), or None for a name outside the scheme."""
    m = _GROUP_RE.match(name)
    if not m:
        return None
    return m.group(1), int(m.group(2)) - 1


def parts_dir(index_path: str | Path) -> Path:
    """Folder of the parts of a sharded store: `store.h5` → `store.parts/`."""
    p = Path(index_path)
    return p.with_name(p.stem + ".parts") if p.suffix else p.with_name(p.name + ".parts")


def part_name(k: int) -> str:
    """File name of part ``k``: `part-00000.h5`."""
    return f"part-{k:05d}.h5"


def part_path(index_path: str | Path, k: int, partial: bool = False) -> Path:
    """Path of part ``k`` (the `.partial` name while it is open)."""
    name = part_name(k) + (PART_PARTIAL_SUFFIX if partial else "")
    return parts_dir(index_path) / name


def part_relpath(index_path: str | Path, k: int) -> str:
    """VDS source path of part ``k``, relative to the index file's folder (resolves beside the index)."""
    return f"{parts_dir(index_path).name}/{part_name(k)}"


def config_path(index_path: str | Path, stage: str) -> Path:
    """Where a store command saves its resolved settings: `<h5>.<stage>.config.yaml` beside the store."""
    p = Path(index_path)
    return p.with_name(f"{p.name}.{stage}.config.yaml")


# --- plan --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """Row plan: rows train → val → test in source order, parts of ``part_rows`` rows (row ↔ (split, index) fixed)."""

    split_sizes: dict[str, int]
    part_rows: int

    @property
    def n_rows(self) -> int:
        """Total rows N."""
        return sum(self.split_sizes.get(s, 0) for s in SPLITS)

    @property
    def split_offsets(self) -> dict[str, int]:
        """First row of each split."""
        out, acc = {}, 0
        for s in SPLITS:
            out[s] = acc
            acc += self.split_sizes.get(s, 0)
        return out

    @property
    def n_parts(self) -> int:
        """Number of parts (0 for an empty plan)."""
        return max(0, -(-self.n_rows // self.part_rows))

    def part_range(self, k: int) -> tuple[int, int]:
        """Rows [start, stop) of part ``k``."""
        start = k * self.part_rows
        return start, min(start + self.part_rows, self.n_rows)

    def row_source(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(split code, index within split) of each row."""
        rows = np.asarray(rows, dtype=np.int64)
        codes = np.empty(rows.shape, dtype=np.uint8)
        idx = np.empty(rows.shape, dtype=np.int64)
        offs = self.split_offsets
        for s in SPLITS:
            lo, hi = offs[s], offs[s] + self.split_sizes.get(s, 0)
            sel = (rows >= lo) & (rows < hi)
            codes[sel] = SPLIT_CODES[s]
            idx[sel] = rows[sel] - lo
        return codes, idx

    def to_json(self) -> dict[str, Any]:
        """JSON form stored in meta/plan and in every part's `plan` attr."""
        return {
            "split_sizes": {s: int(self.split_sizes.get(s, 0)) for s in SPLITS},
            "split_offsets": self.split_offsets,
            "n_rows": self.n_rows,
            "part_rows": self.part_rows,
            "parts": [list(self.part_range(k)) for k in range(self.n_parts)],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> Plan:
        """Read a plan written by to_json (accepts the JSON text)."""
        if isinstance(data, (str, bytes)):
            data = json.loads(data)
        return cls({s: int(data["split_sizes"].get(s, 0)) for s in SPLITS}, int(data["part_rows"]))


# --- JSON / string helpers ---------------------------------------------------------------------------------------
def json_attr(value: Any) -> str:
    """A JSON attr value as the seed writes it: ``json.dumps(v, ensure_ascii=False)`` as str."""
    return json.dumps(value, ensure_ascii=False)


def decode_str(value: Any) -> str:
    """h5py returns vlen strings as bytes (datasets) or str (attrs): always give str."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return decode_str(value.item())
    return str(value)


def read_json_attr(attrs: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """Parse a JSON attr (bytes or str); ``default`` when absent."""
    if name not in attrs:
        return default
    return json.loads(decode_str(attrs[name]))


def attr_fits(value: str | bytes) -> bool:
    """True when a (JSON) attr value is small enough for an object header next to the other attrs."""
    n = len(value.encode("utf-8")) if isinstance(value, str) else len(value)
    return n <= ATTR_SAFE_BYTES


def texts_hash(texts: Iterable[str]) -> str:
    """SHA-256 hex over each text's UTF-8 bytes followed by one NUL byte, in order (seed definition)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def canonical_json(value: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) used for fingerprints."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def fingerprint_of(value: Any) -> str:
    """SHA-256 hex of the canonical JSON of ``value``."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def image_hash(image: np.ndarray) -> np.ndarray:
    """BLAKE2b-128 of a uint8 HWC image's bytes, as 16 uint8."""
    # The array's own buffer (no bytes copy); hashlib releases the GIL while hashing buffers of this size.
    digest = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=IMAGE_HASH_BYTES).digest()
    return np.frombuffer(digest, dtype=np.uint8).copy()


def now_str() -> str:
    """`created_at` timestamp in the seed format."""
    return time.strftime(CREATED_AT_FORMAT)


def split_counts(codes: np.ndarray, written: np.ndarray) -> dict[str, int]:
    """Per-split counts of written rows, always with keys train, val, test."""
    codes = np.asarray(codes)[np.asarray(written, dtype=bool)]
    return {s: int(np.count_nonzero(codes == SPLIT_CODES[s])) for s in SPLITS}


def row_bytes(d: int, t: int | None, cls_dtype: str = "float32", has_tokens: bool = True) -> int:
    """Bytes one image row takes on disk (CLS + tokens + small columns), for the free-space check."""
    n = d * np.dtype(cls_dtype).itemsize + SMALL_ROW_BYTES
    if has_tokens and t:
        n += t * d * TOKEN_DTYPE.itemsize
    return n


def expected_group_names(n_concept_templates: int, n_label_templates: int) -> list[str]:
    """The template groups a prompt set maps to, in write order (concepts first)."""
    return [template_group_name("concept", i) for i in range(n_concept_templates)] + [
        template_group_name("label", i) for i in range(n_label_templates)
    ]


def str_list(values: Sequence[Any]) -> list[str]:
    """Decode a list of h5py strings."""
    return [decode_str(v) for v in values]
