"""Hugging Face loading helpers: model references, token from HF_TOKEN, revisions, dir hashes, versions, errors.

The token is read from the environment only when a loader asks for it and is handed straight to
``from_pretrained``; it is never logged, printed, stored in provenance, or written to disk (no ``login()``).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xaiclip_cli.errors import UsageError, XaiclipError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$|^[A-Za-z0-9][\w.\-]*$")
_SKIP_DIRS = {".git", "__pycache__", ".cache", ".ipynb_checkpoints"}
@dataclass(frozen=True)
class ModelRef:
    """A resolved ``--model``: the id as given, the local directory (or None for a hub id), the revision to ask for."""

    model_id: str
    local_dir: Path | None
    revision: str | None

    @property
    def source(self) -> str:
        """What from_pretrained receives: the local directory or the hub id."""
        return str(self.local_dir) if self.local_dir is not None else self.model_id


def hf_token() -> str | None:
    """The token from ``HF_TOKEN`` (None when unset or empty). Never log the return value."""
    return os.environ.get("HF_TOKEN") or None


def looks_like_path(model: str) -> bool:
    """True when ``model`` is meant as a filesystem path rather than a hub id (``owner/name``)."""
    if model.startswith(("/", "./", "../", "~", ".\\")) or model in (".", ".."):
        return True
    if os.sep != "/" and os.sep in model:
        return True
    return not _HUB_ID.match(model)


def resolve_model_ref(model: str, revision: str | None = None, *, default_revisions: dict[str, str] | None = None,
                      what: str = "model") -> ModelRef:
    """Classify ``model`` as an existing local directory or a hub id; a missing path is a UsageError.

    Hub ids listed in ``default_revisions`` get their pinned revision unless one is given; local directories take
    no revision (a given one is an error, since it would be ignored silently).
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if revision:
            raise UsageError(f"--revision {revision!r} applies to hub ids only; {model!r} is a local directory")
        return ModelRef(model, path.resolve(), None)
    if path.exists():
        raise UsageError(f"{what} {model!r} is a file; give a model directory (with config.json) or a hub id")
    if looks_like_path(model):
        raise UsageError(f"{what} directory {model!r} not found; give an existing directory or a hub id (owner/name)")
    if revision is None and default_revisions:
        revision = default_revisions.get(model)
    return ModelRef(model, None, revision)


def dir_content_hash(directory: str | Path, chunk: int = 1 << 20) -> str:
    """``sha256:<hex>`` over sorted relative paths and file bytes (caches and VCS folders skipped)."""
    root = Path(directory)
    h = hashlib.sha256()
    files = sorted(
        p for p in root.rglob("*")
        if p.is_file() and not any(part in _SKIP_DIRS for part in p.relative_to(root).parts)
    )
    for p in files:
        rel = p.relative_to(root).as_posix().encode()
        h.update(len(rel).to_bytes(8, "little") + rel + p.stat().st_size.to_bytes(8, "little"))
        with p.open("rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return "sha256:" + h.hexdigest()


def resolved_revision(ref: ModelRef, loaded_config: Any) -> str | None:
    """The commit the hub files came from (``config._commit_hash``), or the content hash of a local directory."""
    if ref.local_dir is not None:
        return dir_content_hash(ref.local_dir)
    commit = getattr(loaded_config, "_commit_hash", None)
    return commit or ref.revision


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def redact(text: str) -> str:
    """Remove the token (if any) from a message before it reaches a user or a log."""
    tok = hf_token()
    return text.replace(tok, "***") if tok else text


def load_error(exc: BaseException, ref: ModelRef, what: str = "model") -> XaiclipError:
    """Turn a from_pretrained failure into one line naming the model and what to do."""
    chain = _chain(exc)
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain).lower()
    rev = f" (revision {ref.revision})" if ref.revision else ""
    target = f"{what} {ref.model_id!r}{rev}"
    if ("GatedRepoError" in names or "gated repo" in text or re.search(r"\b40[13]\b", text)
            or "unauthorized" in text or "authorized list" in text):
        return XaiclipError(
            f"access to {target} was refused: accept the terms on https://huggingface.co/{ref.model_id} "
            "and export HF_TOKEN with a read token")
    if "RevisionNotFoundError" in names or "invalid git identifier" in text or "revision not found" in text:
        return XaiclipError(f"{target}: revision not found on the hub; check --revision")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if ref.local_dir is None and ("LocalEntryNotFoundError" in names or "OfflineModeIsEnabled" in names
                                  or "offline" in text or "couldn't connect" in text or "connection" in text):
        how = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
        return XaiclipError(
            f"{target} is not in the local Hugging Face cache and {how}; download it once online "
            "or pass a local directory with --model")
    if "RepositoryNotFoundError" in names or "not a valid model identifier" in text:
        return XaiclipError(f"{target} not found on the hub (or private: export HF_TOKEN); check --model")
    first = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return XaiclipError(f"cannot load {target}: {type(exc).__name__}: {first[:300]}")
