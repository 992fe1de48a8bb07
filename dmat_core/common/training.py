"""The training skeleton that every trainer of dmat runs: the robust classifier
(:class:`~dmat_core.robust.train.ATTrainer`), the image diffusion model
(:class:`~dmat_core.images.dm_train.DMTrainer`) and the toy denoiser
(:class:`~dmat_core.toys.train.ToyTrainer`).

A trainer subclasses :class:`Trainer` and supplies its own step; the skeleton does the rest:

    for state in trainer.run():          # a generator: one dict of floats per optimiser step
        ...                              # (log rows, validation, checkpoints happen in between)

- :meth:`Trainer.run` loops ``step()`` until ``total_steps``, logs every ``log_every`` steps,
  calls ``after_step`` (validation), checkpoints every ``checkpoint_every`` steps and at the
  end (``save``), shows a progress bar, and ends with ``finish`` (final weights, result file);
- :meth:`Trainer.autocast` (mixed precision), :meth:`Trainer.reduce` (step metrics averaged
  over DDP ranks in one synchronisation) and :meth:`Trainer.check_finite` (a NaN or infinite
  loss stops the run before the optimiser moves: :class:`NonFiniteLossError`);
- :func:`prepare_out_dir` and :func:`check_resumable`: one meaning of "start over" for every
  trainer. A trainer given an ``out_dir`` that holds a checkpoint *resumes* from it when the
  settings agree, refuses with :class:`RunMismatchError` when they do not, and ``fresh=True``
  (``--fresh`` on the command line) removes the earlier run's files and starts at step 0.

The EMA of the weights is :class:`~dmat_core.common.train_utils.EMA` for all three.
"""
from __future__ import annotations

import contextlib
import math
import shutil
from pathlib import Path
from typing import Iterable, Iterator, Optional

import torch
import torch.distributed as dist

from .train_utils import all_reduce_sum

__all__ = ["Trainer", "NonFiniteLossError", "RunMismatchError", "prepare_out_dir", "check_resumable",
           "check_run_folder"]


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite."""


class RunMismatchError(ValueError):
    """The output folder holds a checkpoint of another kind of run, or of other settings."""


def prepare_out_dir(out_dir: Path, *, fresh: bool, run_files: Iterable[str] = (),
                    run_dirs: Iterable[str] = (), rank: int = 0, world_size: int = 1) -> None:
    """Before a trainer reads ``out_dir``: remove the temporary files of writes a kill interrupted,
    and with ``fresh`` the earlier run's ``run_files`` and ``run_dirs`` (rank 0); then every rank
    waits for that (a barrier under DDP)."""
    out_dir = Path(out_dir)
    if rank == 0 and out_dir.is_dir():
        for stale in out_dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        if fresh:
            for name in run_files:
                (out_dir / name).unlink(missing_ok=True)
            for name in run_dirs:
                shutil.rmtree(out_dir / name, ignore_errors=True)
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()


def check_resumable(ck, where, *, format: str, what: str, saved: dict, now: dict,
                    may_change: Iterable[str], kind: Optional[str] = None) -> None:
    """Refuse to resume from checkpoint ``ck`` (read from ``where``) unless it has the ``format``
    (and ``kind``) of this trainer and its settings ``saved`` agree with ``now`` on every key but
    ``may_change`` (paths, logging, device, precision): :class:`RunMismatchError` naming each
    difference."""
    if not isinstance(ck, dict) or ck.get("format") != format or (kind is not None and ck.get("kind") != kind):
        found = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
        raise RunMismatchError(f"{where} is not a dmat {what} checkpoint (format {found!r}): use another "
                               "output folder, or start over with fresh=True (--fresh)")
    may_change = set(may_change)
    diff = [k for k in now if k not in may_change and saved.get(k) != now[k]]
    if diff:
        raise RunMismatchError(f"{where} belongs to a run with other settings: " + "; ".join(
            f"{k}: {saved.get(k)!r} there, {now[k]!r} now" for k in diff)
            + ". Resume with the same settings, use another output folder, or start over with "
            "fresh=True (--fresh).")


def check_run_folder(out_dir, config, *, what: str, may_change: Iterable[str], overwrite: bool = False,
                     run_files: Iterable[str] = ()) -> Optional[str]:
    """Before any work (reads only): may a run of ``config`` (a :class:`~dmat_core.common.settings.Settings`)
    write into ``out_dir``? The folder must be a writable folder or absent
    (:func:`~dmat_core.common.outputs.check_out_dir`); its ``config.json``, when there, must be a
    config of this kind (checked against the schema) with the same settings except ``may_change``;
    files of a run (``run_files``) without a ``config.json`` are another run's. Refused with
    :class:`RunMismatchError` naming the differences, unless ``overwrite`` (``--overwrite``: that
    run's files are removed when the trainer starts). Returns "resume", "new" or "overwrite"."""
    from .outputs import check_out_dir
    out = check_out_dir(out_dir)
    if not out.is_dir():
        return "new"
    found = [f for f in run_files if (out / f).exists()]
    saved_file = out / "config.json"
    if overwrite:
        return "overwrite" if found or saved_file.exists() else "new"
    advice = "use another --out, or --overwrite to replace that run"
    if saved_file.exists():
        try:
            saved = type(config).from_file(saved_file, "config").to_dict()
        except ValueError as e:
            reason = str(e).removeprefix(f"{saved_file}: ")
            raise RunMismatchError(f"{saved_file} is not the config of a {what} run ({reason}); {advice}") from None
        now, may_change = config.to_dict(), set(may_change)
        diff = [k for k in now if k not in may_change and saved.get(k) != now[k]]
        if diff:
            raise RunMismatchError(f"{out} holds a {what} run with other settings: " + "; ".join(
                f"{k}: {saved.get(k)!r} there, {now[k]!r} now" for k in diff)
                + f". Resume with the same settings, {advice}")
        return "resume"
    if found and "checkpoint.pt" not in found:
        raise RunMismatchError(f"{out} holds {', '.join(found)} but no config.json: files of another run; {advice}")
    return "resume" if found else "new"


class Trainer:
    """The loop every dmat trainer runs; a subclass provides the parts.

    Attributes a subclass sets: ``step_count`` (steps done), ``total_steps``, ``checkpoint_every``
    (0: only at the end), ``log_every`` (0: never), ``device``, ``amp_dtype`` (None: full
    precision), ``world_size``, ``progress`` (show a bar) and ``desc`` (its label).

    Methods it provides: ``step() -> dict`` (one optimiser step, its metrics as floats; must call
    :meth:`check_finite` before the optimiser moves) and ``save()`` (the full state, atomically).
    It may override ``start()``, ``write_log(state)``, ``after_step(state)`` (e.g. validation), ``postfix(state)``
    (what the bar shows) and ``finish()`` (after the last step).
    """

    step_count: int = 0
    total_steps: int = 0
    checkpoint_every: int = 0
    log_every: int = 0
    amp_dtype: Optional[torch.dtype] = None
    world_size: int = 1
    progress: bool = False
    desc: str = "train"
    leave_bar: bool = True

    # ------------------------------------------------------------------ the parts
    def step(self) -> dict:
        raise NotImplementedError

    def save(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Called once when :meth:`run` begins (before the first step it runs)."""

    def write_log(self, state: dict) -> None:
        """Called every ``log_every`` steps and after the last one."""

    def after_step(self, state: dict) -> None:
        """Called after every step, before the checkpoint (validation goes here)."""

    def postfix(self, state: dict) -> Optional[dict]:
        return {"loss": f"{state['loss']:.3f}"} if "loss" in state else None

    def finish(self) -> None:
        """Called once after the last step."""

    # ------------------------------------------------------------------ shared services
    def autocast(self):
        """Mixed precision on this trainer's device at ``amp_dtype`` (a no-op without one)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def reduce(self, parts: dict) -> dict:
        """Detached scalar tensors -> floats averaged over the DDP ranks (one synchronisation)."""
        keys = sorted(parts)
        values = torch.stack([parts[k].float().to(self.device) for k in keys]).tolist()
        return dict(zip(keys, [v / self.world_size for v in all_reduce_sum(values, self.device)]))

    def check_finite(self, metrics: dict, lr: float, advice: str, checkpoint=None) -> None:
        """Stop with :class:`NonFiniteLossError` when the step's loss is NaN or infinite (nothing
        of the step has been applied yet; the last checkpoint holds the last good state)."""
        if not math.isfinite(metrics["loss"]):
            last = f" The last checkpoint ({checkpoint}) holds the last good state." if checkpoint else ""
            raise NonFiniteLossError(
                f"the training loss is {metrics['loss']} at step {self.step_count + 1} (lr {lr:.3g}); nothing "
                f"was written for this step.{last} {advice}")

    # ------------------------------------------------------------------ the loop
    def due(self, every: int) -> bool:
        """Whether the step just done is a multiple of ``every`` (> 0) or the last one."""
        t = self.step_count
        return bool(every) and t % every == 0 or t == self.total_steps

    def run(self) -> Iterator[dict]:
        """Train to ``total_steps``, yielding each step's metrics (the caller may stop early: the
        last checkpoint is then where a new run resumes)."""
        from tqdm.auto import tqdm
        bar = tqdm(total=self.total_steps, initial=self.step_count, desc=self.desc, disable=not self.progress,
                   dynamic_ncols=True, leave=self.leave_bar)
        self.start()
        try:
            while self.step_count < self.total_steps:
                state = self.step()
                if self.due(self.log_every):
                    self.write_log(state)
                self.after_step(state)
                if self.due(self.checkpoint_every):
                    self.save()
                bar.update(1)
                postfix = self.postfix(state)
                if postfix:
                    bar.set_postfix(postfix)
                yield state
        finally:
            bar.close()
        self.finish()
