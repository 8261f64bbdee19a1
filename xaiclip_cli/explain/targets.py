"""Texts and targets: read prompt files, resolve ``--target best|INDEX|NAME|all`` to text indices per image."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xaiclip_cli.errors import UsageError


def normalise_texts(texts: Mapping[str, str] | Sequence[str] | str) -> tuple[list[str], list[str]]:
    """(names, prompts): a mapping gives name → prompt (the prompt is encoded, the name labels plots)."""
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, Mapping):
        names = [str(k) for k in texts]
        prompts = [str(v) for v in texts.values()]
    else:
        prompts = [str(t) for t in texts]
        names = list(prompts)
    if not prompts:
        raise UsageError("no texts given: use --text (repeatable) or --texts-file FILE.json")
    if any(not p.strip() for p in prompts):
        raise UsageError("empty text prompt given; every --text needs some words")
    return names, prompts


def load_texts_file(path: str | Path) -> tuple[list[str], list[str]]:
    """Read a JSON texts file: ``{name: description}`` or a list of prompts."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--texts-file {p}: file not found")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--texts-file {p}: not valid JSON ({exc})") from exc
    if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
        return normalise_texts(data)
    if isinstance(data, list) and all(isinstance(v, str) for v in data):
        return normalise_texts(data)
    raise UsageError(f"--texts-file {p}: expected a JSON object {{name: description}} or a list of strings")


def parse_target(rule: Any, names: Sequence[str]) -> str | int:
    """``best``/``all`` stay strings; an integer or a text name becomes an index (UsageError if unknown)."""
    if rule is None:
        return "best"
    if isinstance(rule, int):
        idx = rule
    else:
        text = str(rule).strip()
        if text.lower() in ("best", "all"):
            return text.lower()
        if text.lstrip("-").isdigit():
            idx = int(text)
        else:
            lowered = [n.lower() for n in names]
            if text in names:
                return list(names).index(text)
            if text.lower() in lowered:
                return lowered.index(text.lower())
            raise UsageError(f"--target {text!r} is not best, all, an index or one of the text names {list(names)}")
    if not 0 <= idx < len(names):
        raise UsageError(f"--target {idx} is out of range for {len(names)} texts (0..{len(names) - 1})")
    return idx
