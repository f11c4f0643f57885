"""Config dataclasses <-> YAML files <-> command-line flags.

Knows: how to turn a flat dataclass into argparse options (`--field-name`, type from the default, help from the
field's `metadata["help"]`, default shown), and how to merge defaults < YAML file < explicit flags.
Does not know: what any field means (each stage owns its dataclass).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, TypeVar

from vrp.errors import VrpError
from vrp.io import write_text_atomic

T = TypeVar("T")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_value(text: str) -> Any:
    """Parse a flag value for a field whose default is None or a list: JSON if it parses, else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _is_any(f: dataclasses.Field) -> bool:
    """True for a field annotated `Any` (e.g. a string or a list): its flag value is parsed as JSON if it can be."""
    return f.type in ("Any", Any, "typing.Any")


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, group: str | None = None) -> None:
    """Add one option per field of dataclass `cls`. Defaults are `argparse.SUPPRESS` so that only flags the user
    gave appear in the namespace (they override the YAML); the help text shows the dataclass default."""
    target = parser.add_argument_group(group) if group else parser
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_ = f"{f.metadata.get('help', '')} (default: {default!r})"
        if isinstance(default, bool):
            target.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_)
        elif isinstance(default, (int, float, str)) and not _is_any(f):
            target.add_argument(_flag(f.name), dest=f.name, type=type(default), default=argparse.SUPPRESS,
                                help=help_, metavar=f.name.upper())
        else:
            target.add_argument(_flag(f.name), dest=f.name, type=_parse_value, default=argparse.SUPPRESS,
                                help=help_ + " [JSON or string]", metavar=f.name.upper())


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping. Raises VrpError naming the file on a missing file or a non-mapping document."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise VrpError(f"--config: file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        what = getattr(e, "problem", None) or " ".join(str(e).split())
        raise VrpError(f"{where}: invalid YAML ({what})") from None
    except UnicodeDecodeError as e:
        raise VrpError(f"{path}: not UTF-8 text (bad byte at offset {e.start})") from None
    if not isinstance(data, dict):
        raise VrpError(f"{path}: expected a mapping of option: value, got {type(data).__name__}")
    return data


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def coerce_value(f: dataclasses.Field, value: Any, where: str) -> Any:
    """Check `value` against the type of field `f`'s default (bool, int, float or str; other fields are left to
    the dataclass) and convert what is unambiguous: an integral float or a numeric string to int, an int or a
    numeric string to float (YAML reads `2e-4` as a string). Raises VrpError naming `where` and the option."""
    if _is_any(f):
        return value
    default = _field_default(f)
    shown = repr(value) if not isinstance(value, (dict, list)) else json.dumps(value)[:60]

    def bad(want: str) -> VrpError:
        if where == _flag(f.name):
            return VrpError(f"{where} must be {want}, got {shown}")
        return VrpError(f"{where}: option {f.name!r} must be {want}, got {shown}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise bad("an integer")
    if isinstance(default, float):
        if isinstance(value, bool):
            raise bad("a number")
        if isinstance(value, (int, float)):
            x = float(value)
        elif isinstance(value, str):
            try:
                x = float(value.strip())
            except ValueError:
                raise bad("a number") from None
        else:
            raise bad("a number")
        if not math.isfinite(x):
            raise bad("a finite number")
        return x
    if isinstance(default, str) and not isinstance(value, str):
        raise bad("a string")
    return value


def coerce_values(cls: type, values: dict[str, Any], where: str | None = None) -> dict[str, Any]:
    """`coerce_value` for each known field in `values`; `where` names the source (a file), else the flag."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return {k: coerce_value(fields[k], v, where or _flag(k)) if k in fields else v for k, v in values.items()}


def build_config(cls: type[T], yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Dataclass defaults, then the YAML file, then `overrides` (e.g. `vars(args)` filtered to the fields).

    Unknown keys in the YAML raise VrpError naming the file and the key; values of the wrong type (`lora_r: abc`)
    raise VrpError naming the file (or the flag) and the option (see `coerce_value`).
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    if yaml_path:
        data = load_yaml(yaml_path)
        unknown = sorted(set(data) - names)
        if unknown:
            raise VrpError(f"{yaml_path}: unknown option(s) {unknown}; known: {sorted(names)}")
        values.update(coerce_values(cls, data, str(yaml_path)))
    values.update(coerce_values(cls, {k: v for k, v in (overrides or {}).items() if k in names}))
    try:
        return cls(**values)
    except TypeError as e:
        raise VrpError(f"bad configuration: {e}") from None
    except VrpError as e:
        if yaml_path:
            raise VrpError(f"{e} (options from {yaml_path} and the command line)") from None
        raise


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a dataclass as YAML (atomically)."""
    import yaml

    write_text_atomic(path, yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, allow_unicode=True))
