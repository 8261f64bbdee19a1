"""Prompt sets: class labels, concepts and the templates that turn them into texts (store.md §7 names).

A prompt set is a YAML file with ``labels``, ``concepts``, ``label_templates``, ``concept_templates`` and optional
``name``, ``data``, ``description`` and ``captions`` (label -> free-text captions, for CLIP training); shipped
sets are addressed by name (``bloodmnist``, ``toycells``). Text = ``template.format(item)`` with items in list
order and case kept; groups are ``concept_prompts_t01..`` and ``label_prompts_t01..``.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xaiclip_cli.errors import UsageError

LIST_FIELDS = ("labels", "concepts", "label_templates", "concept_templates")
OPTIONAL_FIELDS = ("name", "data", "description", "captions")


def _check_template(template: str, where: str) -> None:
    """A template must contain exactly one empty ``{}`` field and no other format fields."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise UsageError(f"{where}: template {template!r} is not a valid format string ({exc})") from None
    if fields != [""]:
        raise UsageError(f"{where}: template {template!r} must contain exactly one '{{}}' (found {len(fields)} fields)")


def _check_list(values: Any, where: str) -> list[str]:
    """Non-empty list of non-empty, distinct strings."""
    if not isinstance(values, list) or not values:
        raise UsageError(f"{where}: must be a non-empty list of strings")
    out: list[str] = []
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v.strip():
            raise UsageError(f"{where}[{i}]: must be a non-empty string, got {v!r}")
        if v in out:
            raise UsageError(f"{where}[{i}]: duplicate entry {v!r}")
        out.append(v)
    return out


@dataclass
class PromptSet:
    """Labels and concepts with their templates; ``label_prompts()``/``concept_prompts()`` give the text groups."""

    labels: list[str]
    concepts: list[str]
    label_templates: list[str]
    concept_templates: list[str]
    name: str = "custom"
    data: str | None = None
    source: str | None = None
    captions: dict[str, list[str]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = self.source or f"prompt set {self.name}"
        for key in LIST_FIELDS:
            setattr(self, key, _check_list(getattr(self, key), f"{where}: {key}"))
        for key in ("label_templates", "concept_templates"):
            for i, t in enumerate(getattr(self, key)):
                _check_template(t, f"{where}: {key}[{i}]")
        if not isinstance(self.captions, dict):
            raise UsageError(f"{where}: captions must map label names to lists of captions")
        for label, caps in self.captions.items():
            if label not in self.labels:
                raise UsageError(f"{where}: captions for {label!r}, which is not one of the labels")
            self.captions[label] = _check_list(caps, f"{where}: captions.{label}")

    @staticmethod
    def _group(prefix: str, templates: list[str], items: list[str]) -> dict[str, list[str]]:
        return {f"{prefix}_t{k:02d}": [t.format(x) for x in items] for k, t in enumerate(templates, start=1)}

    def label_prompts(self) -> dict[str, list[str]]:
        """``{label_prompts_t01: [texts in label order], ...}`` one group per label template."""
        return self._group("label_prompts", self.label_templates, self.labels)

    def concept_prompts(self) -> dict[str, list[str]]:
        """``{concept_prompts_t01: [texts in concept order], ...}`` one group per concept template."""
        return self._group("concept_prompts", self.concept_templates, self.concepts)

    def all_prompts(self) -> dict[str, list[str]]:
        """Concept groups then label groups (the store's text-stage order)."""
        return {**self.concept_prompts(), **self.label_prompts()}

    def template_of(self, group: str) -> tuple[str, str]:
        """(kind, template) of a group name such as ``label_prompts_t02``; unknown names raise a UsageError."""
        for kind, templates in (("concept", self.concept_templates), ("label", self.label_templates)):
            prefix = f"{kind}_prompts_t"
            if group.startswith(prefix) and group[len(prefix):].isdigit():
                k = int(group[len(prefix):])
                if 1 <= k <= len(templates):
                    return kind, templates[k - 1]
        raise UsageError(f"unknown prompt group {group!r} in prompt set {self.name}")

    @classmethod
    def load(cls, ref: str | Path) -> PromptSet:
        """Load a prompt set from a YAML path or a shipped name (same as ``load_prompt_set``)."""
        return load_prompt_set(ref)

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (round-trips through ``load_prompt_set``)."""
        out: dict[str, Any] = {"name": self.name}
        if self.data:
            out["data"] = self.data
        out.update({k: list(getattr(self, k)) for k in LIST_FIELDS})
        if self.captions:
            out["captions"] = {k: list(v) for k, v in self.captions.items()}
        return out


def prompt_set_from_dict(raw: Any, source: str) -> PromptSet:
    """Validate a parsed YAML mapping into a PromptSet (unknown or missing keys -> UsageError)."""
    if not isinstance(raw, dict):
        raise UsageError(f"{source}: expected a mapping with keys {', '.join(LIST_FIELDS)}")
    unknown = sorted(set(raw) - set(LIST_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise UsageError(f"{source}: unknown key(s) {', '.join(map(str, unknown))}; allowed: "
                         f"{', '.join(LIST_FIELDS + OPTIONAL_FIELDS)}")
    missing = [k for k in LIST_FIELDS if k not in raw]
    if missing:
        raise UsageError(f"{source}: missing key(s) {', '.join(missing)}")
    name = raw.get("name") or Path(source).stem
    return PromptSet(
        labels=raw["labels"], concepts=raw["concepts"], label_templates=raw["label_templates"],
        concept_templates=raw["concept_templates"], name=str(name), data=raw.get("data"), source=source,
        captions=raw.get("captions") or {},
        extra={k: raw[k] for k in ("description",) if k in raw},
    )


def load_prompt_set(ref: str | Path) -> PromptSet:
    """Load a prompt set from a YAML path or a shipped name (``bloodmnist``, ``toycells``)."""
    from xaiclip_cli.resources import config_path, configs_dir

    path = config_path(str(ref))
    if not path.is_file():
        shipped = sorted(p.stem for p in configs_dir().glob("*.yaml") if _looks_like_prompt_set(p))
        raise UsageError(f"prompt set {str(ref)!r} not found: give a YAML file or one of {', '.join(shipped)}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise UsageError(f"{path}: not valid YAML ({reason})") from None
    return prompt_set_from_dict(raw, str(path))


def _looks_like_prompt_set(path: Path) -> bool:
    """Cheap check used only to list shipped prompt sets in an error message."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False
    return isinstance(raw, dict) and all(k in raw for k in LIST_FIELDS)
