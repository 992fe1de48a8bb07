"""Where dmat's PGD spends the time that torchattacks' does not (a CUDA diagnostic, one process).

Times, interleaved and rotated over 30 rounds (medians and fastest), PGD-10 (Linf 8/255, step 2/255)
on a random-init PreActResNet-18 (bf16 autocast, channels-last, batch 256) three ways:
  dmat          ``pgd(..., keep_best=False)``, the public attack (checks the input contract, computes
                the exact Linf bounds once, checks the labels on the first forward pass)
  dmat_bare     the same loop (``pgd_steps``) with the bounds but without those checks
  torchattacks  ``torchattacks.PGD``
then the checks alone (``check_attack_inputs`` + ``linf_bounds``) per call, and one profiled call
of each attack (torch.profiler: CPU and CUDA time per operator).

    python bench/attack_overhead.py          # needs CUDA and torchattacks (the bench extra)
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attacks import ALPHA, EPS, STEPS  # noqa: E402  (bench/attacks.py: the same attack settings)

from dmat_core.robust.attacks import attack_objective, pgd, pgd_steps  # noqa: E402
from dmat_core.robust.classifiers import PreActResNet18  # noqa: E402
from dmat_core.robust.threat import check_attack_inputs, linf_bounds  # noqa: E402


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("bench/attack_overhead.py: needs a CUDA device (it measures launch and sync overhead)")
    try:
        import torchattacks
    except ImportError:
        sys.exit("bench/attack_overhead.py: needs torchattacks (pip install torchattacks, or the bench extra)")
    torch.manual_seed(0)
    model = PreActResNet18().cuda().eval().to(memory_format=torch.channels_last)
    x = torch.rand(256, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (256,), device="cuda")
    autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    attackers = {s: torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=s) for s in (False, True)}

    def dmat(start):
        torch.manual_seed(0)
        with autocast():
            return pgd(model, x, y, eps=EPS, steps=STEPS, step_size=ALPHA, random_start=start, keep_best=False)

    def dmat_bare(start):
        torch.manual_seed(0)
        with autocast():
            bounds = linf_bounds(x, EPS, (0.0, 1.0))
            x0 = x.clone() if not start else (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
            return pgd_steps(model, x, x0, lambda z: attack_objective(z, y), eps=EPS, norm="linf", steps=STEPS,
                             alpha=ALPHA, bounds=bounds)

    def theirs(start):
        torch.manual_seed(0)
        with autocast():
            return attackers[start](x, y)

    fns = {"dmat": dmat, "dmat_bare": dmat_bare, "torchattacks": theirs}
    names = list(fns)
    for start in (False, True):
        for f in fns.values():
            f(start)
        t = {k: [] for k in fns}
        for r in range(30):
            for k in names[r % 3:] + names[:r % 3]:
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                fns[k](start)
                torch.cuda.synchronize()
                t[k].append(time.perf_counter() - t0)
        print(f"start={'uniform' if start else 'x'}: " + ", ".join(
            f"{k} median {statistics.median(v) * 1e3:.2f} ms, fastest {min(v) * 1e3:.2f}" for k, v in t.items()))

    def checks():
        with autocast():
            check_attack_inputs(x, y, EPS, "linf", (0.0, 1.0))
            linf_bounds(x, EPS, (0.0, 1.0))
    checks()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        checks()
    torch.cuda.synchronize()
    print(f"check_attack_inputs + linf_bounds: {(time.perf_counter() - t0) / 20 * 1e3:.3f} ms per call")

    from torch.profiler import ProfilerActivity, profile
    for name, f in (("dmat", dmat), ("torchattacks", theirs)):
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            f(True)
            torch.cuda.synchronize()
        print(f"== {name}, one call, uniform start: operators by self CPU time")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60))


if __name__ == "__main__":
    main()
