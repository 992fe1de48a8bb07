"""Class-conditional generation into `.npz` shards (Wang et al., ICML 2023; docs/science.md section 4).

Size: one module of about 330 lines on purpose: shards, manifest, resume and merge form one file
protocol; split, each part would need the others.

    summary = generate("runs/dm/checkpoint.pt", "gen/heun20", n=50_000, shard_size=10_000)
    for shard in generate_shards(D, "gen/quick", n=100, shard_size=20, steps=3):  # one per shard
        print(shard["shard"], shard["images_per_s"])

The paper's recipe: a class-conditional EDM model, the deterministic Heun sampler with **20
steps** (39 NFE), the label of an image = the class it was conditioned on. Any sampler of
:mod:`dmat_core.diffusion.samplers` can be chosen; it runs through ``samplers.run``, the code the exact
toy denoisers are checked with.

The output directory holds ``manifest.json`` (what made the set: checkpoint, its architecture,
the SHA-256 of its weights, sampler, steps, seed, n, shard size, classes, dmat version; plain
JSON, written atomically) and ``shard_00000.npz``, ``shard_00001.npz``, ... (the paper's format:
``image`` uint8 (S, 32, 32, 3) NHWC, ``label`` int64 (S,); :func:`dmat_core.images.gendata.load_generated`
reads each, :func:`merge` joins them).

- Labels: image j of the set is conditioned on ``classes[j % len(classes)]`` (balanced, fixed).
- Determinism: the latents of shard i come from a generator seeded by (seed, i) alone, so a shard
  is the same whichever run, rank or process makes it (bitwise on one device, batch size and
  thread count).
- Resume: shards are written atomically (temporary file, then rename); a run started again with
  the same settings makes only the missing ones. A directory made with other settings is refused,
  the differences named, nothing touched (``overwrite=True`` deletes its shards first).
- DDP: under ``torchrun`` rank r makes the shards i with i % world_size == r; rank 0 writes the
  manifest and, after a barrier, merges.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .. import __version__
from ..common.checkpoint import atomic_write_text
from ..common.train_utils import all_reduce_sum, dist_info
from ..diffusion.samplers import SAMPLERS, latent_noise, nfe, run, sampler_iter
from .gendata import IMAGE_SHAPE, merge_generated, save_generated
from .pixels import model_to_image

__all__ = ["GENERATE_FORMAT", "MANIFEST", "shard_name", "shard_seed", "class_labels",
           "weights_sha256", "make_manifest", "check_output_dir", "make_shard", "sample_images",
           "generate_shards", "generate", "shard_paths", "merge"]

GENERATE_FORMAT = "dmat-generate/1"
MANIFEST = "manifest.json"
# manifest entries that decide the images; the others (paths, version) may change on a resume
IDENTITY = ("format", "arch", "weights_sha256", "ema", "sampler", "steps", "sampler_kwargs",
            "seed", "n", "shard_size", "classes", "amp")
AMP = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_LATENTS, _NOISE = 0, 1  # random streams of a shard


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.npz"


def shard_seed(seed: int, i: int, stream: int = _LATENTS) -> int:
    """A 63-bit seed that is a pure function of (seed, stream, shard index)."""
    ss = np.random.SeedSequence([int(seed), int(stream), int(i)])
    return int(ss.generate_state(1, np.uint64)[0] >> 1)


def class_labels(start: int, stop: int, classes: Sequence[int]) -> np.ndarray:
    """Labels of images start..stop-1 of the set: classes[j % len(classes)], int64 (stop-start,)."""
    return np.asarray(classes, dtype=np.int64)[np.arange(start, stop) % len(classes)]


def weights_sha256(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes, bytes), in sorted key order."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        v = v.detach().cpu().contiguous()
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)};".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or int(v) != v or v <= 0:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def make_manifest(D, arch: dict, *, n: Optional[int] = None, per_class: Optional[int] = None,
                  shard_size: int = 10_000, classes=None, seed: int = 0, sampler: str = "heun",
                  steps: int = 20, sampler_kwargs: Optional[dict] = None, amp: str = "off",
                  ema: bool = True, checkpoint=None) -> dict:
    """The plain-data description of a generation run, validated (a bad setting: ValueError).
    Give `n` (images in all) or `per_class` (n = per_class * number of classes)."""
    if (n is None) == (per_class is None):
        raise ValueError("give exactly one of n (images in all) and per_class")
    shard_size, steps = _positive_int("shard size", shard_size), _positive_int("steps", steps)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    if amp not in AMP:
        raise ValueError(f"amp must be one of {sorted(AMP)}, got {amp!r}")
    K = int(arch.get("num_classes", 0))
    if K <= 0:
        raise ValueError(f"the model is not class-conditional (num_classes={K}): "
                         "generated training data needs a label per image")
    classes = list(range(K)) if classes is None else [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c < K]
    if not classes or bad or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct labels in [0, {K}) (the model's classes), "
                         f"got {classes}")
    n = _positive_int("n", n) if per_class is None else _positive_int("per class", per_class) * len(classes)
    shape = (arch.get("img_resolution"), arch.get("img_resolution"), arch.get("in_channels"))
    if shape[-1] not in (1, 3):
        raise ValueError(f"generated sets hold grey (C = 1) or RGB (C = 3) images (the paper's: "
                         f"{IMAGE_SHAPE}); this model makes {shape}")
    sampler_kwargs = dict(sampler_kwargs or {})
    try:                        # binds the arguments only: a generator runs nothing until iterated
        sampler_iter(D, torch.zeros(1), sampler, steps, **sampler_kwargs)
        json.dumps(sampler_kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"sampler options {sampler_kwargs} do not fit {sampler!r}: {e}") from None
    return {"format": GENERATE_FORMAT, "checkpoint": str(checkpoint) if checkpoint else None,
            "arch": arch, "weights_sha256": weights_sha256(D), "ema": bool(ema), "sampler": sampler,
            "steps": steps, "nfe_per_image": nfe(sampler, steps), "sampler_kwargs": sampler_kwargs,
            "seed": int(seed), "n": n, "shard_size": shard_size, "num_shards": math.ceil(n / shard_size),
            "num_classes": K, "classes": classes, "label_order": "classes[j % len(classes)]",
            "amp": amp, "dmat_version": __version__}


def _read_manifest(out: Path) -> Optional[dict]:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: unreadable manifest ({e}); choose another output directory") from None


def check_output_dir(out, manifest: dict, overwrite: bool = False) -> Optional[dict]:
    """Refuse an output directory made by another run (ValueError / FileExistsError naming the
    differences); reads only. Returns the manifest found there, or None."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    old = _read_manifest(out) if out.is_dir() else None
    shards = sorted(out.glob("shard_*.npz")) if out.is_dir() else []
    if overwrite:
        return old
    if old is None and shards:
        raise FileExistsError(f"{out} holds {len(shards)} shard(s) but no {MANIFEST}: not made by "
                              "`dmat generate`; choose another directory (or --overwrite)")
    if old is not None:
        diff = [f"{k}: {old.get(k)!r} there, {manifest.get(k)!r} now" for k in IDENTITY
                if old.get(k) != manifest.get(k)]
        if diff:
            raise FileExistsError(f"{out} holds {len(shards)} shard(s) of another run; differences: "
                                  + "; ".join(diff) + ". Use the same settings to resume, another "
                                  "directory, or --overwrite (deletes those shards)")
    return old


def _autocast(device: torch.device, amp: str):
    if AMP[amp] is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP[amp])


@torch.no_grad()
def sample_images(D, latents: torch.Tensor, labels: np.ndarray, sampler: str = "heun", steps: int = 20,
                  batch_size: int = 256, device=None, amp: str = "off", generator=None,
                  progress=None, **sampler_kwargs) -> np.ndarray:
    """uint8 (N, 32, 32, 3) images: `sampler` from `latents` (N, 3, 32, 32), conditioned on `labels`."""
    device = torch.device(device or latents.device)
    out = []
    for s in range(0, len(latents), batch_size):
        lat = latents[s:s + batch_size].to(device)                            # (b, C, H, W)
        lab = torch.as_tensor(labels[s:s + batch_size], device=device)        # (b,)
        with _autocast(device, amp):
            x = run(D, lat, sampler, steps, labels=lab, generator=generator, **sampler_kwargs)
        out.append(model_to_image(x.float()))                                 # (b, H, W, C)
        if progress is not None:
            progress.update(len(lab))
    return np.concatenate(out)


def make_shard(D, manifest: dict, i: int, batch_size: int = 256, device="cpu", progress=None):
    """(images, labels) of shard i of a run, from its manifest alone."""
    m = manifest
    start, stop = i * m["shard_size"], min(m["n"], (i + 1) * m["shard_size"])
    if not 0 <= start < stop:
        raise ValueError(f"shard {i} is outside the run's {m['num_shards']} shards")
    labels = class_labels(start, stop, m["classes"])
    shape = (m["arch"]["in_channels"], m["arch"]["img_resolution"], m["arch"]["img_resolution"])
    latents = latent_noise(stop - start, shape, torch.Generator().manual_seed(shard_seed(m["seed"], i)))
    device = torch.device(device)
    noise = torch.Generator(device).manual_seed(shard_seed(m["seed"], i, _NOISE))  # churn, DDPM
    images = sample_images(D, latents, labels, m["sampler"], m["steps"], batch_size, device, m["amp"],
                           noise, progress, **m["sampler_kwargs"])
    return images, labels


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _load(denoiser, device, ema: bool, expect_arch):
    """(D, arch, checkpoint path or None) from a checkpoint path or a built denoiser."""
    from .unet import denoiser_arch, load_image_denoiser
    if isinstance(denoiser, (str, os.PathLike)):
        D, arch = load_image_denoiser(denoiser, device=device, ema=ema, arch=expect_arch)
        return D, arch, Path(denoiser).resolve()
    return denoiser.to(device).eval(), denoiser_arch(denoiser), None


def generate_shards(denoiser, out_dir, n: Optional[int] = None, *, per_class: Optional[int] = None,
                    shard_size: int = 10_000, classes=None, seed: int = 0, sampler: str = "heun",
                    steps: int = 20, sampler_kwargs: Optional[dict] = None, amp: str = "off",
                    batch_size: int = 256, device=None, ema: bool = True, expect_arch=None,
                    overwrite: bool = False, progress: bool = True) -> Iterator[dict]:
    """Make this rank's missing shards of a run, yielding one dict per shard written.

    `denoiser`: a checkpoint of `dmat train-dm` (its EMA weights unless `ema=False`; `expect_arch`
    a size name or dict the file must match) or a denoiser made by `build_image_denoiser` (moved
    to the device, in eval mode). `sampler_kwargs` go to the sampler (e.g. {"S_churn": 10}).
    Every setting is checked, and the directory too, before anything is written.
    """
    batch_size = _positive_int("batch size", batch_size)
    rank, world, local = dist_info()
    device = torch.device(device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu"))
    D, arch, ckpt = _load(denoiser, device, ema, expect_arch)
    m = make_manifest(D, arch, n=n, per_class=per_class, shard_size=shard_size, classes=classes,
                      seed=seed, sampler=sampler, steps=steps, sampler_kwargs=sampler_kwargs, amp=amp,
                      ema=ema, checkpoint=ckpt)
    out = Path(out_dir)
    old = check_output_dir(out, m, overwrite)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".*.tmp"):                  # temporary files of killed writes
            stale.unlink(missing_ok=True)
        if overwrite and old != m:
            for p in out.glob("shard_*.npz"):
                p.unlink()
        if old != m:
            atomic_write_text(out / MANIFEST, json.dumps(m, indent=2) + "\n")
    _barrier()
    S = m["shard_size"]
    todo = [i for i in range(rank, m["num_shards"], world) if not (out / shard_name(i)).is_file()]
    from tqdm.auto import tqdm
    with tqdm(total=sum(min(m["n"], (i + 1) * S) - i * S for i in todo), unit="img", dynamic_ncols=True,
              desc=f"generate {sampler}-{steps}", disable=not (progress and rank == 0 and todo)) as bar:
        for i in todo:
            t0 = time.perf_counter()
            images, labels = make_shard(D, m, i, batch_size, device, bar)
            save_generated(out / shard_name(i), images, labels, num_classes=m["num_classes"], shape=None)
            sec = time.perf_counter() - t0
            yield {"shard": i, "path": str(out / shard_name(i)), "images": len(labels), "seconds": sec,
                   "images_per_s": len(labels) / sec, "rank": rank}


def shard_paths(out_dir) -> list[Path]:
    """Every shard of a finished run, in order (ValueError naming the missing ones otherwise)."""
    out = Path(out_dir)
    m = _read_manifest(out)
    if m is None:
        raise FileNotFoundError(f"{out}: no {MANIFEST}; not an output directory of `dmat generate`")
    paths = [out / shard_name(i) for i in range(m["num_shards"])]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"{out}: {len(missing)} of {len(paths)} shards missing ({', '.join(missing[:5])}"
                         f"{', ...' if len(missing) > 5 else ''}): run the same `dmat generate` again to finish")
    return paths


def _is_merge_of(merged: Path, paths: Sequence[Path]) -> bool:
    """Whether `merged` holds as many images as the shards, with the same labels (a finished merge)."""
    from .gendata import load_generated
    try:
        _, y = load_generated(merged, num_classes=None, shape=None)
        labels = np.concatenate([load_generated(p, num_classes=None, shape=None)[1] for p in paths])
    except ValueError:
        return False
    return len(y) == len(labels) and bool((y == labels).all())


def merge(out_dir, merged, overwrite: bool = False) -> str:
    """Join every shard of a finished run into one `.npz` (streamed, atomic). An existing file is
    left alone when it is this run's merge (same labels), replaced only with `overwrite`.
    Returns "merged" or "up to date"."""
    paths, merged = shard_paths(out_dir), Path(merged)
    if merged.exists() and not overwrite:
        if _is_merge_of(merged, paths):
            return "up to date"
        raise FileExistsError(f"{merged} exists and is not the merge of {out_dir}: choose another "
                              "file or pass --overwrite")
    merge_generated(paths, merged, num_classes=_read_manifest(Path(out_dir))["num_classes"], shape=None)
    return "merged"


def generate(denoiser, out_dir, n: Optional[int] = None, *, merge_to=None, **kwargs) -> dict:
    """Run :func:`generate_shards` to the end (under `torchrun`, DDP set up here: gloo on CPU, nccl
    on CUDA), then, on rank 0, merge into `merge_to` if given. Returns a summary (every rank):
    images/s is the sum over ranks of each rank's images over its generation seconds."""
    rank, world, local = dist_info()
    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        cuda = torch.cuda.is_available() and not str(kwargs.get("device") or "").startswith("cpu")
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
    try:
        made = list(generate_shards(denoiser, out_dir, n, **kwargs))
        images, sec = sum(s["images"] for s in made), sum(s["seconds"] for s in made)
        device = "cuda" if dist.is_initialized() and dist.get_backend() == "nccl" else "cpu"
        images, shards, rate = all_reduce_sum([images, len(made), images / sec if sec else 0.0], device)
        _barrier()                                        # every shard written before the merge
        merged = merge(out_dir, merge_to, kwargs.get("overwrite", False)) \
            if merge_to is not None and rank == 0 else None
        _barrier()
        m = _read_manifest(Path(out_dir))
        return {"out_dir": str(out_dir), "num_shards": m["num_shards"], "n": m["n"],
                "shards_made": int(shards), "images_made": int(images), "generation_seconds": sec,
                "images_per_s": rate or None, "nfe_per_image": m["nfe_per_image"], "world_size": world,
                "merged": str(merge_to) if merged else None, "merge": merged}
    finally:
        if own_group:
            dist.destroy_process_group()
