"""Run configs: frozen dataclasses whose fields are the command-line flags.

A run config is declared once, as a frozen dataclass whose fields carry their help text (``flag(...)``),
in the spirit of openai-whisper's ``DecodingOptions`` and big_vision's configs. The argparse parser,
``--help`` and the ``--config FILE`` loader are all derived from those fields, so there is one list of
options, not two. Library functions take the dataclass (``pseudo_label.run(cfg)``); only the CLI edge
parses argv.

Precedence: field default < ``--config`` file (JSON or YAML) < flags given on the command line.

Names: a flag's field name is its one name from the command line to the data layer. ``aliases`` are other
spellings accepted silently (``--model`` for ``--model_name_or_path``); ``deprecated`` are old names accepted
with a ``FutureWarning`` naming the new one. Both work alike on the command line, in ``--config`` files and in
``from_dict`` (recipes, stored run configs), so a name that works in one place works in all.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import types
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")

REQUIRED: Any = dataclasses.MISSING  # default of a field that has no default (given by flag or file)


class ConfigError(ValueError):
    """A config file or flag value that does not fit the config class (unknown key, wrong type, missing)."""


def flag(
    default: Any = REQUIRED,
    help: str = "",
    *,
    group: str | None = None,
    aliases: Sequence[str] = (),
    deprecated: Sequence[str] = (),
    metavar: str | None = None,
    cli: bool = True,
) -> Any:
    """A config field that is also a command-line flag ``--<name>``.

    ``default=REQUIRED`` makes it mandatory (from a flag or the config file); ``aliases`` are other names of
    the same flag (accepted silently), ``deprecated`` old names (accepted with a warning), both with or
    without the leading ``--``; ``group`` titles a section of ``--help``; ``cli=False`` keeps a field out of
    the parser (set only from Python or a config file).
    """
    meta = {
        "help": help,
        "group": group,
        "aliases": tuple(a.removeprefix("--") for a in aliases),
        "deprecated": tuple(a.removeprefix("--") for a in deprecated),
        "metavar": metavar,
        "cli": cli,
    }
    if default is REQUIRED:
        return dataclasses.field(metadata=meta)
    if isinstance(default, (list, dict, set)):
        raise TypeError("flag defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata=meta)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` → ``(X, True)``; anything else → ``(tp, False)``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Check/convert a config-file value to the field type; ``ConfigError`` names the key."""
    base, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name}: null is not allowed (expected {getattr(base, '__name__', base)})")
    if typing.get_origin(base) is Literal:
        choices = typing.get_args(base)
        if value not in choices:
            raise ConfigError(f"{name}: {value!r} is not one of {list(choices)}")
        return value
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true/false, got {value!r}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if base is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return str(value)
    if typing.get_origin(base) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        (item,) = typing.get_args(base)[:1]
        return tuple(_coerce(f"{name}[{i}]", item, v) for i, v in enumerate(value))
    return value


def other_names(cls: type) -> dict[str, tuple[str, bool]]:
    """Every alias and deprecated name of ``cls``'s fields → ``(field name, deprecated?)``."""
    out: dict[str, tuple[str, bool]] = {}
    for f in dataclasses.fields(cls):
        out.update({a: (f.name, False) for a in f.metadata.get("aliases", ())})
        out.update({a: (f.name, True) for a in f.metadata.get("deprecated", ())})
    return out


def warn_deprecated(old: str, new: str, where: str = "") -> None:
    """The one warning for an old flag name: it still works, and says which name to use."""
    place = f"{where}: " if where else ""
    warnings.warn(f"{place}--{old} is deprecated; use --{new}", FutureWarning, stacklevel=3)


def canonical(cls: type, values: dict[str, Any], *, source: str = "config", warn: bool = True) -> dict[str, Any]:
    """``values`` with every alias or deprecated key renamed to its field (deprecated ones warn unless
    ``warn=False``); ``ConfigError`` when one flag is given under two names."""
    renames = other_names(cls)
    out: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in values.items():
        name, old = renames.get(key, (key, False))
        if name in out:
            raise ConfigError(f"{source}: {given_as[name]!r} and {key!r} are the same flag --{name}; give it once")
        if old and warn:
            warn_deprecated(key, name, source)
        out[name], given_as[name] = value, key
    return out


def from_dict(cls: type[T], values: dict[str, Any], *, source: str = "config", positional: Sequence[str] = ()) -> T:
    """Build ``cls`` from a mapping of flag names (aliases and deprecated names too), refusing unknown keys
    (a typo'd key must not be silently ignored)."""
    types_ = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = canonical(cls, values, source=source)
    unknown = sorted(set(values) - set(names))
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, [*names, *other_names(cls)], n=1, cutoff=0.6)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"{source}: unknown key(s) {', '.join(hints)} for {cls.__name__}")
    kwargs = {k: _coerce(k, types_[k], v) for k, v in values.items()}
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in kwargs and f.default is REQUIRED and f.default_factory is REQUIRED
    ]
    if missing:
        spelled = [m if m in positional else f"--{m}" for m in missing]
        raise ConfigError(f"{source}: missing required " + ", ".join(spelled))
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of every field (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML config file into a dict; ``ConfigError`` names the file on failure."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read ({e.strerror or e})") from None
    if not text.strip():
        return {}  # an empty file is an empty config, JSON or YAML alike
    try:
        values = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"--config {path}: not valid {'JSON' if p.suffix == '.json' else 'YAML'} ({e})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of flag names to values")
    return values


def _deprecation_action(base: type[argparse.Action], field: str, old: Sequence[str]) -> type[argparse.Action]:
    """``base`` that warns (``warn_deprecated``) when the flag is given under one of its ``old`` names."""

    class Warned(base):  # type: ignore[misc, valid-type]
        def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
            name = (option_string or "").removeprefix("--")
            name = name.removeprefix("no-") if name.removeprefix("no-") in old else name
            if name in old:
                warn_deprecated(name, field)
            super().__call__(parser, namespace, values, option_string)

    return Warned


def _add_positional(target: Any, f: dataclasses.Field, base: Any, kw: dict[str, Any]) -> None:
    """A positional field; a tuple takes any number (none: it may come from the config file)."""
    kw.pop("dest")
    if typing.get_origin(base) is tuple:
        kw["nargs"] = "*"
        base = typing.get_args(base)[0]
    target.add_argument(f.name, type=base, **kw)


def _add_flag(target: Any, f: dataclasses.Field, base: Any, kw: dict[str, Any]) -> None:
    """``--<field>`` plus its aliases and deprecated names, typed from the field."""
    meta = f.metadata
    old = meta.get("deprecated", ())
    names = [f"--{n}" for n in (f.name, *meta.get("aliases", ()), *old)]
    action: type[argparse.Action] = argparse._StoreAction
    if base is bool:
        action = argparse.BooleanOptionalAction  # --x / --no-x: a flag can undo a config file
    elif typing.get_origin(base) is Literal:
        kw["choices"] = list(typing.get_args(base))
        kw["type"] = type(kw["choices"][0])
    elif typing.get_origin(base) is tuple:
        kw["nargs"] = "+"
        kw["type"] = typing.get_args(base)[0]
    else:
        kw["type"] = base
    kw["action"] = _deprecation_action(action, f.name, old) if old else action
    if f.default is not REQUIRED:  # default=SUPPRESS hides it from the formatter, so say it here
        kw["help"] = f"{kw['help']} (default: {f.default})".strip()
    target.add_argument(*names, **kw)


def build_parser(
    cls: type, prog: str | None = None, description: str | None = None, positional: Sequence[str] = ()
) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of ``cls`` (plus ``--config``).

    Fields named in ``positional`` become positional arguments (tuple fields take any number). No flag is
    argparse-``required``: a required field may come from the config file, so ``parse`` checks.
    """
    p = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="JSON or YAML file of flag values (without '--'); flags on the command line override it",
    )
    types_ = typing.get_type_hints(cls)
    groups: dict[str | None, Any] = {None: p}
    own = set(cls.__dict__.get("__annotations__", {}))
    fields = dataclasses.fields(cls)  # a shared base's flags (e.g. the multi-host ones) listed after the own ones
    for f in [f for f in fields if f.name in own] + [f for f in fields if f.name not in own]:
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        group = meta.get("group")
        if group not in groups:
            groups[group] = p.add_argument_group(group)
        base, _ = _unwrap_optional(types_[f.name])
        help_ = meta.get("help", "")
        if f.default is REQUIRED:
            help_ = (help_ + " " if help_ else "") + "(required)"
        kw: dict[str, Any] = {"help": help_, "dest": f.name, "default": argparse.SUPPRESS}
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        add = _add_positional if f.name in positional else _add_flag
        add(groups[group], f, base, kw)
    return p


def parse(
    cls: type[T],
    argv: Sequence[str] | None = None,
    prog: str | None = None,
    description: str | None = None,
    positional: Sequence[str] = (),
) -> T:
    """Parse argv (and ``--config FILE``) into ``cls``; exits with argparse's usage error on bad input.

    A positional field may come from the config file too (transcribe's inputs); given on the command line,
    it wins like any flag."""
    parser = build_parser(cls, prog, description, positional)
    ns = vars(parser.parse_args(argv))
    config_file = ns.pop("config", None)
    ns = {k: v for k, v in ns.items() if not (k in positional and v == [])}
    try:
        values = load_file(config_file) if config_file else {}
        source = f"--config {config_file}" if config_file else "flags"
        merged = {**canonical(cls, values, source=source), **ns}
        return from_dict(cls, merged, source=source, positional=positional)
    except ConfigError as e:
        parser.error(str(e))
    raise AssertionError("unreachable")


def _argv_values(name: str, value: Any) -> list[str]:
    """The command-line words of one field's value (after its ``--name``, or alone for a bool)."""
    if isinstance(value, bool):
        return [f"--{name}" if value else f"--no-{name}"]
    if isinstance(value, tuple):
        return [f"--{name}", *map(str, value)]
    return [f"--{name}", str(value)]


def to_argv(cfg: Any, positional: Sequence[str] = ()) -> list[str]:
    """The command line a user would type for ``cfg``: every field that differs from its default, under its
    field name (``parse(type(cfg), to_argv(cfg)) == cfg``); ``ValueError`` for a ``None`` no flag can give."""
    argv: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.default is not REQUIRED and value == f.default and type(value) is type(f.default):
            continue
        if f.name in positional:
            argv = [*map(str, value), *argv]
        elif value is None:
            raise ValueError(f"--{f.name}: None differs from the default {f.default!r} and has no flag")
        else:
            argv += _argv_values(f.name, value)
    return argv


def differences(saved: dict[str, Any], now: dict[str, Any], ignore: Sequence[str] = ()) -> list[str]:
    """Human-readable ``key: saved → now`` lines for every key whose value differs (resume checks)."""
    out = []
    for k in sorted(set(saved) | set(now)):
        if k in ignore:
            continue
        a, b = saved.get(k, "<absent>"), now.get(k, "<absent>")
        if a != b:
            out.append(f"{k}: {a!r} → {b!r}")
    return out
