"""Time to quality on 2D ring8: dmat's toy trainer against smalldiffusion, in one process.

Both libraries train a diffusion model on the *same* training set (ring8, 20000 points, seed 0)
with the *same* minibatch size and a network of the same size (about 135k parameters), each with
its own training loop, loss, noise schedule, optimiser and default sampler:

  dmat            `train_toy` (EDM preconditioning, log-normal sigma, Adam 2e-3 with warm-up and
                  cosine decay over its default 3000 steps, EMA 0.999) on `ToyDenoiserMLP`
                  (width 128, depth 3); sampler: EDM Heun, its default 18 steps (35 NFE), from
                  the EMA weights.
  smalldiffusion  `training_loop` (eps prediction, sigma uniform over `ScheduleLogLinear(200,
                  0.005, 10)`, AdamW 1e-3) on `TimeInputMLP(hidden_dims=(16,128,256,256,128,16))`,
                  a DataLoader with shuffling; sampler: `samples(model, schedule.sample_sigmas(20),
                  gam=2)`, the 20-step accelerated sampler of its README toy example (20 NFE).

Every `--eval-every` steps each model draws `--n-eval` samples with its sampler and is measured
exactly against the true density: sliced W2 over its noise floor (two true sample sets of the
same size score 1) and NLL under the true density minus the true entropy. A model has reached
quality at the first evaluation where SW2 <= 2x the floor AND |NLL - H| <= 0.2 nats.

Time to quality = steps to the target x milliseconds per training step. The step cost is measured
apart, on fresh copies of both trainers advanced in alternating short rounds, keeping each one's
fastest round (other processes on a shared machine only ever add time, and alternating spreads
their load over both alike); the wall-clock training seconds of the race itself (evaluation paused
out) are reported beside it, but they drift with the machine's load over a long run. Each library
runs on one thread.

    .venv/bin/python bench/toy_dm.py                       # appends to bench/RESULTS.md
    .venv/bin/python bench/toy_dm.py --seeds 3 --no-write

Needs `pip install smalldiffusion` (the `bench` extra).
"""
from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")     # smalldiffusion's loop has its own bar: keep the log readable

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from dmat_core.diffusion.samplers import latent_noise, run
from dmat_core.toys.metrics import sample_metrics
from dmat_core.toys.mixtures import make_distribution
from dmat_core.toys.nets import data_std
from dmat_core.toys.train import make_toy_model, train_toy

SW2_FACTOR, NLL_TOL = 2.0, 0.2
SD_HIDDEN = (16, 128, 256, 256, 128, 16)        # ~136k parameters, as dmat's width 128 depth 3


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


class DmatArm:
    """dmat: train_toy with its defaults; samples with Heun-18 from the EMA."""
    name, sampler = "dmat", "EDM Heun, 18 steps (35 NFE), EMA weights"

    def __init__(self, x_train, batch, steps, seed):
        self.model = make_toy_model(2, data_std(x_train), seed)
        self.it = train_toy(self.model, x_train, steps=steps, batch=batch, seed=seed)
        self.state, self.exhausted = None, False

    def train(self, n):
        for _ in range(n):
            try:
                self.state = next(self.it)
            except StopIteration:
                self.exhausted = True
                return

    @torch.no_grad()
    def sample(self, n, seed, mult=1):
        return run(self.state["ema"], latent_noise(n, 2, torch.Generator().manual_seed(seed)), "heun", 18 * mult)


class SmallDiffusionArm:
    """smalldiffusion: its README toy recipe (training_loop, ScheduleLogLinear, samples gam=2)."""
    name, sampler = "smalldiffusion", "samples(gam=2), 20 steps (20 NFE) on sample_sigmas(20)"

    def __init__(self, x_train, batch, steps, seed):
        from accelerate import Accelerator
        from smalldiffusion import ScheduleLogLinear, TimeInputMLP, training_loop
        from torch.utils.data import DataLoader
        torch.manual_seed(seed)
        self.model = TimeInputMLP(dim=2, hidden_dims=SD_HIDDEN)
        self.schedule = ScheduleLogLinear(N=200, sigma_min=0.005, sigma_max=10)
        loader = DataLoader(x_train.float(), batch_size=batch, shuffle=True)
        epochs = math.ceil(steps * batch / len(x_train)) + 1
        self.accelerator = Accelerator(cpu=True)
        self.it = training_loop(loader, self.model, self.schedule, self.accelerator, epochs=epochs)
        self.exhausted = False

    def train(self, n):
        # training_loop yields each step's state after the loss, before backward + optimiser step;
        # resuming it runs them. So n `next` calls = n forward passes and n - 1 updates, plus the
        # update of the previous chunk's last step: n updates per chunk after the first.
        for _ in range(n):
            try:
                next(self.it)
            except StopIteration:
                self.exhausted = True
                return

    @torch.no_grad()
    def sample(self, n, seed, mult=1):
        from smalldiffusion import samples
        torch.manual_seed(seed)
        *_, x0 = samples(self.model, self.schedule.sample_sigmas(20 * mult), gam=2, batchsize=n,
                         accelerator=self.accelerator)
        return x0


def race(dist, x_train, args, seed):
    """Alternate chunks of training of both arms; evaluate each after every chunk."""
    arms = [DmatArm(x_train, args.batch, args.dmat_steps, seed),
            SmallDiffusionArm(x_train, args.batch, args.max_steps, seed)]
    log = {a.name: {"params": n_params(a.model), "sampler": a.sampler, "evals": [],
                    "train_seconds": 0.0, "steps": 0, "reached": None} for a in arms}
    active = list(arms)
    while active:
        for a in list(active):
            rec = log[a.name]
            t0 = time.perf_counter()
            a.train(args.eval_every)
            rec["train_seconds"] += time.perf_counter() - t0
            if a.exhausted:
                active.remove(a)
                continue
            rec["steps"] += args.eval_every
            x = a.sample(args.n_eval, 1000 + seed)
            bad = ~torch.isfinite(x).all(1)
            m = sample_metrics(dist, x[~bad].double(), mmd=False) if (~bad).sum() > 1 else None
            ev = {"step": rec["steps"], "train_seconds": rec["train_seconds"],
                  "sw2_ratio": m["sw2_ratio"] if m else math.inf,
                  "nll_gap": m["nll_gap"] if m else math.inf,
                  "off_mode_mass": m["off_mode_mass"] if m else 1.0}
            rec["evals"].append(ev)
            print(f"  seed {seed} {a.name:14s} step {ev['step']:5d}  train {ev['train_seconds']:6.1f} s  "
                  f"SW2/floor {ev['sw2_ratio']:5.2f}  NLL-H {ev['nll_gap']:+7.3f}  "
                  f"off-mode {ev['off_mode_mass']:.3f}", flush=True)
            if ev["sw2_ratio"] <= SW2_FACTOR and abs(ev["nll_gap"]) <= NLL_TOL:
                rec["reached"] = ev
                active.remove(a)
            elif rec["steps"] >= args.max_steps or rec["train_seconds"] >= args.max_seconds:
                active.remove(a)
    for a in arms:
        rec = log[a.name]
        rec["race_ms_per_step"] = 1000 * rec["train_seconds"] / max(rec["steps"], 1)
        rec["best_nll_gap"] = min((abs(e["nll_gap"]) for e in rec["evals"]), default=math.inf)
        # diagnostic (not part of the ratio): the last model with 5x its sampler's steps -- is the
        # sampler or the model what stands between it and the target?
        m = sample_metrics(dist, a.sample(args.n_eval, 1000 + seed, mult=5).double(), mmd=False)
        rec["last_model_5x_steps"] = {k: m[k] for k in ("sw2_ratio", "nll_gap", "off_mode_mass")}
    return log


def step_cost(x_train, args, seed, rounds: int = 7, steps: int = 40) -> dict:
    """Milliseconds per training step of each library: fresh trainers, alternating rounds of
    `steps` steps after a warm-up, the fastest round of each."""
    arms = [DmatArm(x_train, args.batch, args.dmat_steps, seed),
            SmallDiffusionArm(x_train, args.batch, args.max_steps, seed)]
    for a in arms:
        a.train(10)
    best = {a.name: math.inf for a in arms}
    for _ in range(rounds):
        for a in arms:
            t0 = time.perf_counter()
            a.train(steps)
            best[a.name] = min(best[a.name], 1000 * (time.perf_counter() - t0) / steps)
    return best


def seconds_to_quality(rec) -> tuple[float, bool]:
    """(steps to target x ms per step / 1000, reached); where the target was never reached, the
    steps run instead (a lower bound)."""
    steps = rec["reached"]["step"] if rec["reached"] else rec["steps"]
    return steps * rec["ms_per_step"] / 1000, rec["reached"] is not None


def race_seconds(rec) -> tuple[float, bool]:
    """Wall-clock training seconds of the race to the target (or to giving up)."""
    return (rec["reached"]["train_seconds"], True) if rec["reached"] else (rec["train_seconds"], False)


def report(logs, args, dist) -> tuple[str, str]:
    H = dist.entropy()[0]
    t = {n: [seconds_to_quality(lg[n]) for lg in logs] for n in ("dmat", "smalldiffusion")}
    med = {n: statistics.median(s for s, _ in v) for n, v in t.items()}
    all_reached = {n: all(r for _, r in v) for n, v in t.items()}
    ratio = med["smalldiffusion"] / med["dmat"]
    if all_reached["dmat"] and all_reached["smalldiffusion"]:
        ratio_txt = f"{ratio:.1f}x"
    elif all_reached["dmat"]:
        ratio_txt = (f"{ratio:.1f}x (a lower bound: smalldiffusion did not reach the target in "
                     f"{args.max_steps} steps, so its time is at least that)")
    elif all_reached["smalldiffusion"]:
        ratio_txt = f"{ratio:.1f}x (an upper bound: dmat did not reach the target within its budget)"
    else:
        ratio_txt = "n/a (neither reached the target)"
    first = logs[0]
    lines = [
        "## Toy diffusion: time to quality on ring8 (bench/toy_dm.py)", "",
        f"Date 2026-11-24; device 2-core CPU (this machine), one thread per library, torch {torch.__version__}; "
        f"{len(logs)} seed(s), median. Same training set (ring8, {args.n_train} points), batch {args.batch}; "
        f"target: SW2 <= {SW2_FACTOR:g}x its noise floor AND |NLL - H| <= {NLL_TOL} nats "
        f"(H = {H:.3f} nats), {args.n_eval} samples, checked every {args.eval_every} steps. Seconds to "
        "target = steps to target x ms per training step (measured apart: fresh trainers, alternating "
        "rounds, fastest round); the race's own wall-clock training seconds drift with the load.", "",
        "| library | parameters | sampler | steps to target | ms/step | seconds to target (steps x ms/step) "
        "| race wall seconds | SW2/floor, NLL-H at target | best abs(NLL-H) seen |",
        "|---|---|---|---|---|---|---|---|---|"]
    for n in ("dmat", "smalldiffusion"):
        recs = [lg[n] for lg in logs]
        steps = [r["reached"]["step"] if r["reached"] else f">{r['steps']}" for r in recs]
        secs = [f"{s:.1f}" if ok else f">{s:.1f}" for s, ok in t[n]]
        wall = [f"{s:.1f}" if ok else f">{s:.1f}" for s, ok in map(race_seconds, recs)]
        at = [f"{r['reached']['sw2_ratio']:.2f}, {r['reached']['nll_gap']:+.3f}" if r["reached"]
              else f"not reached (last: {r['evals'][-1]['sw2_ratio']:.2f}, {r['evals'][-1]['nll_gap']:+.3f})"
              for r in recs]
        ms = " / ".join(f"{r['ms_per_step']:.1f}" for r in recs)
        best = " / ".join(f"{r['best_nll_gap']:.3f}" for r in recs)
        lines.append(f"| {n} | {first[n]['params']:,} | {first[n]['sampler']} | {' / '.join(map(str, steps))} "
                     f"| {ms} | {' / '.join(secs)} | {' / '.join(wall)} | {' / '.join(at)} | {best} |")
    diag = "; ".join(f"{n}: " + " / ".join(f"SW2/floor {lg[n]['last_model_5x_steps']['sw2_ratio']:.2f}, NLL-H "
                                           f"{lg[n]['last_model_5x_steps']['nll_gap']:+.3f}" for lg in logs)
                     for n in ("dmat", "smalldiffusion"))
    lines += ["", "Diagnostic, not part of the ratio: each library's last model sampled with 5x its sampler's "
              f"steps (Heun-90, smalldiffusion 100 steps gam=2): {diag}.", "",
              f"Command: `.venv/bin/python bench/toy_dm.py --seeds {args.seeds}` (`--json FILE` keeps every "
              "evaluation).", "", f"smalldiffusion ratio: {ratio_txt}", ""]
    return "\n".join(lines), ratio_txt


def append_section(path: Path, section: str) -> None:
    """Replace this benchmark's section of RESULTS.md (or append it), keeping every other one."""
    head = section.splitlines()[0]
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    parts = text.split("\n## ")
    keep = [parts[0]] + [p for p in parts[1:] if ("## " + p).splitlines()[0] != head]
    path.write_text("\n## ".join(keep).rstrip("\n") + "\n\n" + section)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-train", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=512, help="minibatch of both trainers (dmat's default)")
    p.add_argument("--dmat-steps", type=int, default=3000, help="length of dmat's lr schedule (its default)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--n-eval", type=int, default=5000)
    p.add_argument("--max-steps", type=int, default=30_000, help="give up after this many steps")
    p.add_argument("--max-seconds", type=float, default=900.0, help="or this much training time")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the evaluation logs to this file")
    p.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    p.add_argument("--from-json", help="re-render the report from a previous run's --json file")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dist = make_distribution("ring8")
    if a.from_json:
        logs = json.loads(Path(a.from_json).read_text())
        a.seeds = len(logs)
        section, ratio_txt = report(logs, a, dist)
        print(section)
        if not a.no_write:
            append_section(Path(__file__).with_name("RESULTS.md"), section)
        return
    print(f"device: cpu, threads: {torch.get_num_threads()}, torch {torch.__version__}; "
          f"ring8 entropy {dist.entropy()[0]:.3f} nats")
    logs = []
    for seed in range(a.seeds):
        x_train = dist.sample(a.n_train, torch.Generator().manual_seed(seed))
        log = race(dist, x_train, a, seed)
        for name, ms in step_cost(x_train, a, seed).items():
            log[name]["ms_per_step"] = ms
        print(f"  seed {seed} ms per step (fastest of alternating rounds): "
              + ", ".join(f"{n} {log[n]['ms_per_step']:.1f}" for n in log), flush=True)
        logs.append(log)
    section, ratio_txt = report(logs, a, dist)
    print("\n" + section)
    print(f"dmat vs smalldiffusion (time to quality, higher = dmat faster): smalldiffusion ratio: {ratio_txt}")
    if a.json:
        Path(a.json).write_text(json.dumps(logs, indent=1))
    if not a.no_write:
        append_section(Path(__file__).with_name("RESULTS.md"), section)


if __name__ == "__main__":
    main()
