"""The machinery of the exercises: a registry, `check` and `show_solution`.

An exercise is a function the student writes in a few lines (a Heun step, the denoising loss, a
PGD step, ...). Its `verify` runs the student's function on a handful of fixed inputs and compares
it with the exact answer or with dmat's own implementation, and returns None when it agrees or a
message that says what is wrong: the wrong shape, the wrong values (with the worst error), an
exception, or, when the answer matches a known mistake, a hint about that mistake. `check` prints
that message and returns True or False; it never raises for the student's code, so a notebook with
unwritten exercises still runs top to bottom. The solutions live in
:mod:`dmat_core.exercises.solutions`, out of sight until `show_solution` prints one.
"""
from __future__ import annotations

import inspect
import traceback
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

Tensor = torch.Tensor
NOT_WRITTEN = "not written yet"


@dataclass(frozen=True)
class Exercise:
    """One exercise: its function's `name`, the `notebook` (two digits) it belongs to, a one-line
    `task`, and `verify(fn) -> None | str` (None: correct; else what is wrong)."""
    name: str
    notebook: str
    task: str
    verify: Callable[[Callable], Optional[str]] = field(repr=False)


REGISTRY: dict[str, Exercise] = {}


def register(name: str, notebook: str, task: str):
    """Decorator: register `verify` as the check of exercise `name`."""
    def wrap(verify):
        if name in REGISTRY:
            raise ValueError(f"exercise {name!r} registered twice")
        REGISTRY[name] = Exercise(name, notebook, task, verify)
        return verify
    return wrap


def _exercise(name: str) -> Exercise:
    if name not in REGISTRY:
        raise ValueError(f"unknown exercise {name!r}; the exercises are {sorted(REGISTRY)}")
    return REGISTRY[name]


def exercises(notebook: str | None = None) -> list[Exercise]:
    """Every exercise, or those of one notebook ("01" ... "08"), in notebook order. (Importing the
    package registers them all: its ``__init__`` imports the modules that hold the checks.)"""
    return sorted((e for e in REGISTRY.values() if notebook is None or e.notebook == notebook),
                  key=lambda e: e.notebook)


def run_check(name: str, fn: Callable) -> tuple[bool, str]:
    """(correct, message) of the student's `fn` for exercise `name`."""
    ex = _exercise(name)
    if not callable(fn):
        return False, f"{name}: expected a function, got {type(fn).__name__}"
    try:
        problem = ex.verify(fn)
    except NotImplementedError:
        return False, f"{name}: {NOT_WRITTEN}: replace `raise NotImplementedError` with your code."
    except Exception as e:                                  # the student's code raised: say where
        where = traceback.extract_tb(e.__traceback__)[-1]
        return False, (f"{name}: your function raised {type(e).__name__}: {e} (line {where.lineno}: "
                       f"{(where.line or '').strip()})")
    if problem is None:
        return True, f"{name}: correct."
    return False, f"{name}: {problem}"


def check(name: str, fn: Callable) -> bool:
    """Check the student's function `fn` for exercise `name`: prints what is right or wrong,
    returns True when it is correct. Never raises for a mistake in `fn`."""
    ok, message = run_check(name, fn)
    print(("✓ " if ok else "✗ ") + message)
    return ok


def solution(name: str) -> Callable:
    """The reference solution of exercise `name` (a function of :mod:`dmat_core.exercises.solutions`)."""
    _exercise(name)
    from . import solutions
    return getattr(solutions, name)


def show_solution(name: str) -> None:
    """Print the source of the solution of exercise `name`."""
    print(inspect.getsource(solution(name)))


# ----------------------------------------------------------------------- comparing answers
def compare(got, want: Tensor, what: str = "the result", rtol: float = 1e-4, atol: float = 1e-6,
            mistakes: dict | None = None) -> Optional[str]:
    """None when `got` is a tensor of `want`'s shape and values (allclose); else what differs.
    `mistakes` maps a hint to the tensor a known mistake would give: a wrong answer that matches
    one gets its hint."""
    if not isinstance(got, Tensor):
        return f"{what} should be a torch.Tensor, got {type(got).__name__}"
    if tuple(got.shape) != tuple(want.shape):
        return f"{what} has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    got64, want64 = got.detach().double().cpu(), want.detach().double().cpu()
    if not torch.isfinite(got64).all():
        return f"{what} has NaN or infinite entries"
    if torch.allclose(got64, want64, rtol=rtol, atol=atol):
        return None
    for hint, wrong in (mistakes or {}).items():
        wrong64 = wrong.detach().double().cpu()
        if wrong64.shape == got64.shape and torch.allclose(got64, wrong64, rtol=rtol, atol=atol):
            return f"{what} is wrong: {hint}"
    err = (got64 - want64).abs().max().item()
    return f"{what} is wrong: largest difference from the right answer {err:.3g} (largest entry {want64.abs().max().item():.3g})"


def compare_scalar(got, want: float, what: str, rtol: float = 1e-4, atol: float = 1e-7,
                   mistakes: dict | None = None) -> Optional[str]:
    """Like :func:`compare` for a number (a Python float or a 0-d tensor)."""
    if isinstance(got, Tensor):
        if got.numel() != 1:
            return f"{what} should be a single number, got a tensor of shape {tuple(got.shape)}"
        got = got.item()
    if not isinstance(got, (int, float)):
        return f"{what} should be a number, got {type(got).__name__}"
    return compare(torch.tensor(float(got)), torch.tensor(float(want)), what, rtol, atol,
                   {k: torch.tensor(float(v)) for k, v in (mistakes or {}).items()})
