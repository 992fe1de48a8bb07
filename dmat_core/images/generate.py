"""Class-conditional generation into `.npz` shards (Wang et al., ICML 2023; docs/science.md section 4).

Size: one module of about 510 lines on purpose: settings, shards, manifest, checksums, resume and
merge form one file protocol; split, each part would need the others.

    summary = generate("runs/dm/checkpoint.pt", "gen/heun20", n=50_000, shard_size=10_000)
    for shard in generate_shards(D, "gen/quick", n=100, shard_size=20, steps=3):  # one per shard
        print(shard["shard"], shard["images_per_s"])

The paper's recipe: a class-conditional EDM model, the deterministic Heun sampler with **20
steps** (39 NFE), the label of an image = the class it was conditioned on. Any sampler of
:mod:`dmat_core.diffusion.samplers` can be chosen; it runs through ``samplers.run``, the code the exact
toy denoisers are checked with.

The output directory holds ``manifest.json`` (what made the set: checkpoint, its architecture,
the SHA-256 of its weights, sampler, steps, seed, n, shard size, classes, dmat version, and the
SHA-256 and size of every shard, recorded when it was written; plain JSON, written atomically,
checked against :class:`Manifest` when read) and ``shard_00000.npz``, ``shard_00001.npz``, ... (the paper's format:
``image`` uint8 (S, 32, 32, 3) NHWC, ``label`` int64 (S,); :func:`dmat_core.images.gendata.load_generated`
reads each, :func:`merge` joins them).

- Labels: image j of the set is conditioned on ``classes[j % len(classes)]`` (balanced, fixed).
- Determinism: the latents of shard i come from a generator seeded by (seed, i) alone, so a shard
  is the same whichever run, rank or process makes it (bitwise on one device, batch size and
  thread count).
- Resume: a shard is written to a temporary file, its checksum recorded in the manifest, then it is
  renamed into place, so a shard file always has its checksum. A run started again with the same
  settings checks every shard against it and makes the missing ones and the damaged ones (a
  truncated or changed file: said on stderr) again. A directory made with other settings is
  refused, the differences named, nothing touched (``overwrite=True`` deletes its shards first).
- Settings: :class:`GenerateSettings` (the typed settings layer, :mod:`dmat_core.common.settings`),
  checked before the checkpoint is read; the outputs before anything is written.
- DDP: under ``torchrun`` rank r makes the shards i with i % world_size == r; rank 0 writes the
  manifest and, after a barrier, merges.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Dict, Iterator, List, Literal, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from pydantic import Field, model_validator

from .. import __version__
from ..common.checkpoint import atomic_write_text
from ..common.outputs import check_out_dir, check_out_file, start_work
from ..common.settings import Settings
from ..common.train_utils import all_reduce_sum, dist_info
from ..diffusion.samplers import SAMPLERS, latent_noise, nfe, run, sampler_iter
from .gendata import IMAGE_SHAPE, merge_generated, save_generated
from .pixels import model_to_image

__all__ = ["GENERATE_FORMAT", "MANIFEST", "GenerateSettings", "Manifest", "shard_name", "shard_seed",
           "class_labels", "weights_sha256", "make_manifest", "read_manifest", "check_output_dir", "make_shard",
           "sample_images", "generate_shards", "generate", "shard_paths", "merge", "bytes_per_image"]

GENERATE_FORMAT = "dmat-generate/1"
MANIFEST = "manifest.json"
# manifest entries that decide the images; the others (paths, version) may change on a resume
IDENTITY = ("format", "arch", "weights_sha256", "ema", "sampler", "steps", "sampler_kwargs",
            "seed", "n", "shard_size", "classes", "amp")
AMP = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_LATENTS, _NOISE = 0, 1  # random streams of a shard
_SHARD_OVERHEAD = 1024    # bytes of a shard beyond its images and labels (zip and .npy headers)


def bytes_per_image(manifest: Optional[dict] = None) -> int:
    """Bytes one image takes in a shard or a merged file: its uint8 pixels (H x W x C of the
    manifest's model; 32 x 32 x 3 without one) and an int64 label."""
    arch = (manifest or {}).get("arch") or {}
    res, ch = arch.get("img_resolution"), arch.get("in_channels")
    shape = (res, res, ch) if isinstance(res, int) and isinstance(ch, int) else IMAGE_SHAPE
    return int(np.prod(shape)) + 8


class GenerateSettings(Settings):
    """What a generation run is asked for, checked before anything is read or written."""

    n: Optional[int] = Field(None, ge=1)                  # images in all, or
    per_class: Optional[int] = Field(None, ge=1)          # images per class
    shard_size: int = Field(10_000, ge=1)
    classes: Optional[List[Annotated[int, Field(ge=0)]]] = Field(None, min_length=1)   # None: all of the model's
    seed: int = Field(0, ge=0)
    sampler: Literal[tuple(SAMPLERS)] = "heun"            # type: ignore[valid-type]
    steps: int = Field(20, ge=1)
    sampler_kwargs: Dict[str, Any] = Field(default_factory=dict)
    amp: Literal[tuple(AMP)] = "off"                      # type: ignore[valid-type]
    batch_size: int = Field(256, ge=1)
    ema: bool = True

    @model_validator(mode="after")
    def _settings_agree(self) -> "GenerateSettings":
        if (self.n is None) == (self.per_class is None):
            raise ValueError("give exactly one of n (images in all) and per_class")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct labels, got {self.classes}")
        churn = self.sampler_kwargs.get("S_churn", 0.0)
        if isinstance(churn, bool) or not isinstance(churn, (int, float)) or not (math.isfinite(churn) and churn >= 0):
            raise ValueError(f"S_churn={churn!r}: the churn must be a finite number >= 0 (0: deterministic)")
        return self


class ShardRecord(Settings):
    """What the manifest records of a shard when it is written."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class Manifest(Settings):
    """The schema of ``manifest.json``: a state file is checked before it is used."""

    format: str
    checkpoint: Optional[str]
    arch: Dict[str, Any]
    weights_sha256: str
    ema: bool
    sampler: str
    steps: int = Field(ge=1)
    nfe_per_image: int = Field(ge=0)
    sampler_kwargs: Dict[str, Any]
    seed: int = Field(ge=0)
    n: int = Field(ge=1)
    shard_size: int = Field(ge=1)
    num_shards: int = Field(ge=1)
    num_classes: int = Field(ge=1)
    classes: List[int]
    label_order: str
    amp: str
    dmat_version: str
    shards: Dict[str, ShardRecord] = Field(default_factory=dict)   # name -> checksum (absent in old files)

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        if self.num_shards != math.ceil(self.n / self.shard_size):
            raise ValueError(f"num_shards={self.num_shards} but n={self.n} and shard_size={self.shard_size}")
        names = {shard_name(i) for i in range(self.num_shards)}
        stray = sorted(set(self.shards) - names)
        if stray:
            raise ValueError(f"shards records {stray[:3]} that are not shards of this run")
        return self


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


def make_manifest(D, arch: dict, *, n: Optional[int] = None, per_class: Optional[int] = None,
                  shard_size: int = 10_000, classes=None, seed: int = 0, sampler: str = "heun",
                  steps: int = 20, sampler_kwargs: Optional[dict] = None, amp: str = "off",
                  ema: bool = True, checkpoint=None, batch_size: int = 256) -> dict:
    """The plain-data description of a generation run, validated (a bad setting: SettingsError, a
    ValueError). Give `n` (images in all) or `per_class` (n = per_class * number of classes)."""
    st = GenerateSettings.from_dict(dict(n=n, per_class=per_class, shard_size=shard_size,
                                         classes=None if classes is None else list(classes), seed=seed,
                                         sampler=sampler, steps=steps, sampler_kwargs=dict(sampler_kwargs or {}),
                                         amp=amp, ema=ema, batch_size=batch_size))
    K = int(arch.get("num_classes", 0))
    if K <= 0:
        raise ValueError(f"the model is not class-conditional (num_classes={K}): "
                         "generated training data needs a label per image")
    classes = list(range(K)) if st.classes is None else st.classes
    bad = [c for c in classes if not 0 <= c < K]
    if bad:
        raise ValueError(f"classes must be distinct labels in [0, {K}) (the model's classes), got {classes}")
    n = st.n if st.per_class is None else st.per_class * len(classes)
    shape = (arch.get("img_resolution"), arch.get("img_resolution"), arch.get("in_channels"))
    if shape[-1] not in (1, 3):
        raise ValueError(f"generated sets hold grey (C = 1) or RGB (C = 3) images (the paper's: "
                         f"{IMAGE_SHAPE}); this model makes {shape}")
    try:                        # binds the arguments only: a generator runs nothing until iterated
        sampler_iter(D, torch.zeros(1), st.sampler, st.steps, **st.sampler_kwargs)
        json.dumps(st.sampler_kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"sampler options {st.sampler_kwargs} do not fit {st.sampler!r}: {e}") from None
    return {"format": GENERATE_FORMAT, "checkpoint": str(checkpoint) if checkpoint else None,
            "arch": arch, "weights_sha256": weights_sha256(D), "ema": st.ema, "sampler": st.sampler,
            "steps": st.steps, "nfe_per_image": nfe(st.sampler, st.steps), "sampler_kwargs": st.sampler_kwargs,
            "seed": st.seed, "n": n, "shard_size": st.shard_size, "num_shards": math.ceil(n / st.shard_size),
            "num_classes": K, "classes": classes, "label_order": "classes[j % len(classes)]",
            "amp": st.amp, "dmat_version": __version__, "shards": {}}


def read_manifest(out) -> Optional[dict]:
    """The manifest of an output directory, checked against :class:`Manifest` (None if there is none;
    ValueError naming the file when it is not JSON, or JSON of another shape)."""
    path = Path(out) / MANIFEST
    if not path.exists():
        return None
    try:
        return Manifest.from_file(path, "manifest").to_dict()
    except ValueError as e:
        reason = str(e).removeprefix(f"{path}: ")
        raise ValueError(f"{path} is not a manifest of `dmat generate` ({reason}); choose another output "
                         "directory, or --overwrite to replace it") from None




def check_output_dir(out, manifest: dict, overwrite: bool = False) -> Optional[dict]:
    """Refuse an output directory made by another run (ValueError / FileExistsError naming the
    differences); reads only. Returns the manifest found there, or None."""
    out = Path(out)
    check_out_dir(out)
    if overwrite:
        try:
            return read_manifest(out) if out.is_dir() else None
        except ValueError:
            return None                    # replaced anyway
    old = read_manifest(out) if out.is_dir() else None
    shards = sorted(out.glob("shard_*.npz")) if out.is_dir() else []
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


def _same_run(old: Optional[dict], m: dict) -> bool:
    return old is not None and all(old.get(k) == m.get(k) for k in IDENTITY)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _shard_problem(path: Path, record: Optional[dict], full: bool = True) -> Optional[str]:
    """Why a shard file cannot be trusted (None: it matches the checksum recorded when it was written)."""
    if record is None:
        return f"no checksum for it in {MANIFEST} (written by an earlier version, or not by this run)"
    size = path.stat().st_size
    if size != record["bytes"]:
        return f"damaged: {size} bytes, {record['bytes']} when it was written (truncated or changed)"
    if full and _sha256(path) != record["sha256"]:
        return f"damaged: its bytes differ from the SHA-256 that {MANIFEST} recorded when it was written"
    return None


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


def _max_over_ranks(v: int) -> int:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([v], dtype=torch.int64,
                         device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())
    return v


def _gather(obj) -> list:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def generate_shards(denoiser, out_dir, n: Optional[int] = None, *, per_class: Optional[int] = None,
                    shard_size: int = 10_000, classes=None, seed: int = 0, sampler: str = "heun",
                    steps: int = 20, sampler_kwargs: Optional[dict] = None, amp: str = "off",
                    batch_size: int = 256, device=None, ema: bool = True, expect_arch=None,
                    overwrite: bool = False, progress: bool = True,
                    check_outputs: Optional[Callable[[dict], None]] = None) -> Iterator[dict]:
    """Make this rank's missing (or damaged) shards of a run, yielding one dict per shard written.

    `denoiser`: a checkpoint of `dmat train-dm` (its EMA weights unless `ema=False`; `expect_arch`
    a size name or dict the file must match) or a denoiser made by `build_image_denoiser` (moved
    to the device, in eval mode). `sampler_kwargs` go to the sampler (e.g. {"S_churn": 10}).
    Every setting is checked, and the directory too (``check_outputs(manifest)``, if given, checks
    the caller's other outputs), before anything is written.
    """
    settings = dict(n=n, per_class=per_class, shard_size=shard_size, classes=classes, seed=seed,
                    sampler=sampler, steps=steps, sampler_kwargs=sampler_kwargs, amp=amp, ema=ema,
                    batch_size=batch_size)
    GenerateSettings.from_dict({**settings, "classes": None if classes is None else list(classes),
                                "sampler_kwargs": dict(sampler_kwargs or {})})   # before any file is read
    rank, world, local = dist_info()
    device = torch.device(device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu"))
    D, arch, ckpt = _load(denoiser, device, ema, expect_arch)
    m = make_manifest(D, arch, checkpoint=ckpt, **settings)
    out = Path(out_dir)
    old = check_output_dir(out, m, overwrite)
    same = _same_run(old, m)
    if same:
        m["shards"] = dict(old.get("shards", {}))          # the checksums of the shards written before
    S, K = m["shard_size"], m["num_classes"]
    mine = list(range(rank, m["num_shards"], world))
    missing = [i for i in mine if not (same and (out / shard_name(i)).is_file())]
    check_out_dir(out, size=sum(min(m["n"], (i + 1) * S) - i * S for i in missing) * bytes_per_image(m)
                  + len(missing) * _SHARD_OVERHEAD)
    if check_outputs is not None:
        check_outputs(m)
    start_work()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".*.tmp"):                  # temporary files of killed writes
            stale.unlink(missing_ok=True)
        if overwrite and not same:
            for p in out.glob("shard_*.npz"):
                p.unlink()
        if old != m:
            atomic_write_text(out / MANIFEST, json.dumps(m, indent=2) + "\n")
    _barrier()                                            # rank 0's clean-up and manifest are done
    present = [i for i in mine if same and (out / shard_name(i)).is_file()]
    todo = [i for i in mine if i not in present]
    for i in present:                                     # verified against the recorded checksums
        why = _shard_problem(out / shard_name(i), m["shards"].get(shard_name(i)))
        if why:
            print(f"dmat generate: {out / shard_name(i)}: {why}; making it again", file=sys.stderr)
            todo.append(i)
    todo.sort()
    rounds = _max_over_ranks(len(todo))                   # every rank takes part in every round
    from tqdm.auto import tqdm
    with tqdm(total=sum(min(m["n"], (i + 1) * S) - i * S for i in todo), unit="img", dynamic_ncols=True,
              desc=f"generate {sampler}-{steps}", disable=not (progress and rank == 0 and todo)) as bar:
        for r in range(rounds):
            record, t0 = None, time.perf_counter()
            if r < len(todo):
                i = todo[r]
                images, labels = make_shard(D, m, i, batch_size, device, bar)
                pending = out / f".{shard_name(i)}.pending.tmp"
                save_generated(pending, images, labels, num_classes=K, shape=None)
                record = (shard_name(i), {"sha256": _sha256(pending), "bytes": pending.stat().st_size})
            records = [x for x in _gather(record) if x is not None]
            if rank == 0 and records:                     # the checksum is recorded before the shard appears
                m["shards"].update(dict(records))
                atomic_write_text(out / MANIFEST, json.dumps(m, indent=2) + "\n")
            _barrier()
            if record is not None:
                os.replace(pending, out / shard_name(i))
                sec = time.perf_counter() - t0
                yield {"shard": i, "path": str(out / shard_name(i)), "images": len(labels), "seconds": sec,
                       "images_per_s": len(labels) / sec, "rank": rank, "repaired": i in present}


def shard_paths(out_dir, verify: str = "sha256") -> list[Path]:
    """Every shard of a finished run, in order, each checked against the checksum its manifest
    recorded (``verify``: "sha256", or "size" for the cheap check); ValueError naming the missing or
    damaged ones otherwise."""
    out = Path(out_dir)
    m = read_manifest(out)
    if m is None:
        raise FileNotFoundError(f"{out}: no {MANIFEST}; not an output directory of `dmat generate`")
    paths = [out / shard_name(i) for i in range(m["num_shards"])]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"{out}: {len(missing)} of {len(paths)} shards missing ({', '.join(missing[:5])}"
                         f"{', ...' if len(missing) > 5 else ''}): run the same `dmat generate` again to finish")
    for p in paths:
        why = _shard_problem(p, m["shards"].get(p.name), full=verify == "sha256")
        if why:
            raise ValueError(f"{p}: {why}: run the same `dmat generate` again to make it anew")
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
    paths, merged = shard_paths(out_dir, verify="size"), Path(merged)
    if merged.exists() and not overwrite:
        if _is_merge_of(merged, paths):
            return "up to date"
        raise FileExistsError(f"{merged} exists and is not the merge of {out_dir}: choose another "
                              "file or pass --overwrite")
    merge_generated(paths, merged, num_classes=read_manifest(Path(out_dir))["num_classes"], shape=None)
    return "merged"


def _finished_merge(out_dir, merged: Path) -> bool:
    """Whether `merged` is already the merge of the finished run in `out_dir`."""
    try:
        return _is_merge_of(merged, shard_paths(out_dir, verify="size"))
    except (ValueError, FileNotFoundError):
        return False


def generate(denoiser, out_dir, n: Optional[int] = None, *, merge_to=None,
             check_outputs: Optional[Callable[[dict], None]] = None, **kwargs) -> dict:
    """Run :func:`generate_shards` to the end (under `torchrun`, DDP set up here: gloo on CPU, nccl
    on CUDA), then, on rank 0, merge into `merge_to` if given. `merge_to` is checked before any image
    is made (an existing file that is not this run's merge is refused unless `overwrite`; its folder
    writable, its size free), and so are the caller's outputs (``check_outputs(manifest)``).
    Returns a summary (every rank): images/s is the sum over ranks of each rank's images over its
    generation seconds."""
    rank, world, local = dist_info()

    def outputs_ok(m: dict) -> None:
        if merge_to is not None:
            check_out_file(merge_to, flag="--merge", overwrite=kwargs.get("overwrite", False),
                           size=m["n"] * bytes_per_image(m) + _SHARD_OVERHEAD,
                           mine=lambda p: _finished_merge(out_dir, p))
        if check_outputs is not None:
            check_outputs(m)
    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        cuda = torch.cuda.is_available() and not str(kwargs.get("device") or "").startswith("cpu")
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
    try:
        made = list(generate_shards(denoiser, out_dir, n, check_outputs=outputs_ok, **kwargs))
        images, sec = sum(s["images"] for s in made), sum(s["seconds"] for s in made)
        device = "cuda" if dist.is_initialized() and dist.get_backend() == "nccl" else "cpu"
        images, shards, rate, repaired = all_reduce_sum(
            [images, len(made), images / sec if sec else 0.0, sum(s["repaired"] for s in made)], device)
        _barrier()                                        # every shard written before the merge
        merged = merge(out_dir, merge_to, kwargs.get("overwrite", False)) \
            if merge_to is not None and rank == 0 else None
        _barrier()
        m = read_manifest(Path(out_dir))
        return {"out_dir": str(out_dir), "num_shards": m["num_shards"], "n": m["n"],
                "shards_made": int(shards), "shards_repaired": int(repaired), "images_made": int(images),
                "generation_seconds": sec,
                "images_per_s": rate or None, "nfe_per_image": m["nfe_per_image"], "world_size": world,
                "merged": str(merge_to) if merged else None, "merge": merged}
    finally:
        if own_group:
            dist.destroy_process_group()
