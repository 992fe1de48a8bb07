"""Class-conditional generation: images/s of `dmat generate`'s sampling path, and the sampler's
overhead beside the bare network evaluations, for the tiny / small / large U-Net, in one process.

For each model (random weights: speed does not depend on them) and a fixed batch of latents and
labels, `dmat_core.images.generate.sample_images` runs as `dmat generate` runs it per batch (EDM Heun,
20 steps = 39 NFE, through `samplers.run`, then the uint8 conversion) with the denoiser wrapped
in a timer, so the network calls are timed inside the very run they belong to:

    overhead = generation seconds / (NFE x mean seconds of one network call on that batch)

1 means the sampler costs nothing beyond its network evaluations. Both sides of the ratio are
measured in the same seconds, so load from other processes on a shared machine cancels out of it
(it does not cancel out of images/s: the fastest of `--repeats` rounds is kept). On CUDA the timer
synchronises around each call; images/s there comes from a separate run without the timer.

    .venv/bin/python bench/generate.py                    # CPU: reduced batches for small and large
    .venv/bin/python bench/generate.py --record           # also append the rows to bench/RESULTS.md
    .venv/bin/python bench/generate.py --device cuda --amp bf16 --batch 256,256,128 --record
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # idle OpenMP threads sleep: a shared 2-core machine

import argparse
import datetime
import time
from pathlib import Path

import torch

from dmat_core.common.checkpoint import atomic_write_text
from dmat_core.diffusion.samplers import latent_noise, nfe
from dmat_core.images.generate import sample_images
from dmat_core.images.unet import build_image_denoiser

SECTION = "## `bench/generate.py`: class-conditional generation, images/s and sampler overhead"
HEADER = ("| date | device | U-Net (parameters) | batch | sampler | NFE | images/s | ms per network call "
          "| overhead (generation / NFE x call) |\n|---|---|---|---|---|---|---|---|---|")
NOTE = ("Random weights, fixed latents and labels; the fastest of `--repeats` rounds. Overhead = "
        "generation seconds / (NFE x mean seconds of one network call), both timed inside the same run "
        "(load from other processes cancels out of it, not out of images/s); 1.00 = the sampler and the "
        "uint8 conversion cost nothing beyond the network evaluations.")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedDenoiser:
    """D(x, sigma, labels), counting its calls and adding up their seconds (synchronised on CUDA)."""

    def __init__(self, D, device):
        self.D, self.device, self.calls, self.seconds = D, device, 0, 0.0

    def __call__(self, x, sigma, labels=None):
        sync(self.device)
        t0 = time.perf_counter()
        out = self.D(x, sigma, labels)
        sync(self.device)
        self.calls, self.seconds = self.calls + 1, self.seconds + time.perf_counter() - t0
        return out


def measure(size: str, batch: int, steps: int, repeats: int, device, amp: str) -> dict:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        D = build_image_denoiser(size, num_classes=10).to(device).eval().requires_grad_(False)
    lat = latent_noise(batch, (3, 32, 32), torch.Generator().manual_seed(1))           # (B, 3, 32, 32)
    labels = (torch.arange(batch) % 10).numpy()
    with torch.no_grad():                                                              # warm-up
        D(lat.to(device), 2.0, torch.as_tensor(labels, device=device))
    best = None
    for _ in range(repeats):
        timed = TimedDenoiser(D, device)
        sync(device)
        t0 = time.perf_counter()
        sample_images(timed, lat, labels, "heun", steps, batch, device, amp)
        sync(device)
        total = time.perf_counter() - t0
        if best is None or total < best[0]:
            best = (total, timed.seconds / timed.calls, timed.calls)
    total, call, calls = best
    assert calls == nfe("heun", steps)
    gen = total
    if device.type == "cuda":                                  # images/s without the timer's syncs
        gen = float("inf")
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            sample_images(D, lat, labels, "heun", steps, batch, device, amp)
            sync(device)
            gen = min(gen, time.perf_counter() - t0)
    return {"size": size, "params": sum(p.numel() for p in D.parameters()), "batch": batch,
            "sampler": f"heun-{steps}", "nfe": calls, "images_per_s": batch / gen,
            "ms_per_call": 1e3 * call, "overhead": total / (calls * call)}


def device_name(device, amp: str) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {amp if amp != 'off' else 'fp32'}"
    return f"CPU ({torch.get_num_threads()} thread(s); 2-core shared machine), fp32"


def record(path: Path, rows: list, device, amp: str, command: str) -> None:
    """Append rows to this benchmark's section of RESULTS.md (the section is made if absent);
    every other section is kept as it is."""
    date = datetime.date.today().isoformat()
    lines = [f"| {date} | {device_name(device, amp)} | {r['size']} ({r['params'] / 1e6:.2f}M) | {r['batch']} "
             f"| {r['sampler']} | {r['nfe']} | {r['images_per_s']:.2f} | {r['ms_per_call']:.1f} "
             f"| {r['overhead']:.3f} |" for r in rows]
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{NOTE}\n\n{HEADER}\n" + "\n".join(lines) + \
            f"\n\nCommand: `{command}`.\n"
    else:
        start = text.index(SECTION)
        end = text.find("\n## ", start + len(SECTION))
        end = len(text) if end < 0 else end
        section = text[start:end].splitlines()
        last_row = max(i for i, line in enumerate(section) if line.startswith("|"))
        section[last_row + 1:last_row + 1] = lines
        text = text[:start] + "\n".join(section) + ("\n" if end == len(text) else "") + text[end:]
    atomic_write_text(path, text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=["off", "bf16"], default="off", help="bf16 autocast (CUDA)")
    p.add_argument("--sizes", default="tiny,small,large")
    p.add_argument("--batch", help="batch per size, comma list (default CPU 32,8,2; CUDA 256,256,128)")
    p.add_argument("--steps", type=int, default=20, help="Heun steps (default 20, the paper's)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--record", action="store_true", help="append the rows to bench/RESULTS.md")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available on this machine")
    sizes = a.sizes.split(",")
    batches = [int(b) for b in (a.batch or ("256,256,128" if device.type == "cuda" else "32,8,2")).split(",")]
    print(f"device: {device_name(device, a.amp)}, torch {torch.__version__}")
    rows = []
    for size, batch in zip(sizes, batches):
        r = measure(size, batch, a.steps, a.repeats, device, a.amp)
        rows.append(r)
        print(f"{size:>5} ({r['params'] / 1e6:.2f}M params), batch {batch}: {r['images_per_s']:.2f} images/s, "
              f"{r['ms_per_call']:.1f} ms per call, overhead {r['overhead']:.3f} (generation / {r['nfe']} calls)")
    if a.record:
        cmd = " ".join([".venv/bin/python bench/generate.py"] + [f"--{k} {v}" for k, v in
                       (("device", a.device), ("amp", a.amp), ("batch", ",".join(map(str, batches))),
                        ("steps", a.steps), ("repeats", a.repeats), ("threads", a.threads)) if v] + ["--record"])
        record(Path(__file__).with_name("RESULTS.md"), rows, device, a.amp, cmd)
        print("appended to bench/RESULTS.md")


if __name__ == "__main__":
    main()
