"""PGD-10 (Linf 8/255, step 2/255): dmat_core.robust.attacks.pgd against torchattacks.PGD, in one process.

Like for like: same model, same batch, same steps (10), step size (2/255) and budget, dmat's
``pgd(..., keep_best=False)`` (the last iterate, as torchattacks returns) and both started at x
or from the same uniform random start (both draw ``torch.empty_like(x).uniform_(-eps, eps)``
right after ``torch.manual_seed(0)``). Prints, per model: images/s of each attack call, the
ratio dmat / torchattacks (> 1: dmat is faster), the "floor" (10 forward + backward passes to
the input, the least work any PGD-10 does), the robust accuracy each finds, the share of
examples with the same verdict, and how far the two adversarial batches are apart (share of
bitwise-equal pixels, largest difference).

    .venv/bin/python bench/attacks.py                      # CPU
    .venv/bin/python bench/attacks.py --device cuda --amp bf16
    .venv/bin/python bench/attacks.py --markdown "2-core CPU (this machine), fp32"   # RESULTS.md rows

Needs `pip install torchattacks` (the `bench` extra). The iterates differ only by float
rounding: where ``x + clamp(delta, -eps, eps)`` rounds one ulp outside the budget, torchattacks
keeps it (its output exceeds eps by ~3e-8 on some pixels) and dmat's projection moves it one ulp
back towards x (the budget holds exactly in float32). A later gradient sign can flip on such a
pixel, so some pixels end a step apart. (Checked: torchattacks' loop with dmat's projection gives
dmat's output bitwise; dmat's summed loss against torchattacks' mean changes no sign here.)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import torch

from dmat_core.images import data
from dmat_core.robust.attacks import pgd
from dmat_core.robust.classifiers import PreActResNet18
from dmat_core.robust.config import make_config
from dmat_core.robust.train import ATTrainer

EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 10


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fns: dict, repeats: int) -> tuple:
    """``repeats`` interleaved rounds per function (after one warm-up round), the order rotated
    from round to round so no function always runs first or after the same one. Returns (seconds of
    each round per function, last outputs). The fastest round is the cleanest single estimate
    (other processes only ever add time); the per-round ratios, paired, show the noise."""
    outs = {k: f() for k, f in fns.items()}
    times = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]  # each goes first as often
        for k in order:
            f = fns[k]
            sync()
            t0 = time.perf_counter()
            outs[k] = f()
            sync()
            times[k].append(time.perf_counter() - t0)
    return times, outs


def robust_accuracy(model, x_adv, y) -> float:
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).float().mean().item()


def compare(name: str, model, x, y, repeats: int, amp) -> dict:
    import torchattacks
    model.eval()
    autocast = torch.autocast(x.device.type, dtype=amp) if amp else contextlib.nullcontext()
    row = {"model": name, "batch": len(y), "device": str(x.device), "amp": str(amp).replace("torch.", "") if amp else "off"}

    def floor():  # the work any PGD-10 must do: 10 forward + backward passes to the input
        with autocast:
            for _ in range(STEPS):
                xr = x.clone().requires_grad_(True)
                torch.autograd.grad(torch.nn.functional.cross_entropy(model(xr).float(), y), xr)

    for start in (False, True):
        ta = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=start)

        def ours():
            torch.manual_seed(0)
            with autocast:
                # like for like: torchattacks returns the last iterate, so does keep_best=False
                return pgd(model, x, y, eps=EPS, steps=STEPS, step_size=ALPHA, random_start=start,
                           keep_best=False)

        def theirs():
            torch.manual_seed(0)
            with autocast:
                return ta(x, y)

        rounds, adv = timed({"dmat": ours, "torchattacks": theirs, "floor": floor}, repeats)
        t = {k: min(v) for k, v in rounds.items()}
        paired = sorted(b / a for a, b in zip(rounds["dmat"], rounds["torchattacks"]))
        quart = lambda q: paired[min(len(paired) - 1, round(q * (len(paired) - 1)))]  # noqa: E731
        with autocast:
            ra, rb = robust_accuracy(model, adv["dmat"], y), robust_accuracy(model, adv["torchattacks"], y)
        key = "random_start" if start else "start_at_x"
        row[key] = {"dmat_images_per_s": len(y) / t["dmat"], "torchattacks_images_per_s": len(y) / t["torchattacks"],
                    "speed_ratio": t["torchattacks"] / t["dmat"], "floor_images_per_s": len(y) / t["floor"],
                    "paired_ratio_quartiles": [quart(0.25), quart(0.5), quart(0.75)],
                    "dmat_robust_acc": ra, "torchattacks_robust_acc": rb,
                    "same_verdict": robust_agreement(model, adv, y, autocast),
                    "equal_pixels": (adv["dmat"] == adv["torchattacks"]).float().mean().item(),
                    "max_pixel_diff": (adv["dmat"] - adv["torchattacks"]).abs().max().item(),
                    "max_abs_linf": (adv["dmat"] - x).abs().max().item()}
    return row


def robust_agreement(model, adv, y, autocast) -> float:
    """Fraction of examples both attacks judge the same way (robust or broken)."""
    with torch.no_grad(), autocast:
        a = model(adv["dmat"]).argmax(1) == y
        b = model(adv["torchattacks"]).argmax(1) == y
    return (a == b).float().mean().item()


def trained_small_cnn(device):
    """A SmallCNN adversarially trained for a few seconds on the tiny archive (robust accuracy > 0)."""
    tmp = Path(tempfile.mkdtemp(prefix="dmat-bench-"))
    cfg = make_config("cpu-quick", data_dir=str(tmp / "cifar"), out_dir=str(tmp / "run"), progress=False,
                      arch_kw={"width": 32}, epochs=4, n_val=0)
    trainer = ATTrainer(cfg)
    for _ in trainer.run():
        pass
    x, y = data.load_cifar(tmp / "cifar", train=False)
    return trainer.ema.module.to(device), data.to_tensor_images(x, device), torch.as_tensor(y, device=device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=["off", "bf16"], default="off", help="autocast dtype (GPU: bf16)")
    p.add_argument("--batch", type=int, default=32, help="batch of the PreActResNet-18 run (default 32)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--markdown", metavar="DEVICE", help="also print the rows of bench/RESULTS.md, "
                   "naming the device so (e.g. '2-core CPU (this machine), fp32')")
    a = p.parse_args()
    device, amp = torch.device(a.device), (torch.bfloat16 if a.amp == "bf16" else None)
    print(f"device: {device}, threads: {torch.get_num_threads()}, torch {torch.__version__}")
    rows = []
    model, x, y = trained_small_cnn(device)
    rows.append(compare("SmallCNN-32 (AT on tiny CIFAR)", model, x, y, a.repeats, amp))
    torch.manual_seed(0)
    prn = PreActResNet18().to(device).eval()
    xb = torch.rand(a.batch, 3, 32, 32, device=device)
    with torch.no_grad():
        yb = prn(xb).argmax(1)  # labels the model gets right, so the attack has work to do
    rows.append(compare("PreActResNet-18 (random init)", prn, xb, yb, a.repeats, amp))
    for r in rows:
        print(f"\n{r['model']}, batch {r['batch']}, {r['device']}, amp {r['amp']}")
        for key in ("start_at_x", "random_start"):
            s = r[key]
            print(f"  {key:13s} dmat {s['dmat_images_per_s']:8.1f} img/s   torchattacks "
                  f"{s['torchattacks_images_per_s']:8.1f} img/s   ratio {s['speed_ratio']:.3f}   paired per round "
                  f"{'/'.join(f'{v:.3f}' for v in s['paired_ratio_quartiles'])} (25/50/75%)   "
                  f"(10 fwd+bwd floor {s['floor_images_per_s']:8.1f} img/s)   robust acc dmat "
                  f"{s['dmat_robust_acc']:.3f} / torchattacks {s['torchattacks_robust_acc']:.3f}, "
                  f"same verdict on {s['same_verdict']:.1%}, equal pixels {s['equal_pixels']:.4%}, "
                  f"largest difference {s['max_pixel_diff']:.2g}")
    if a.markdown:
        import datetime
        print()
        for r in rows:
            for key, start in (("start_at_x", "at x"), ("random_start", "uniform, same draw")):
                s = r[key]
                print(f"| {datetime.date.today()} | {a.markdown} | {r['model']}, {r['batch']} | {start} | "
                      f"{s['dmat_images_per_s']:.1f} | {s['torchattacks_images_per_s']:.1f} | "
                      f"{s['speed_ratio']:.3f} | {' / '.join(f'{v:.3f}' for v in s['paired_ratio_quartiles'])} | "
                      f"{s['floor_images_per_s']:.1f} | {s['dmat_robust_acc']:.3f} / "
                      f"{s['torchattacks_robust_acc']:.3f} | {s['same_verdict']:.0%} | {s['equal_pixels']:.4%} | "
                      f"{s['max_pixel_diff']:.2g} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
