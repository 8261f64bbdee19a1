"""Settings machinery shared by every group: precedence (flags > env > YAML > defaults), list parsing, YAML I/O."""

from __future__ import annotations

import difflib
import json
import os
import typing
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from xaiclip_cli.errors import UsageError

GROUPS = ("store", "db", "cam", "attrib", "eval", "train")

# The YAML layer of the current resolution; a context variable so that concurrent resolutions never mix files.
_YAML_LAYER: ContextVar[dict[str, Any] | None] = ContextVar("xaiclip_yaml_layer", default=None)


def _is_sequence_annotation(annotation: Any) -> bool:
    """True when a field's annotation is a list/tuple/set (possibly inside Optional)."""
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set, frozenset):
        return True
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_is_sequence_annotation(a) for a in typing.get_args(annotation) if a is not type(None))
    return annotation in (list, tuple, set)


def split_list(value: Any) -> Any:
    """Parse ``"0,1"`` or ``"[0, 1]"`` (env vars, flags) into a list; leave other values alone."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON list: {text!r}") from exc
        if text == "":
            return []
        return [part.strip() for part in text.split(",")]
    return value


class _ListSplitting:
    """Mixin: list-typed fields accept comma-separated strings (``--gpus 0,1``, ``XAICLIP_ATTRIB__GPUS=0,1``)."""

    @field_validator("*", mode="before")
    @classmethod
    def _split_lists(cls, value: Any, info: Any) -> Any:
        field = cls.model_fields.get(info.field_name)  # type: ignore[attr-defined]
        if field is not None and _is_sequence_annotation(field.annotation):
            return split_list(value)
        return value


class Section(_ListSplitting, BaseModel):
    """A nested block of settings (for groups organised in sections, e.g. ``train``)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class _YamlLayerSource(PydanticBaseSettingsSource):
    """Settings source returning the ``--config`` YAML layer resolved for this call."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_YAML_LAYER.get() or {})


class XaiclipSettings(_ListSplitting, BaseSettings):
    """Base of every group model: forbids unknown keys and reads ``XAICLIP_<GROUP>__<FIELD>`` from the environment."""

    group: ClassVar[str] = ""

    model_config = SettingsConfigDict(
        extra="forbid",
        env_nested_delimiter="__",
        enable_decoding=False,
        validate_default=True,
        case_sensitive=False,
    )

    @classmethod
    def default_layer(cls, given: set[str]) -> dict[str, Any]:
        """Settings used below flags and env vars when no --config is given (``given``: top-level fields set by
        flags or env vars); empty by default."""
        return {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first: flags (init kwargs) > environment > --config YAML > field defaults.
        return (init_settings, env_settings, _YamlLayerSource(settings_cls))


def group_config(group: str) -> SettingsConfigDict:
    """Model config of a group: its environment prefix ``XAICLIP_<GROUP>__``."""
    return SettingsConfigDict(env_prefix=f"XAICLIP_{group.upper()}__")


def load_yaml_layer(path: str | Path, group: str) -> dict[str, Any]:
    """Read a ``--config`` file; a file with group sections contributes only the section of ``group``."""
    from xaiclip_cli.resources import config_path, shipped_configs

    p = config_path(path)  # a file, or a shipped config by name from any folder (--config toy-vit)
    if not p.is_file():
        raise UsageError(f"config file not found: {path} (give a YAML file or a shipped config: "
                         f"{', '.join(shipped_configs())})")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UsageError(f"config file {p}: invalid YAML{where}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"config file {p}: not UTF-8 text") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {p}: expected a mapping of settings, got {type(data).__name__}")
    data.pop("provenance", None)  # best-hparams files carry where they came from; not a setting
    sections = [k for k in data if k in GROUPS]
    if sections:
        others = [k for k in data if k not in GROUPS]
        if others:
            raise UsageError(f"config file {p}: mixes group sections with top-level keys {others}")
        section = data.get(group) or {}
        if not isinstance(section, dict):
            raise UsageError(f"config file {p}: section '{group}' must be a mapping")
        return section
    return data


def _one_line(exc: ValidationError, source: str | None) -> str:
    """Summarise a pydantic ValidationError as one line naming the field(s)."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "__root__") or "settings"
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown setting"
        parts.append(f"'{loc}': {msg}")
    where = f" (config {source})" if source else ""
    return "invalid setting " + "; ".join(parts) + where


def resolve_settings(
    model: type[XaiclipSettings],
    flags: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
) -> XaiclipSettings:
    """Build ``model`` from explicit flags, the environment, an optional YAML file and the defaults, in that order."""
    if config_file:
        layer = load_yaml_layer(config_file, model.group)
    else:  # a command may ship defaults that its field defaults cannot express (train clip: the toy recipe)
        layer = model.default_layer(set(flags or {}) | env_fields(model))
    token = _YAML_LAYER.set(layer)
    try:
        return model(**(flags or {}))
    except ValidationError as exc:
        raise UsageError(_one_line(exc, str(config_file) if config_file else None)) from exc
    finally:
        _YAML_LAYER.reset(token)


def _field_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every field path of a model, nested models included (``training`` and ``training.device``)."""
    out: set[str] = set()
    for name, info in model.model_fields.items():
        out.add(prefix + name)
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= _field_paths(ann, f"{prefix}{name}.")
    return out


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def env_fields(model: type[XaiclipSettings], environ: typing.Mapping[str, str] | None = None) -> set[str]:
    """Top-level fields of ``model`` that ``XAICLIP_<GROUP>__<FIELD>`` variables set."""
    prefix = str(model.model_config.get("env_prefix") or "").upper()
    env = os.environ if environ is None else environ
    if not prefix:
        return set()
    names = {k[len(prefix):].split("__", 1)[0].lower() for k in env if k.upper().startswith(prefix)}
    return names & set(model.model_fields)


def unknown_env_keys(model: type[XaiclipSettings], environ: typing.Mapping[str, str] | None = None) -> list[str]:
    """One warning per ``XAICLIP_<GROUP>__<FIELD>`` variable that names no setting of the group (pydantic-settings
    ignores them silently), with the nearest field (difflib) when one is close."""
    prefix = str(model.model_config.get("env_prefix") or "").upper()
    if not prefix:
        return []
    env = os.environ if environ is None else environ
    keys = [k for k in env if k.upper().startswith(prefix)]
    if not keys:
        return []
    known: set[str] = set()  # commands of a group share the prefix: a key is known when any of them has it
    for cls in {model, *_subclasses(XaiclipSettings)}:
        if str(cls.model_config.get("env_prefix") or "").upper() == prefix:
            known |= _field_paths(cls)
    out = []
    for key in sorted(keys):
        path = key[len(prefix):].lower().replace("__", ".")
        if path in known:
            continue
        near = difflib.get_close_matches(path, sorted(known), n=1, cutoff=0.6)
        hint = ""
        if near:
            hint = f"; did you mean {prefix}{near[0].upper().replace('.', '__')} (field {near[0]})?"
        out.append(f"environment variable {key} names no {model.group or 'group'} setting and is ignored{hint}")
    return out


def parse_set_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``--set a.b=value`` items into a nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if not key:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        set_dotted(out, key, value)
    return out


def set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    """Assign ``value`` at ``a.b.c`` inside nested dicts, creating levels as needed."""
    keys = dotted.split(".")
    node = target
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise UsageError(f"setting {dotted!r} conflicts with a scalar at {k!r}")
    node[keys[-1]] = value


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Merge ``top`` over ``base`` recursively (returns a new dict)."""
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def dump_yaml(settings: BaseModel, group: str | None = None) -> str:
    """Resolved settings as YAML under their group section, loadable again with ``--config``."""
    name = group or getattr(settings, "group", "") or "settings"
    return yaml.safe_dump({name: settings.model_dump(mode="json")}, sort_keys=False, allow_unicode=True)


def save_config(settings: BaseModel, directory: str | Path, filename: str = "config.yaml") -> Path:
    """Write the resolved settings beside a command's outputs (atomically: temp file then rename)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    target = d / filename
    tmp = d / f".{filename}.tmp"
    tmp.write_text(dump_yaml(settings), encoding="utf-8")
    tmp.replace(target)
    return target
