"""Settings helpers every trainer uses: the device flag, epsilon as a number or a fraction, and a
preset layered under a JSON file of overrides."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional


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


def preset_and_file(presets: Dict[str, dict], preset: Optional[str] = None,
                    config_file=None) -> Dict[str, Any]:
    """The settings of a named preset updated by a JSON config file (one object), as a dict;
    an unknown preset, a missing file or one that is not a JSON object is a clear error."""
    d: Dict[str, Any] = {}
    if preset is not None:
        if preset not in presets:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(presets))}")
        d.update(presets[preset])
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            loaded = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config file holds one JSON object of settings")
        d.update(loaded)
    return d


def one_line_errors(parser):
    """Make an argparse (sub)parser report bad arguments as one line and exit code 2 (no usage
    block), the way every other bad input of dmat is refused; returns the parser."""
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")
    return parser
