"""What the training CLIs (`dmat train-at`, `dmat train-dm`) share: how settings are layered.

Settings: defaults < ``--preset`` < ``--config FILE.json`` < flags < ``--set key=value``, all read
by the typed settings layer (:mod:`dmat_core.common.settings`: strict types, ranges, one line per
error). Each CLI declares its own flags; this module adds the layering arguments and the run
arguments every long job has, merges them into a config, and prints the result once (rank 0
under torchrun).
"""
from __future__ import annotations

import argparse
import json
from typing import Callable, Mapping, Optional

from ..common.settings import SettingsError, int_at_least


def parse_set(items, model: Optional[type] = None) -> dict:
    """``key=value`` pairs (``-`` in a key read as ``_``); a value is JSON when it parses
    (numbers, true/false, null, {...}, [...]), else the text as it is. With the settings ``model``,
    the value of a field that holds plain strings is always the text (``--set arch=true`` is the
    name "true", ``null`` stays null); every value is then checked by the model's strict types, so
    ``--set augment=False`` (not JSON: the string "False") is refused, not read as true."""
    strings = model.string_fields() if model is not None else set()
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise SettingsError(f"--set expects key=value, got {item!r}")
        if key in strings and value != "null":
            out[key] = value
            continue
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def json_object_flag(text, flag: str):
    """The JSON object a flag such as ``--arch-kw`` holds (None when not given), or one line naming the flag."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SettingsError(f"{flag}: not valid JSON ({e.msg} at column {e.colno}): {text!r}; "
                            "write e.g. '{\"width\": 8}'") from None
    if not isinstance(value, dict):
        raise SettingsError(f"{flag}: must be a JSON object such as '{{\"width\": 8}}', got {text!r}")
    return value


def training_parser(sub, name: str, help: str, doc: str, presets: Mapping, notes: Mapping,
                    config_class: str, set_example: str) -> argparse.ArgumentParser:
    """The sub-command ``name``: its module docstring ``doc`` and the preset notes as description,
    and the settings arguments (:func:`add_settings_args`); the caller adds its own flags."""
    listing = "\n".join(f"  {k}: {v}" for k, v in notes.items())
    p = sub.add_parser(name, help=help, description=doc + "\npresets:\n" + listing,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_args(p, presets, config_class, set_example)
    return p


def add_settings_args(p: argparse.ArgumentParser, presets: Mapping, config_class: str, set_example: str) -> None:
    """``--preset`` (one of ``presets``), ``--config FILE.json`` and the repeatable ``--set``."""
    p.add_argument("--preset", choices=sorted(presets), help="named settings (flags override them)")
    p.add_argument("--config", help=f"JSON file of settings (keys of {config_class})")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help=f"any other setting, e.g. --set {set_example} (repeatable; values are JSON: "
                   "true/false, numbers, null, {...}; strictly typed)")


def add_run_args(p: argparse.ArgumentParser, amp_choices, amp_help: str) -> None:
    """The arguments of every long job: seed, precision, device, progress bar, starting over."""
    p.add_argument("--overwrite", "--fresh", dest="overwrite", action="store_true",
                   help="start over: remove the run found in --out (without it, a run of the same "
                   "settings resumes and one of other settings is refused); --fresh is the same")
    p.add_argument("--seed", type=int_at_least(0))
    p.add_argument("--amp", choices=list(amp_choices), help=f"autocast precision ({amp_help})")
    p.add_argument("--device", help="auto (default: cuda:LOCAL_RANK if available, else cpu), cpu, cuda, cuda:1")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(a: argparse.Namespace, make: Callable, model: type, **flags):
    """``make(preset, config_file, **settings)`` with the flags that were given, then ``--set``
    (parsed for the settings ``model``)."""
    flags.update(seed=a.seed, amp=a.amp, device=a.device, progress=False if a.no_progress else None)
    given = {k: v for k, v in flags.items() if v is not None}
    return make(a.preset, a.config, **{**given, **parse_set(a.set, model)})


def print_result(result: dict, *notes: str) -> None:
    """The run's result as JSON on stdout, then any ``notes`` lines, once (rank 0 under torchrun)."""
    from ..common.train_utils import dist_info
    if dist_info()[0] == 0:
        print(json.dumps(result, indent=2))
        for line in notes:
            print(line)
