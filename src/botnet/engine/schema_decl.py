"""The config, declared once: every key with its type, default, allowed values, flag and help text.

A :class:`Schema` is a list of :class:`Section` s of :class:`Field` s. Everything else is derived
from it: the defaults (:meth:`Schema.defaults`), the checks (:meth:`Schema.validate`, one-line
:class:`~botnet.errors.ConfigError` naming the key and what it must be), the command-line flags
(:meth:`Schema.add_arguments`, :meth:`Schema.flag_values`) and the key tables of the docs
(:meth:`Schema.markdown_table`). The engine declares the sections every task shares
(``botnet.engine.config.ENGINE_SCHEMA``); a task extends them with its own (:meth:`Schema.extend`),
and declares the keys it moved, so configs saved by older runs still read (:meth:`Schema.migrate`).

Only the standard library, PyYAML and :mod:`botnet.validation` are imported here: ``botnet --help``
builds its flags from the declaration without loading torch.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from botnet.validation import Spec

__all__ = ["Field", "Section", "Schema", "check_typed"]


@dataclass(frozen=True)
class Field:
    """One config key. ``kind`` is ``int``, ``float``, ``str``, ``bool``, ``list`` or ``dict``."""

    key: str                            # its name in the section; "a.b" for a key of a mapping in it
    default: Any
    kind: type = str
    help: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False              # low itself is refused (> low)
    high_open: bool = False             # high itself is refused (< high)
    choices: tuple | None = None
    nullable: bool = False              # null is allowed (the default may be null and filled later anyway)
    auto: bool = False                  # the string "auto" is allowed besides the kind
    flag: str | None = None             # "--lr"; a bool field gets --x and --no-x
    also_sets: tuple[str, ...] = ()     # keys the flag sets besides its own (--img-size: model.img_size)
    spec: Spec | None = None            # lists and mappings: their shape, as botnet.validation declares it
    check: Callable[[Any, str], None] | None = None  # a check of its own instead (raises ConfigError)
    what: str | None = None             # the allowed values in words, for a field with its own check

    @property
    def dest(self) -> str | None:
        """The argparse name of the flag (``--weight-decay`` -> ``weight_decay``)."""
        return self.flag.lstrip("-").replace("-", "_") if self.flag else None

    def allowed(self) -> str:
        """The values this field takes, in words (the docs' table)."""
        if self.what:
            return self.what
        if self.choices is not None:
            text = "one of " + ", ".join(map(_plain, self.choices))
        elif self.kind in (int, float):
            text = ("an integer" if self.kind is int else "a number") + _range(self)
        elif self.kind is bool:
            text = "true or false"
        elif self.spec is not None:
            text = self.spec.what
        else:
            text = {str: "a non-empty string", list: "a list", dict: "a mapping"}[self.kind]
        return text + (", or auto" if self.auto else "") + (", or null" if self.nullable else "")


@dataclass(frozen=True)
class Section:
    """A config section (``optim``, ``train``, ...); ``name=""`` holds top-level keys (``name``)."""

    name: str
    fields: tuple[Field, ...]
    help: str = ""


class Schema:
    """Sections in the order a config lists them; see the module's docstring."""

    def __init__(self, sections: Iterable[Section], renamed: dict[str, str] | None = None):
        self.sections: tuple[Section, ...] = tuple(sections)
        self.renamed: dict[str, str] = dict(renamed or {})  # saved configs' old key -> its key now
        seen = set()
        for key, _ in self.fields():
            if key in seen:
                raise ValueError(f"config key {key} is declared twice")
            seen.add(key)

    # ------------------------------------------------------------------------- the declaration
    def extend(self, *sections: Section, defaults: dict[str, Any] | None = None,
               renamed: dict[str, str] | None = None) -> "Schema":
        """This schema plus a task's own: fields added to a section of the same name go after its
        fields, new sections after the last; ``defaults`` changes the default of declared keys (a
        :class:`Field` there replaces the declared one: another default with its own help)."""
        fields = {s.name: list(s.fields) for s in self.sections}
        helps = {s.name: s.help for s in self.sections}
        for s in sections:
            fields.setdefault(s.name, []).extend(s.fields)
            helps[s.name] = helps.get(s.name) or s.help
        for dotted, value in (defaults or {}).items():
            name, key = _split(dotted, fields)
            i = next((i for i, f in enumerate(fields[name]) if f.key == key), None)
            if i is None:
                raise ValueError(f"cannot change the default of {dotted}: it is not declared")
            fields[name][i] = value if isinstance(value, Field) else dataclasses.replace(fields[name][i], default=value)
        return Schema((Section(n, tuple(fs), helps[n]) for n, fs in fields.items()),
                      {**self.renamed, **(renamed or {})})

    def fields(self) -> Iterator[tuple[str, Field]]:
        """``(dotted key, field)`` in declaration order."""
        for s in self.sections:
            for f in s.fields:
                yield (f"{s.name}.{f.key}" if s.name else f.key), f

    def field(self, key: str) -> Field:
        for k, f in self.fields():
            if k == key:
                return f
        raise KeyError(key)

    def defaults(self) -> dict[str, Any]:
        """The nested config with every key at its default (a fresh copy)."""
        out: dict[str, Any] = {}
        for s in self.sections:
            node = out.setdefault(s.name, {}) if s.name else out
            for f in s.fields:
                *parents, leaf = f.key.split(".")
                target = node
                for p in parents:
                    target = target.setdefault(p, {})
                target[leaf] = copy.deepcopy(f.default)
        return out

    # ------------------------------------------------------------------------- checking
    def check_sections(self, cfg: Any) -> None:
        """Every section, and every mapping declared inside one, is a mapping in ``cfg``: ``--set train=5``
        or ``--set data=null`` is one line naming the section, not a crash."""
        _check_mappings(cfg, self.defaults(), "")

    def validate(self, cfg: dict) -> dict:
        """Check every declared key of ``cfg``; the first bad one raises a one-line ``ConfigError``."""
        from botnet.errors import ConfigError

        self.check_sections(cfg)
        for key, f in self.fields():
            found, value = _lookup(cfg, key)
            if not found:
                if "." in f.key:  # inside a mapping given whole (--set data.mosaic={...}): its own default holds
                    continue
                section = key.rpartition(".")[0]
                raise ConfigError(f"{key} is missing: a whole {section} section was given; set single keys with "
                                  f"--set {key}=VALUE")
            check_field(f, key, value)
        return cfg

    def migrate(self, saved: dict) -> dict:
        """A copy of a config saved by an older botnet with each renamed key at its new place (a value
        already at the new place wins). Run folders and checkpoints keep the layout they were written in."""
        out = copy.deepcopy(saved) if isinstance(saved, dict) else saved
        for old, new in self.renamed.items():
            parent, _, leaf = old.rpartition(".")
            found, node = _lookup(out, parent) if parent else (True, out)
            if not (found and isinstance(node, dict) and leaf in node):
                continue
            value = node.pop(leaf)
            *path, last = new.split(".")
            target = out
            for p in path:
                if not isinstance(target.get(p), dict):
                    target[p] = {}
                target = target[p]
            target.setdefault(last, value)
        return out

    def from_saved(self, saved: dict | None) -> dict:
        """The full config of a saved run (``config.json``, a checkpoint's metadata): the defaults with
        its values, migrated, over them."""
        from botnet.engine.config import merge

        return merge(self.defaults(), self.migrate(saved or {}))

    def current_key(self, key: str) -> str:
        """The name a key has now (``train.label_smoothing`` -> ``loss.label_smoothing``)."""
        return self.renamed.get(key, key)

    # ------------------------------------------------------------------------- typed sections
    def section(self, cfg: dict, name: str) -> Any:
        """Section ``name`` of a (validated) ``cfg`` as a frozen dataclass of its declared keys, numbers of their
        declared kind: what code that needs one section takes, rather than the whole dict (detectron2's
        ``from_config`` habit). A key inside a declared mapping (``mosaic.canvas``) comes as that mapping."""
        sec = next((s for s in self.sections if s.name == name), None)
        if sec is None:
            raise KeyError(f"no config section {name!r}")
        node = cfg.get(name, {}) if name else cfg
        values: dict[str, Any] = {}
        for f in sec.fields:
            top = f.key.split(".")[0]
            if "." in f.key:
                values[top] = dict(node.get(top) or {})
            else:
                values[top] = _typed_value(f, node.get(top, f.default))
        cls = dataclasses.make_dataclass(f"{(name or 'top').capitalize()}Section", list(values), frozen=True)
        return cls(**values)

    # ------------------------------------------------------------------------- the command line
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The flags, one argument group per section, each flag's help ending with the keys it sets
        (``[optim.lr]``); ``default=None``, so an absent flag leaves the config as it is."""
        for s in self.sections:
            flagged = [f for f in s.fields if f.flag]
            if not flagged:
                continue
            group = parser.add_argument_group(f"{s.name} options" + (f" ({s.help})" if s.help else ""))
            for f in flagged:
                key = f"{s.name}.{f.key}" if s.name else f.key
                help_ = f"{f.help} [{', '.join((key, *f.also_sets))}]"
                if f.kind is bool:
                    group.add_argument(f.flag, dest=f.dest, default=None, action=argparse.BooleanOptionalAction,
                                       help=help_)
                elif f.choices is not None:
                    group.add_argument(f.flag, dest=f.dest, default=None, choices=list(f.choices), help=help_)
                else:
                    group.add_argument(f.flag, dest=f.dest, default=None, type=_flag_type(f), help=help_)

    def flag_values(self, args: argparse.Namespace) -> list[tuple[str, Any, str]]:
        """``(key, value, flag as given)`` for each flag on the command line (``--no-plots`` for False)."""
        out = []
        for key, f in self.fields():
            value = getattr(args, f.dest, None) if f.flag else None
            if value is None:
                continue
            given = "--no-" + f.flag[2:] if f.kind is bool and value is False else f.flag
            out += [(k, value, given) for k in (key, *f.also_sets)]
        return out

    # ------------------------------------------------------------------------- the docs
    def markdown_table(self, exclude: "Schema | None" = None) -> str:
        """The keys as a Markdown table; with ``exclude``, only the keys it lacks or declares otherwise
        (a task's own keys and changed defaults)."""
        skip = dict(exclude.fields()) if exclude is not None else {}
        rows = ["| key | default | values | flag | what it sets |", "|---|---|---|---|---|"]
        for key, f in self.fields():
            if skip.get(key) == f:
                continue
            flag = f"`{f.flag}`" if f.flag else ""
            if f.flag and f.kind is bool:
                flag += f" / `--no-{f.flag[2:]}`"
            cells = [f"`{key}`", f"`{_plain(f.default)}`", f.allowed(), flag, f.help]
            rows.append("| " + " | ".join(c.replace("|", "\\|").replace("*", "\\*") for c in cells) + " |")
        return "\n".join(rows) + "\n"


# ----------------------------------------------------------------------------- one field
def _typed_value(f: Field, v: Any) -> Any:
    """``v`` as ``f``'s kind (an int given as 4.0 in YAML is 4); null, ``auto`` and other kinds as they are."""
    if f.kind in (int, float) and isinstance(v, (int, float)) and not isinstance(v, bool):
        return f.kind(v)
    return copy.deepcopy(v)


def check_field(f: Field, key: str, v: Any) -> None:
    """Raise a one-line ``ConfigError`` when ``v`` is not a value ``f`` allows."""
    from botnet.errors import ConfigError

    if f.check is not None:
        f.check(v, key)
        return
    if (v is None and f.nullable) or (v == "auto" and f.auto):
        return
    if f.choices is not None:
        if v not in f.choices:
            raise ConfigError(f"{key} = {v!r} is invalid: use one of {', '.join(map(str, f.choices))}"
                              f"{_alternatives(f)}")
    elif f.kind in (int, float):
        if not _number_fits(f, v):
            what = "an integer" if f.kind is int else "a number"
            raise ConfigError(f"{key} = {v!r} is invalid: it must be {what}{_range(f)}{_alternatives(f)}")
    elif f.kind is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{key} = {v!r} is invalid: expected true or false{_alternatives(f)}")
    else:
        from botnet.validation import Dict, List, Str

        spec = f.spec or {str: Str(min_len=1), list: List(), dict: Dict()}[f.kind]
        check_typed(v, key, dataclasses.replace(spec, nullable=f.nullable))


def check_typed(v: Any, key: str, spec: Spec) -> None:
    """Check one config value against a :mod:`botnet.validation` spec; one line naming the key."""
    from botnet.errors import ConfigError
    from botnet.validation import problem

    why = problem(v, spec, key)
    if why:
        raise ConfigError(f"{key} = {v!r} is invalid: {why.split('; ', 1)[-1]}" if why.startswith(key + " is")
                          else f"{key} = {v!r} is invalid: {why}")


def _number_fits(f: Field, v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        return False
    if f.kind is int and not float(v).is_integer():
        return False
    if f.low is not None and (v <= f.low if f.low_open else v < f.low):
        return False
    return f.high is None or (v < f.high if f.high_open else v <= f.high)


def _range(f: Field) -> str:
    """`` >= 0 and < 1``: the numeric range as the messages and the docs say it."""
    lo = "" if f.low is None else f"{'>' if f.low_open else '>='} {f.low:g}"
    hi = "" if f.high is None else f"{'<' if f.high_open else '<='} {f.high:g}"
    rng = " and ".join(x for x in (lo, hi) if x)
    return " " + rng if rng else ""


def _alternatives(f: Field) -> str:
    return (" (or auto)" if f.auto else "") + (" (or null)" if f.nullable else "")


def _flag_type(f: Field) -> Callable[[str], Any]:
    """The argparse type of a flag: its kind, and its range checked when parsed (exit code 2, one line)."""
    def parse(text: str):
        if f.auto and text == "auto":
            return text
        if f.kind not in (int, float):
            return text
        try:
            v = f.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if f.kind is int else 'a number'}"
                                             f"{' (or auto)' if f.auto else ''}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if not _number_fits(f, v):
            if (f.low, f.high, f.low_open, f.high_open) == (0, 1, False, False):
                rng = " between 0 and 1"
            else:
                rng = _range(f)
            what = "an integer" if f.kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{v:g} is not allowed: give {what}{rng}")
        return v

    parse.__name__ = f.kind.__name__  # argparse names the type in its own messages
    return parse


# ----------------------------------------------------------------------------- helpers
def _split(dotted: str, sections: dict) -> tuple[str, str]:
    """``"optim.lr"`` -> ``("optim", "lr")``; ``"name"`` -> ``("", "name")``."""
    head, _, rest = dotted.partition(".")
    return (head, rest) if rest and head in sections else ("", dotted)


def _lookup(cfg: Any, dotted: str) -> tuple[bool, Any]:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _check_mappings(cfg: Any, ref: dict, prefix: str) -> None:
    from botnet.errors import ConfigError

    for k, sub in ref.items():
        if not (isinstance(sub, dict) and sub) or k == "kwargs":  # kwargs is free-form
            continue
        v = cfg.get(k) if isinstance(cfg, dict) else None
        if not isinstance(v, dict):
            raise ConfigError(f"{prefix}{k} = {v!r} is invalid: it must be a mapping of {prefix}{k}.* keys (known: "
                              f"{', '.join(sub)}); set one of them with --set {prefix}{k}.KEY=VALUE")
        _check_mappings(v, sub, f"{prefix}{k}.")


def _plain(value: Any) -> str:
    """A value as one line of YAML (``null``, ``true``, ``[0.08, 1.0]``)."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...").strip()
