"""What every dmat notebook does first: pick the size, the device and the data folder.

    MODE = None                              # the notebook's parameter cell
    QUICK, DEVICE = setup(MODE)              # a CPU notebook
    QUICK, DEVICE = setup(MODE, full_cost="trains a 7M-parameter U-Net: days on a CPU")
    SIZE, DEVICE = setup_size(MODE, full_cost=..., cpu_size="digits")   # the image notebooks

The size is a choice, `mode`:

- `"quick"`: small sizes on the CPU (seconds to a few minutes, small data made on the spot; its
  numbers illustrate the code path, they mean nothing). `DMAT_QUICK=1` forces it whatever `mode`
  says: the test suite runs every notebook that way.
- `"digits"` (the image notebooks 05-08 only): real images on a CPU, scikit-learn's handwritten
  digits (no download), sized to run in minutes and to show the effects.
- `"full"`: the sizes the notebook is written for, on the GPU when there is one.
- `None` (the default): quick under `DMAT_QUICK=1`; else full on a GPU; on a CPU the largest size
  that fits: full for the toy notebooks, `cpu_size` ("digits") for the image notebooks, and quick
  with a warning for a GPU-sized notebook without one. Full mode of a GPU-sized notebook on a CPU
  happens only when asked for by name (`mode="full"`), with a warning of its cost.

`DMAT_MODE=quick|digits|full` chooses the size from the environment (over `MODE`; for the benchmarks
and the tests); a notebook without that size keeps its own choice and says so.

`DMAT_DATA` names the data folder (default `./data`); notebooks keep their runs beside it.
"""
from __future__ import annotations

import os
import platform

import torch

MODES = ("quick", "digits", "full")


def quick_mode() -> bool:
    """True when DMAT_QUICK is set to 1/true/yes (forces quick mode)."""
    return os.environ.get("DMAT_QUICK", "").strip().lower() in ("1", "true", "yes")


def env_mode() -> str | None:
    """The size the environment asks for: "quick" under DMAT_QUICK=1, else DMAT_MODE if set."""
    if quick_mode():
        return "quick"
    value = os.environ.get("DMAT_MODE", "").strip().lower()
    if value and value not in MODES:
        raise ValueError(f"DMAT_MODE must be one of {', '.join(MODES)}, not {value!r}")
    return value or None


def choose_mode(mode: str | None = None, full_cost: str | None = None,
                gpu: bool | None = None, cpu_size: str | None = None) -> tuple[str, str]:
    """The size a notebook runs at, and why: returns (mode, message), message "" when nothing
    needs saying. `full_cost` marks a GPU-sized notebook: what full mode does and costs, a verb
    phrase ("trains ...: about an hour on one GPU, days on a CPU"). `cpu_size`: the notebook's
    size for a CPU ("digits" in the image notebooks), the default there. `gpu` defaults to
    torch.cuda.is_available()."""
    sizes = ("quick", "full") + ((cpu_size,) if cpu_size else ())
    if cpu_size is not None and cpu_size not in MODES:
        raise ValueError(f"cpu_size must be one of {', '.join(MODES)}, not {cpu_size!r}")
    if mode is not None and mode not in sizes:
        raise ValueError(f"mode must be None or one of {', '.join(repr(m) for m in sizes)} in this notebook, "
                         f"not {mode!r}")
    gpu = torch.cuda.is_available() if gpu is None else gpu
    forced = env_mode()
    if forced == "quick":
        note = f"DMAT_QUICK=1 overrides MODE = {mode!r}: unset it to run that size." \
            if mode not in (None, "quick") else ""
        return "quick", note
    if forced is not None:
        if forced in sizes:
            note = f"DMAT_MODE={forced} overrides MODE = {mode!r}." if mode not in (None, forced) else ""
            return forced, note
        chosen, message = _choose(mode, full_cost, gpu, cpu_size)
        return chosen, (f"DMAT_MODE={forced}: this notebook has no such size; it runs at its own choice, "
                        f"{chosen}." + (f" {message}" if message else ""))
    return _choose(mode, full_cost, gpu, cpu_size)


def _choose(mode, full_cost, gpu, cpu_size) -> tuple[str, str]:
    """:func:`choose_mode` without the environment."""
    if mode is not None:
        if mode == "full" and full_cost and not gpu:
            return "full", f"WARNING: MODE = 'full' on a CPU, as asked. Full mode {full_cost}."
        return mode, ""
    if cpu_size and not gpu:
        return cpu_size, (f"No GPU: this notebook runs at its {cpu_size!r} size (real images, minutes on a "
                          f"CPU). Full mode {full_cost or 'needs a GPU'}. MODE = 'quick' in the parameter "
                          f"cell runs the smallest size (seconds; its numbers mean nothing).")
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
    size, device = setup_size(mode, full_cost=full_cost, quick_threads=quick_threads, seed=seed, quiet=quiet)
    return size == "quick", device


def setup_size(mode: str | None = None, *, full_cost: str | None = None, cpu_size: str | None = None,
               quick_threads: int | None = None, seed: int = 0, quiet: bool = False):
    """:func:`setup` for a notebook with more than two sizes: returns (size, device), size one of
    "quick", `cpu_size` (e.g. "digits": the CPU default) and "full"."""
    mode, message = choose_mode(mode, full_cost, cpu_size=cpu_size)
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
    return mode, device
