"""Config dataclasses <-> YAML files <-> command-line flags, once for every stage.

Knows: how a flat config dataclass becomes argparse options (`--field-name`; the type from the field's annotation:
bool (`--x/--no-x`), int, float, str, their `| None` forms, `list[int]`/`list[str]` (comma-separated), `Any` (JSON
or a string); help from the field's `metadata["help"]`, with the default shown and other fields named in backticks
written as their flags), how defaults < a YAML file < explicit flags are merged, how values are checked against the
field types (`coerce_value`), how a field is declared once and reused by another stage's config (`option_like`), and
the range/choice checks the configs' `__post_init__` share.
Does not know: what any field means or which values are valid (each stage's dataclass, in its `__post_init__`).
Errors: a value that cannot be read as the field's type is a `ConfigError` naming the field when it came from a flag
or a dataclass argument, and a `VrpError` naming the file and the option when it came from a YAML file.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from vrp.errors import ConfigError, VrpError
from vrp.files import write_text_atomic
from vrp.limits import check_limits

T = TypeVar("T")
SCALARS = (bool, int, float, str)


def flag(name: str) -> str:
    """The command-line flag of field `name`: `max_steps` -> `--max-steps`."""
    return "--" + name.replace("_", "-")


def option(help: str, default: Any = dataclasses.MISSING, metavar: str | None = None, cli: bool = True,
           aliases: tuple[str, ...] = (), limit: Any = None) -> Any:
    """A dataclass field with its `--help` text: `lora_r: int = option("LoRA rank r", 16)`. `metavar` names the
    flag's value in `--help`; `cli=False` keeps the field off the command line (YAML and Python only); `aliases`
    are more flags for it (`("--lr",)`; flags are never abbreviated, `vrp.cli.no_abbreviations`); `limit` (a
    `vrp.limits.Limit`) is the field's allowed range: shown in `--help`, checked by `coerce_fields`."""
    kw: dict[str, Any] = {}
    if isinstance(default, (list, dict)):
        kw["default_factory"] = lambda d=default: type(d)(d)
    elif default is not dataclasses.MISSING:
        kw["default"] = default
    return dataclasses.field(metadata={"help": help, "metavar": metavar, "cli": cli, "aliases": aliases,
                                       "limit": limit}, **kw)


def option_like(cls: type, name: str, help: str | None = None) -> Any:
    """A field with the default and help text of field `name` of dataclass `cls` (one definition of a default that
    several stages share, e.g. `max_prompt_tokens` of `PromptConfig`)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return option(help or f.metadata.get("help", ""), _field_default(f), f.metadata.get("metavar"),
                  aliases=f.metadata.get("aliases", ()), limit=f.metadata.get("limit"))


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_kind(cls: type, f: dataclasses.Field) -> tuple[type | None, bool, bool]:
    """`(scalar type or None for Any, optional, is_list)` of field `f` of `cls`, from its annotation."""
    hint = _hints(cls).get(f.name, Any)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    if optional and len(args) == 1:
        hint = args[0]
    if typing.get_origin(hint) is list:
        inner = (typing.get_args(hint) or (str,))[0]
        return (inner if inner in SCALARS else None), optional, True
    return (hint if hint in SCALARS else None), optional, False


def _parse_json_or_text(text: str) -> Any:
    """A flag value of an `Any` field: JSON if it parses (`["q_proj","v_proj"]`), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, group: str | None = None) -> None:
    """Add one option per field of dataclass `cls` (fields with `metadata["cli"] is False` are left out). Defaults
    are `argparse.SUPPRESS`, so that only the flags the user gave reach the namespace (they override the YAML); the
    help text shows the dataclass default. Values are checked later, by `build_config` (one place of validation)."""
    target = parser.add_argument_group(group) if group else parser
    names = {f.name for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        default = _field_default(f)
        shown = ",".join(map(str, default)) if isinstance(default, list) else repr(default)
        text = re.sub(r"`([a-z][a-z0-9_]*)`", lambda m: flag(m[1]) if m[1] in names else m[0],
                      f.metadata.get("help", ""))
        limit = f.metadata.get("limit")
        help_ = f"{text} (default: {shown}){' [range ' + limit.span() + ']' if limit else ''}".replace("%", "%%")
        kind, _, is_list = field_kind(cls, f)
        metavar = f.metadata.get("metavar") or f.name.upper()
        common: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_}
        flags = (flag(f.name), *f.metadata.get("aliases", ()))
        if kind is bool and not is_list:
            target.add_argument(*flags, action=argparse.BooleanOptionalAction, **common)
        elif is_list:
            target.add_argument(*flags, type=str, metavar=metavar, **{
                **common, "help": help_ + " [comma-separated]"})
        elif kind is None:
            target.add_argument(*flags, type=_parse_json_or_text, metavar=metavar, **{
                **common, "help": help_ + " [JSON or string]"})
        else:
            target.add_argument(*flags, type=str, metavar=metavar, **common)


def add_config_args(parser: argparse.ArgumentParser, cls: type, group: str | None = None) -> None:
    """`--config YAML` plus one flag per field of `cls` (see `add_dataclass_args`)."""
    parser.add_argument("--config", metavar="YAML", help="YAML file of options (keys = the option names below with "
                                                          "underscores); flags override it")
    add_dataclass_args(parser, cls, group)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping. Raises VrpError naming the file on a missing file, invalid YAML or a non-mapping."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise VrpError(f"{path}: config file not found")
    class UniqueKeys(yaml.SafeLoader):
        """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    twice = key in seen
                except TypeError:  # an unhashable key: the base class says what is wrong with it
                    continue
                if twice:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeys) or {}
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


def _scalar(kind: type, value: Any) -> tuple[bool, Any]:
    """`(ok, converted)` for a bool, int, float or str field; unambiguous conversions only."""
    if kind in (bool, str):
        return isinstance(value, kind), value
    if isinstance(value, bool):
        return False, value
    if isinstance(value, str):
        try:
            return True, kind(value.strip())
        except ValueError:
            return False, value
    if kind is int and isinstance(value, float) and value.is_integer():
        return True, int(value)
    ok = isinstance(value, int) if kind is int else isinstance(value, (int, float))
    return ok, kind(value) if ok else value


WANT = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def coerce_value(cls: type, f: dataclasses.Field, value: Any, where: str | None = None) -> Any:
    """Check `value` against the annotation of field `f` of `cls` and convert what is unambiguous: an integral
    float or a numeric string to int, an int or a numeric string to float (YAML 1.1 reads `2e-4` as a string), a
    comma-separated string to a list. Floats must be finite. Raises ConfigError(field) when `where` is None (the
    value came from a flag or an argument), else VrpError naming `where` (a file) and the option."""
    kind, optional, is_list = field_kind(cls, f)
    if kind is None or (value is None and optional):
        return value
    shown = repr(value) if not isinstance(value, (dict, list)) else json.dumps(value)[:60]

    def bad(want: str) -> VrpError:
        if where is None:
            return ConfigError(f.name, f"must be {want}, got {shown}")
        return VrpError(f"{where}: option {f.name!r} must be {want}, got {shown}")

    if is_list:
        items = [x.strip() for x in value.split(",") if x.strip()] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise bad(f"a list of {WANT[kind].split(' ', 1)[1]}s")
        out = []
        for x in items:
            ok, y = _scalar(kind, x)
            if not ok:
                raise bad(f"a comma-separated list of {WANT[kind].split(' ', 1)[1]}s")
            out.append(y)
        return out
    ok, value = _scalar(kind, value)
    if not ok:
        raise bad(WANT[kind])
    if kind is float and not math.isfinite(value):
        raise bad("a finite number")
    return value


# the seeds numpy's legacy generator (`np.random.seed`) and every other seeded generator accept: 0 .. 2**32 - 1
SEED_MAX = 2**32 - 1


def coerce_fields(obj: Any) -> None:
    """Coerce every field of dataclass instance `obj` in place (`coerce_value`); the first line of each config's
    `__post_init__`, so that `TrainConfig(lora_r="8")` and `lora_r: 8.0` in YAML both give the int 8. A field named
    `seed` (every config's random seed) must then be in [0, `SEED_MAX`], and a field declared with a `limit` in its
    range (`vrp.limits.check_limits`): ConfigError(field) otherwise."""

    for f in dataclasses.fields(obj):
        setattr(obj, f.name, coerce_value(type(obj), f, getattr(obj, f.name)))
    check_limits(obj)
    if any(f.name == "seed" for f in dataclasses.fields(obj)):
        check_range(obj, "seed", low=0, high=SEED_MAX)


def coerce_values(cls: type, values: Mapping[str, Any], where: str | None = None) -> dict[str, Any]:
    """`coerce_value` for each field of `cls` in `values` (other keys are kept as they are)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return {k: coerce_value(cls, fields[k], v, where) if k in fields else v for k, v in values.items()}


def build_config(cls: type[T], source: str | Path | Mapping[str, Any] | None = None,
                 overrides: Mapping[str, Any] | None = None, where: str | None = None) -> T:
    """Dataclass defaults, then `source` (a YAML file, or a mapping already read from the file `where`), then
    `overrides` (e.g. `vars(args)`: keys that are not fields are ignored).

    Raises VrpError naming the file and the key for unknown keys in the file, VrpError naming the file and the
    option for a value of the wrong type there (`lora_r: abc`), ConfigError(field) for a bad override or a value
    the dataclass's `__post_init__` refuses (the message then says which file the options came from).
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    if source is not None and not isinstance(source, Mapping):
        where = str(source)
        source = load_yaml(source)
    if source is not None:
        unknown = sorted(set(source) - names)
        if unknown:
            raise VrpError(f"{where}: unknown option(s) {unknown}; known: {sorted(names)}")
        values.update(coerce_values(cls, source, where or "config"))
    values.update(coerce_values(cls, {k: v for k, v in (overrides or {}).items() if k in names}))
    try:
        return cls(**values)
    except ConfigError as e:
        if where:
            raise ConfigError(e.field, f"{e.message} (options from {where} and the command line)") from None
        raise


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The config of a subcommand: defaults, then `args.config` (YAML) if given, then the flags in `args`."""
    return build_config(cls, getattr(args, "config", None), vars(args))


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a dataclass as YAML (atomically)."""
    import yaml

    write_text_atomic(path, yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, allow_unicode=True))


def check_choice(cfg: Any, name: str, choices: Any) -> None:
    """Raise ConfigError(name) unless `cfg.<name>` is one of `choices`."""
    value = getattr(cfg, name)
    if value not in choices:
        raise ConfigError(name, f"choose from {', '.join(map(str, choices))}, got {value!r}")


def check_range(cfg: Any, *names: str, low: float | None = None, high: float | None = None, note: str = "") -> None:
    """Raise ConfigError(name) unless `low <= cfg.<name> <= high` for each of `names` (None: no bound; a None value
    passes)."""
    for name in names:
        value = getattr(cfg, name)
        if value is None:
            continue
        if low is not None and value < low:
            raise ConfigError(name, f"must be >= {low}{note}, got {value}")
        if high is not None and value > high:
            raise ConfigError(name, f"must be <= {high}{note}, got {value}")


def check_positive(cfg: Any, *names: str) -> None:
    """Raise ConfigError(name) unless `cfg.<name> > 0` for each of `names` (NaN fails too)."""
    for name in names:
        if not getattr(cfg, name) > 0:
            raise ConfigError(name, f"must be > 0, got {getattr(cfg, name)}")


def check_no_repeats(cfg: Any, name: str, items: list[str]) -> None:
    """Raise ConfigError(name) when `items` (the parsed list of `cfg.<name>`, e.g. comma-separated presets) names
    something twice."""
    seen: set[str] = set()
    twice: set[str] = set()
    for x in items:
        (twice if x in seen else seen).add(x)
    if twice:
        raise ConfigError(name, f"{', '.join(sorted(twice))} named twice in {getattr(cfg, name)!r}")
