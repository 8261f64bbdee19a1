"""Derive a Typer command's options from a settings model, resolve precedence, run, print, map errors to exit codes.

Written by hand because no library joins Typer with pydantic-settings layering (flags > env > YAML > defaults):
the option list is generated from the model so a command cannot offer an option its model lacks, and vice versa.
"""

from __future__ import annotations

import enum
import inspect
import logging
import sys
import traceback
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from xaiclip_cli.cli.output import RunContext, configure_logging, emit
from xaiclip_cli.config.base import (
    XaiclipSettings,
    _is_sequence_annotation,
    deep_merge,
    dump_yaml,
    parse_set_overrides,
    resolve_settings,
    set_dotted,
    unknown_env_keys,
)
from xaiclip_cli.devices import check_settings_devices
from xaiclip_cli.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, EXIT_USAGE, XaiclipError

# Option names every settings command gets; group models must not define fields with these names.
COMMON_OPTIONS = ("config", "set", "print_config", "json", "quiet", "debug")


def field_info(model: type[BaseModel], path: str) -> FieldInfo:
    """Return the FieldInfo at a dotted path (``training.batch_size``) of a (nested) model."""
    cur: Any = model
    info: FieldInfo | None = None
    for part in path.split("."):
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)) or part not in cur.model_fields:
            raise KeyError(f"{model.__name__} has no field {path!r}")
        info = cur.model_fields[part]
        cur = _unwrap_optional(info.annotation)
    assert info is not None
    return info


def _unwrap_optional(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return non_none[0]
    return annotation


def _extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def option_name(path: str, info: FieldInfo) -> str:
    """The flag for a field: ``cli_name`` from the field's extras, else the last path part in kebab case."""
    return str(_extra(info).get("cli_name") or path.split(".")[-1].replace("_", "-"))


def leaf_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """All leaf field paths of a model (nested sections expanded)."""
    out: list[str] = []
    for name, info in model.model_fields.items():
        ann = _unwrap_optional(info.annotation)
        path = f"{prefix}{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(leaf_fields(ann, path + "."))
        else:
            out.append(path)
    return out


def _default_text(info: FieldInfo) -> str:
    if info.default is not PydanticUndefined:
        d = info.default
    elif info.default_factory is not None:
        try:
            d = info.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return ""
    else:
        return " [required]"
    if isinstance(d, enum.Enum):
        d = d.value
    if isinstance(d, (list, tuple)):
        d = ",".join(str(x) for x in d) if d else "none"
    if d is None:
        return ""
    return f" [default: {d}]"


def _choice_enum(name: str, values: list[str]) -> type[enum.Enum]:
    """A str Enum whose members are ``values``: Typer shows it as a choice list."""
    return enum.Enum(f"Choice_{name}", {v: v for v in values}, type=str)  # type: ignore[return-value]


def _typer_param(path: str, info: FieldInfo, argument: bool) -> inspect.Parameter:
    ann = _unwrap_optional(info.annotation)
    extra = _extra(info)
    pname = path.replace(".", "__")
    help_text = (info.description or "") + _default_text(info)
    flag = option_name(path, info)
    aliases = [str(a) for a in extra.get("cli_aliases", [])]
    kwargs: dict[str, Any] = {"help": help_text, "show_default": False}
    if argument:
        if _is_sequence_annotation(ann):
            return inspect.Parameter(
                pname, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Optional[list[str]],
                default=typer.Argument(None, help=help_text, show_default=False, metavar=flag.upper()),
            )
        return inspect.Parameter(
            pname, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Optional[str],
            default=typer.Argument(None, help=help_text, show_default=False, metavar=flag.upper()),
        )
    decls = [f"--{flag}", *aliases]
    if ann is bool:
        decls = [f"--{flag}/--no-{flag}", *aliases]
        py_type: Any = Optional[bool]
    elif typing.get_origin(ann) is typing.Literal:
        py_type = Optional[_choice_enum(pname, [str(v) for v in typing.get_args(ann)])]
    elif isinstance(ann, type) and issubclass(ann, enum.Enum):
        py_type = Optional[_choice_enum(pname, [str(m.value) for m in ann])]
    elif _is_sequence_annotation(ann):
        if extra.get("cli_multiple"):
            py_type = Optional[list[str]]
        else:
            py_type = Optional[str]
            kwargs["metavar"] = "A,B,..."
    elif ann in (int, float):
        py_type = Optional[ann]
    elif ann is Path:
        # Kept as text: Typer would turn "" into Path("."), and the model's validators must see what was typed.
        py_type = Optional[str]
        kwargs["metavar"] = "PATH"
    else:
        py_type = Optional[str]
    return inspect.Parameter(
        pname, inspect.Parameter.KEYWORD_ONLY, annotation=py_type, default=typer.Option(None, *decls, **kwargs)
    )


def _common_params() -> list[inspect.Parameter]:
    kw = inspect.Parameter.KEYWORD_ONLY
    return [
        inspect.Parameter("config", kw, annotation=Optional[Path], default=typer.Option(
            None, "--config", "-c", help="YAML settings file (flags and XAICLIP_<GROUP>__<FIELD> env vars win).")),
        inspect.Parameter("set", kw, annotation=Optional[list[str]], default=typer.Option(
            None, "--set", help="Override any setting: --set key=value (dotted keys for sections).")),
        inspect.Parameter("print_config", kw, annotation=bool, default=typer.Option(
            False, "--print-config", help="Print the resolved settings as YAML and exit.")),
        inspect.Parameter("json", kw, annotation=bool, default=typer.Option(
            False, "--json", help="Print the result as one JSON document on stdout.")),
        inspect.Parameter("quiet", kw, annotation=bool, default=typer.Option(
            False, "--quiet", "-q", help="No progress bars or tables; warnings and errors only.")),
        inspect.Parameter("debug", kw, annotation=bool, default=typer.Option(
            False, "--debug", help="Show Python tracebacks on errors.")),
    ]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def run_guarded(body: Callable[[], int | None], debug: bool) -> int:
    """Run ``body`` and map exceptions to (exit code, one line on stderr); tracebacks only with ``debug``."""
    log = logging.getLogger("xaiclip")
    try:
        code = body()
        return int(code or 0)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED
    except XaiclipError as exc:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"error: {_one_line(exc)}\n")
        return exc.exit_code
    except ValidationError as exc:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"error: invalid value: {_one_line(exc)}\n")
        return EXIT_USAGE
    except MemoryError:
        sys.stderr.write("error: out of memory; reduce --batch-size or the number of rows\n")
        return EXIT_RUNTIME
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, Exception) as exc:  # noqa: B014
        if debug:
            traceback.print_exc()
        msg = _one_line(exc)
        if "out of memory" in msg.lower():
            msg = "out of memory; reduce --batch-size"
        sys.stderr.write(f"error: {type(exc).__name__}: {msg} (run with --debug for the traceback)\n")
        log.debug("unhandled error", exc_info=True)
        return EXIT_RUNTIME


def settings_command(
    app: typer.Typer,
    model: type[XaiclipSettings],
    *,
    name: str | None = None,
    fields: Sequence[str] | None = None,
    arguments: Sequence[str] = (),
) -> Callable[[Callable[..., BaseModel | None]], Callable[..., BaseModel | None]]:
    """Register ``fn(settings, ctx) -> result`` as a command whose options are the model's fields.

    ``fields`` (dotted paths) selects the options (default: every leaf field); ``arguments`` lists the fields
    taken positionally. The wrapped function receives the resolved settings and a :class:`RunContext`.
    """

    def deco(fn: Callable[..., BaseModel | None]) -> Callable[..., BaseModel | None]:
        paths = list(fields) if fields is not None else leaf_fields(model)
        for p in [*paths, *arguments]:
            field_info(model, p)  # raises early for a typo in a command definition
        params: list[inspect.Parameter] = []
        for p in arguments:
            params.append(_typer_param(p, field_info(model, p), argument=True))
        for p in paths:
            if p not in arguments:
                params.append(_typer_param(p, field_info(model, p), argument=False))
        params.extend(_common_params())
        to_path = {p.replace(".", "__"): p for p in [*paths, *arguments]}

        def wrapper(**kwargs: Any) -> None:
            ctx = RunContext(json=bool(kwargs.pop("json")), quiet=bool(kwargs.pop("quiet")),
                             debug=bool(kwargs.pop("debug")))
            config_file = kwargs.pop("config")
            sets = kwargs.pop("set") or []
            print_config = kwargs.pop("print_config")
            configure_logging("info", quiet=ctx.quiet or ctx.json)

            def body() -> int:
                flags: dict[str, Any] = {}
                for pname, value in kwargs.items():
                    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
                        continue  # not given: lower layers decide
                    if isinstance(value, enum.Enum):
                        value = value.value
                    set_dotted(flags, to_path[pname], list(value) if isinstance(value, tuple) else value)
                flags = deep_merge(flags, parse_set_overrides(list(sets)))
                for message in unknown_env_keys(model):  # a typo in XAICLIP_<GROUP>__<FIELD> would be ignored
                    ctx.warn(message)
                settings = resolve_settings(model, flags, config_file)
                if print_config:
                    sys.stdout.write(dump_yaml(settings))
                    return 0
                level = getattr(settings, "log_level", "info")
                configure_logging(level, quiet=ctx.quiet or ctx.json)
                check_settings_devices(settings)  # --device cuda / --gpus without CUDA: one line, exit 2
                result = fn(settings, ctx)
                emit(result, ctx)
                return ctx.exit_code

            code = run_guarded(body, ctx.debug)
            if code:
                raise typer.Exit(code)

        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        wrapper.__doc__ = fn.__doc__
        wrapper.__name__ = fn.__name__
        cmd_name = name or fn.__name__.replace("_", "-")
        app.command(cmd_name, help=fn.__doc__)(wrapper)
        # Kept for the test that walks every command and compares options with models.
        fn.xaiclip_model = model  # type: ignore[attr-defined]
        fn.xaiclip_fields = [*paths, *[a for a in arguments if a not in paths]]  # type: ignore[attr-defined]
        wrapper.xaiclip_model = model  # type: ignore[attr-defined]
        wrapper.xaiclip_fields = fn.xaiclip_fields  # type: ignore[attr-defined]
        return fn

    return deco
