"""Layer 6 -- exercises for the notebooks: the student writes the central piece of an algorithm in a
few lines (a Heun step, the denoising loss, a PGD step, the TRADES KL, ...), and a check compares
it with the exact answer or with dmat's own implementation and says what is wrong. ``core`` (the
registry, ``check``, ``show_solution``) < ``diffusion`` (the diffusion notebooks' checks) and
``robust`` (the robust-classifier and image notebooks' checks), whose checks it runs; ``solutions`` holds the solutions, out of sight in the notebooks.

    from dmat_core.exercises import check, show_solution
    check("heun_step", heun_step)        # prints what is right or wrong; True when correct
"""
from . import diffusion, robust  # noqa: F401  (importing them registers every exercise)
from .core import Exercise, check, exercises, run_check, show_solution, solution

__all__ = ["Exercise", "check", "exercises", "run_check", "show_solution", "solution"]
