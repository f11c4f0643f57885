"""Config dataclasses <-> YAML files <-> command-line flags.

Knows: how to turn a flat dataclass into argparse options (`--field-name`, type from the default, help from the
field's `metadata["help"]`, default shown), and how to merge defaults < YAML file < explicit flags.
Does not know: what any field means (each stage owns its dataclass).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

from vrp.records import VrpError, write_text_atomic

T = TypeVar("T")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_value(text: str) -> Any:
    """Parse a flag value for a field whose default is None or a list: JSON if it parses, else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


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
        elif isinstance(default, (int, float, str)) and not isinstance(default, bool):
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
        raise VrpError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise VrpError(f"{path}: expected a mapping of option: value, got {type(data).__name__}")
    return data


def build_config(cls: type[T], yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Dataclass defaults, then the YAML file, then `overrides` (e.g. `vars(args)` filtered to the fields).

    Unknown keys in the YAML raise VrpError naming the file and the key.
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    if yaml_path:
        data = load_yaml(yaml_path)
        unknown = sorted(set(data) - names)
        if unknown:
            raise VrpError(f"{yaml_path}: unknown option(s) {unknown}; known: {sorted(names)}")
        values.update(data)
    for k, v in (overrides or {}).items():
        if k in names:
            values[k] = v
    try:
        return cls(**values)
    except TypeError as e:
        raise VrpError(f"bad configuration: {e}") from None


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a dataclass as YAML (atomically)."""
    import yaml

    write_text_atomic(path, yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, allow_unicode=True))
