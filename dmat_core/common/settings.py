"""Typed settings: the one layer that reads presets, JSON files, flags and ``--set`` for every long
job (``dmat train-at``, ``train-dm``, ``generate``, the studies), and the device flag and budgets
(``8/255``) they share.

A job's settings are a subclass of :class:`Settings`, a pydantic model (pydantic: maintained, the
usual Python validation library, with a strict mode and per-field ranges and choices declared next
to the field, so no check is written by hand). The rules, the same for every job:

- **strict types**: a bool is ``true``/``false`` (never ``"False"``, ``"no"`` or ``1``), an integer is
  an integer (``3.0`` is refused), a number is a number (``true`` is refused), a string a string;
  budgets alone also take a fraction string such as ``"8/255"``, devices a ``torch.device``;
- **ranges and choices** on the field (``Field(ge=1)``, ``Literal[...]``); settings that depend on
  each other are checked by the model (``model_validator``);
- **one meaning of unset**: a setting that is not given keeps the value of the layer below
  (default < preset < JSON file < flags < ``--set``); ``None`` (JSON ``null``) is a *value*, allowed
  only where the field says what it means (``grad_clip=None``: no clipping), refused elsewhere;
- **errors**: one line naming the key, the value and what is allowed
  (``augment="False": augment must be true or false``), as :class:`SettingsError`, a ValueError;
- unknown keys are refused with the list of known ones (a typo must not pass silently).

Size: one module of about 340 lines on purpose: the base model, the words its errors are written
in and the argparse types of the flags that bypass a model are one vocabulary; split, each part
would need the others.
"""
from __future__ import annotations

import json
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Dict, Mapping, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError


__all__ = ["Settings", "SettingsError", "Budget", "Device", "check_device", "resolve_device",
           "parse_eps", "read_json_file", "one_line_errors", "format_validation_error", "int_at_least",
           "number_in"]


class SettingsError(ValueError):
    """A setting out of its type or range, an unknown key, an unreadable settings file: one line."""


# ----------------------------------------------------------------------------- shared field types

def check_device(spec) -> str:
    """A ``device`` setting as a string, checked: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    spec = "auto" if spec is None else str(spec)
    kind, _, index = spec.partition(":")
    if not (spec in ("auto", "cpu", "cuda") or (kind == "cuda" and index.isdigit())):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    return spec


def resolve_device(spec, local_rank: int = 0):
    """The torch device a ``device`` setting names: ``auto`` (CUDA when available, else the CPU),
    ``cpu``, ``cuda`` (GPU ``local_rank``: one per process under torchrun) or ``cuda:N``."""
    import torch
    spec = check_device(spec)
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={spec!r} but CUDA is not available here; use device='cpu' or 'auto'")
    device = torch.device(spec)
    return torch.device("cuda", local_rank) if device.type == "cuda" and device.index is None else device


def parse_eps(value) -> float:
    """A budget given as a number or a fraction string: ``0.031``, ``'8/255'``."""
    if isinstance(value, str):
        num, _, den = value.partition("/")
        try:
            return float(num) / (float(den) if den else 1.0)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"cannot read a budget from {value!r}; write e.g. 8/255 or 0.0314") from None
    return float(value)


def _budget(value):
    return parse_eps(value) if isinstance(value, str) else value     # numbers stay strict


def _device(value):
    if type(value).__name__ == "device" and type(value).__module__ == "torch":   # a torch.device
        value = str(value)
    return check_device(value) if isinstance(value, str) else value


#: a budget in image units: a number, or a fraction string such as "8/255"
Budget = Annotated[float, BeforeValidator(_budget)]
#: auto, cpu, cuda or cuda:N (a torch.device is written as its string)
Device = Annotated[str, BeforeValidator(_device)]


# ----------------------------------------------------------------------------- errors in one line

def _show(value) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(t) -> str:
    if t is bool:
        return "true or false"
    if t is int:
        return "an integer"
    if t is float:
        return "a number"
    if t is str:
        return "a string"
    origin = typing.get_origin(t)
    if origin is typing.Literal:
        return "one of " + ", ".join(_show(v) for v in typing.get_args(t))
    if origin in (dict, Mapping) or t is dict:
        return "a JSON object"
    if origin in (list, tuple) or t in (list, tuple):
        args = typing.get_args(t)
        return f"a list of {_kind(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin is Annotated:
        return _kind(typing.get_args(t)[0])
    keys = _keys_of(t)
    if keys:
        return f"a JSON object of {', '.join(keys)}"
    return getattr(t, "__name__", str(t))


def _keys_of(t) -> list:
    """The keys of a TypedDict or model type (empty for anything else)."""
    if isinstance(t, type) and issubclass(t, BaseModel):
        return list(t.model_fields)
    if isinstance(t, type) and issubclass(t, dict) and hasattr(t, "__annotations__"):
        return [k for k in t.__annotations__ if not k.startswith("__")]
    return []


def _union_args(t):
    if typing.get_origin(t) in (typing.Union, getattr(types, "UnionType", typing.Union)):
        return typing.get_args(t)
    return (t,)


def describe(model: type, name: str) -> str:
    """What field ``name`` of ``model`` accepts, in words: "a number in [0, 1]", "null or an
    integer >= 1", "one of "trades", "pgd""."""
    info = model.model_fields[name]
    args = _union_args(info.annotation)
    nullable = type(None) in args
    kinds = [_kind(a) for a in args if a is not type(None)]
    lo = hi = None
    for m in info.metadata:
        for attr, side in (("ge", "["), ("gt", "(")):
            if getattr(m, attr, None) is not None:
                lo = (side, getattr(m, attr))
        for attr, side in (("le", "]"), ("lt", ")")):
            if getattr(m, attr, None) is not None:
                hi = (side, getattr(m, attr))
    text = " or ".join(kinds)
    if lo and hi:
        text += f" in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
    elif lo:
        text += f" {'>=' if lo[0] == '[' else '>'} {lo[1]:g}"
    elif hi:
        text += f" {'<=' if hi[0] == ']' else '<'} {hi[1]:g}"
    extra = (info.json_schema_extra or {}) if isinstance(info.json_schema_extra, dict) else {}
    if extra.get("allowed"):
        text += f" ({extra['allowed']})"
    return ("null or " + text) if nullable else text


def format_validation_error(error: ValidationError, model: type, where: str = "") -> str:
    """One line for a pydantic error: every failed setting as ``key=value: key must be <allowed>``
    (or the model's own message for a check across settings), joined by ``; ``."""
    parts = []
    known = sorted(model.model_fields)
    for e in error.errors(include_url=False):
        loc = [str(p) for p in e["loc"]]
        key = loc[0] if loc else ""
        msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if e["type"] == "extra_forbidden" and len(loc) == 1:
            parts.append(f"unknown setting {key!r}; known settings: {', '.join(known)}")
        elif not key:
            parts.append(msg)                                  # a check across settings
        elif e["type"] in ("value_error", "assertion_error") and key in msg:
            parts.append(msg)
        elif key in model.model_fields and len(loc) > 1:       # inside a nested object or list
            where_in = ".".join(loc)
            if e["type"] == "extra_forbidden" or e["type"] == "unexpected_keyword_argument":
                nested = _keys_of(model.model_fields[key].annotation)
                parts.append(f"unknown setting {where_in!r}" + (f"; known in {key}: {', '.join(nested)}" if nested else ""))
            else:
                parts.append(f"{where_in}={_show(e['input'])}: " + msg.replace("Input should be", "must be"))
        elif key in model.model_fields:
            sub = "".join(f"[{p}]" for p in loc[1:])
            parts.append(f"{key}{sub}={_show(e['input'])}: {key} must be {describe(model, key)}"
                         + (f" ({msg})" if e["type"] in ("value_error", "assertion_error") else ""))
        else:
            parts.append(f"{'.'.join(loc)}: {msg}")
        if len(parts) == 3:
            break
    more = len(error.errors()) - len(parts)
    return (f"{where}: " if where else "") + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


# ----------------------------------------------------------------------------- the base model

def read_json_file(path, what: str = "settings file", expect: type = dict) -> Any:
    """A JSON file that must hold one ``expect`` (an object by default): SettingsError naming the
    file otherwise (missing: FileNotFoundError)."""
    path = Path(path)
    if not path.is_file():
        if path.exists():
            raise SettingsError(f"{path}: a {what} must be a file, this is a folder")
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SettingsError(f"{path}: a {what} must be JSON text, this is binary") from None
    except json.JSONDecodeError as e:
        raise SettingsError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(loaded, expect):
        raise SettingsError(f"{path}: a {what} holds one JSON {'object' if expect is dict else expect.__name__}, "
                            f"this holds {_json_kind(loaded)}")
    return loaded


def _json_kind(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


class Settings(BaseModel):
    """Base of every job's settings (see the module docstring for the rules)."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, validate_assignment=True,
                              validate_default=True, protected_namespaces=())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = ""):
        """Build from a dict (a preset, a JSON file, flags): SettingsError in one line if any setting
        is unknown, of the wrong type or out of range."""
        if not isinstance(d, Mapping):
            raise SettingsError(f"{where + ': ' if where else ''}settings must be a JSON object, got {_json_kind(d)}")
        try:
            return cls.model_validate(dict(d))
        except ValidationError as e:
            raise SettingsError(format_validation_error(e, cls, where)) from None

    @classmethod
    def from_file(cls, path, what: Optional[str] = None):
        """Read and check a JSON file of these settings (e.g. a run's ``config.json``), as written by
        this version or, through :meth:`upgrade`, an earlier one."""
        return cls.from_dict(cls.upgrade(read_json_file(path, what or f"{cls.__name__} file")), where=str(path))

    @classmethod
    def upgrade(cls, d: dict) -> dict:
        """A settings file of an earlier version in this version's terms (a file format's migration,
        not a rule for new settings). Here: ``device: null``, which runs wrote before the settings
        were typed, was "auto"."""
        if "device" in cls.model_fields and "device" in d and d["device"] is None:
            d = {**d, "device": "auto"}
        return d

    @classmethod
    def layered(cls, presets: Mapping[str, Mapping], preset: Optional[str] = None, config_file=None,
                **overrides):
        """Defaults < ``presets[preset]`` < the JSON ``config_file`` < ``overrides``; every layer is
        checked for unknown keys before they are merged, so the error names where the typo is."""
        d: Dict[str, Any] = {}
        if preset is not None:
            if preset not in presets:
                raise SettingsError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(presets))}")
            d.update(presets[preset])
        if config_file is not None:
            loaded = read_json_file(config_file, "config file")
            cls._known(loaded, str(config_file))
            d.update(loaded)
        cls._known(overrides, "")
        d.update(overrides)
        return cls.from_dict(d)

    @classmethod
    def _known(cls, d: Mapping, where: str) -> None:
        unknown = sorted(set(d) - set(cls.model_fields))
        if unknown:
            raise SettingsError(f"{where + ': ' if where else ''}unknown setting(s) {unknown}; known settings: "
                                f"{', '.join(sorted(cls.model_fields))}")

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-ready values, in the order the fields are declared."""
        return self.model_dump(mode="json")

    def replace(self, **changes):
        """A copy with ``changes``, checked like a new object."""
        return type(self).from_dict({**self.to_dict(), **changes})

    def save(self, path) -> None:
        from .checkpoint import atomic_write_text
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def string_fields(cls) -> set:
        """Fields whose values are plain strings (``--set key=text`` keeps the text as it is)."""
        out = set()
        for name, info in cls.model_fields.items():
            args = [a for a in _union_args(info.annotation) if a is not type(None)]
            if all(a is str or (typing.get_origin(a) is typing.Literal
                                and all(isinstance(v, str) for v in typing.get_args(a))) for a in args):
                out.add(name)
        return out


def one_line_errors(parser):
    """Make an argparse (sub)parser report bad arguments as one line and exit code 2 (no usage
    block), the way every other bad input of dmat is refused; returns the parser."""
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")
    return parser


# ----------------------------------------------------------------------------- argparse types

def int_at_least(low: int):
    """An argparse ``type``: an integer >= ``low`` (one-line error otherwise)."""
    import argparse

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {v}")
        return v
    parse.__name__ = f"integer >= {low}"
    return parse


def number_in(low: float = -math.inf, high: float = math.inf, low_open: bool = False, high_open: bool = False):
    """An argparse ``type``: a finite number in the interval given (one-line error otherwise)."""
    import argparse
    lo, hi = "(" if low_open else "[", ")" if high_open else "]"
    span = f"a number in {lo}{low:g}, {high:g}{hi}" if math.isfinite(high) else \
        f"a number {'>' if low_open else '>='} {low:g}" if math.isfinite(low) else "a finite number"

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {span}, got {text!r}") from None
        ok = math.isfinite(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {span}, got {text}")
        return v
    parse.__name__ = span
    return parse
