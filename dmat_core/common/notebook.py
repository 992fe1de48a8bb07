"""What every dmat notebook does first: pick the size, the device and the data folder.

    MODE = None                              # the notebook's parameter cell
    QUICK, DEVICE = setup(MODE)              # a CPU notebook
    QUICK, DEVICE = setup(MODE, full_cost="trains a 7M-parameter U-Net: days on a CPU")

The size is a choice, `mode`:

- `"quick"`: small sizes on the CPU (seconds to a few minutes, small data made on the spot; its
  numbers illustrate the code path, they mean nothing). `DMAT_QUICK=1` forces it whatever `mode`
  says: the test suite runs every notebook that way.
- `"full"`: the sizes the notebook is written for, on the GPU when there is one.
- `None` (the default): quick under `DMAT_QUICK=1`; else full, except where a notebook is
  GPU-sized (it passes `full_cost`) and no GPU is present: then setup prints a warning with that
  cost and runs quick. Full mode on a CPU happens only when asked for by name (`mode="full"`).

`DMAT_DATA` names the data folder (default `./data`); notebooks keep their runs beside it.
"""
from __future__ import annotations

import os
import platform

import torch

MODES = ("quick", "full")


def quick_mode() -> bool:
    """True when DMAT_QUICK is set to 1/true/yes (forces quick mode)."""
    return os.environ.get("DMAT_QUICK", "").strip().lower() in ("1", "true", "yes")


def choose_mode(mode: str | None = None, full_cost: str | None = None,
                gpu: bool | None = None) -> tuple[str, str]:
    """The size a notebook runs at, and why: returns (mode, message), message "" when nothing
    needs saying. `full_cost` marks a GPU-sized notebook: what full mode does and costs, a verb
    phrase ("trains ...: about an hour on one GPU, days on a CPU"). `gpu` defaults to
    torch.cuda.is_available()."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be None, 'quick' or 'full', not {mode!r}")
    gpu = torch.cuda.is_available() if gpu is None else gpu
    if quick_mode():
        note = "DMAT_QUICK=1 overrides MODE = 'full': unset it to run full mode." if mode == "full" else ""
        return "quick", note
    if mode is not None:
        if mode == "full" and full_cost and not gpu:
            return "full", f"WARNING: MODE = 'full' on a CPU, as asked. Full mode {full_cost}."
        return mode, ""
    if full_cost and not gpu:
        return "quick", (f"WARNING: no GPU, so this notebook runs in QUICK mode (small sizes; its "
                         f"numbers illustrate the code, they mean nothing). Full mode {full_cost}. "
                         f"To run it here anyway, set MODE = 'full' in the parameter cell; or use a "
                         f"GPU (Colab: Runtime > Change runtime type).")
    return "full", ""


def pick_device(quick: bool | None = None) -> torch.device:
    """CUDA when available and not in quick mode (default: DMAT_QUICK), else CPU."""
    quick = quick_mode() if quick is None else quick
    if torch.cuda.is_available() and not quick:
        return torch.device("cuda")
    return torch.device("cpu")


def data_dir() -> str:
    """The data folder: $DMAT_DATA, else ./data."""
    return os.environ.get("DMAT_DATA", "data")


def setup(mode: str | None = None, *, full_cost: str | None = None, quick_threads: int | None = None,
          seed: int = 0, quiet: bool = False):
    """Choose the size (:func:`choose_mode`) and the device, seed torch, print them; returns
    (quick, device). `quick_threads`: CPU threads in quick mode (tiny models gain little from a
    second thread and lose much on a busy shared CPU)."""
    mode, message = choose_mode(mode, full_cost)
    quick = mode == "quick"
    if quick and quick_threads:
        torch.set_num_threads(quick_threads)
    device = pick_device(quick)
    torch.manual_seed(seed)
    if not quiet:
        if message:
            print(message)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        size = ("quick (DMAT_QUICK=1)" if quick and quick_mode() else
                "quick (no GPU)" if quick and message else mode)
        print(f"dmat | size: {size} | device: {device} ({name}) "
              f"| torch {torch.__version__} | threads {torch.get_num_threads()}")
    return quick, device
