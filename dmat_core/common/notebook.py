"""What every dmat notebook does first: pick the size, the device and the data folder.

    QUICK, DEVICE = setup()

`DMAT_QUICK=1` selects the quick size (CPU, seconds to a few minutes, small data made on
the spot): the test suite runs every notebook that way. Otherwise the full size runs on the
GPU when there is one. `DMAT_DATA` names the data folder (default `./data`).
"""
from __future__ import annotations

import os
import platform

import torch


def quick_mode() -> bool:
    """True when DMAT_QUICK is set to 1/true/yes."""
    return os.environ.get("DMAT_QUICK", "").strip().lower() in ("1", "true", "yes")


def pick_device() -> torch.device:
    """CUDA when available (and not in quick mode), else CPU."""
    if torch.cuda.is_available() and not quick_mode():
        return torch.device("cuda")
    return torch.device("cpu")


def data_dir() -> str:
    """The data folder: $DMAT_DATA, else ./data."""
    return os.environ.get("DMAT_DATA", "data")


def setup(seed: int = 0, quiet: bool = False):
    """Seed torch, choose size and device, print them; returns (quick, device)."""
    torch.manual_seed(seed)
    quick, device = quick_mode(), pick_device()
    if not quiet:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        print(f"dmat | size: {'quick (DMAT_QUICK=1)' if quick else 'full'} | device: {device} ({name}) "
              f"| torch {torch.__version__} | threads {torch.get_num_threads()}")
    return quick, device
