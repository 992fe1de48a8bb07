"""The model and run cache of the AT-for-DMs study: what is trained or measured once is reused by
every study and sweep setting that needs it (``--cache DIR`` of ``dmat toy at-dm-study``).

Standard training does not depend on the AT options, nor does any model on how it is sampled: a
sweep over the budget floor trains the standard model of a seed (and measures the baselines built
on it) once, not once per floor, and a sweep over the sampler's sigma_min trains nothing again.
Every file is keyed by exactly what it depends on:

    models/<key>.pt          a toy run (:func:`~dmat_core.toys.nets.save_toy_run`, format
                             dmat-toy-run/1): the final EMA denoiser, its settings, its history;
                             settings = the training keys of the configuration (:data:`TRAIN_KEYS`),
                             the seed and the AT options the loss uses (:func:`effective_at`);
    models/<key>-step<k>.pt  the EMA snapshot at step k of the same run (standard training);
    runs/<key>.json          one measured arm of one seed, {"format": "dmat-at-dm-run/1",
                             "settings": ..., "run": ...}: settings = everything in the
                             configuration a measurement depends on, the arm, the seed, its AT options;
    values/<key>.json        one measurement of a model that does not depend on how it is sampled (its
                             exact likelihoods, a baseline's tuned knob), {"format":
                             "dmat-at-dm-value/1", "settings": ..., "value": ...}: settings = the
                             model's, the measurement's name and what it reads (:func:`memo`). A sweep
                             over the sampler's sigma_min computes each of them once, not once per sigma_min.

A key is the first 20 hex digits of the SHA-256 of the settings as sorted JSON; each file holds its
settings too, and a file at a key whose settings or kind are not what the key says is refused in
one line (never used, never overwritten): :func:`check_cache` reads every file a study would
read before any work starts. Writes are atomic, so studies running side by side may share a cache.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np

from ..common.checkpoint import atomic_write_text
from ..common.settings import SettingsError, read_json_file
from ..toys.nets import TOY_RUN_FORMAT, load_toy_run, save_toy_run

RUN_FORMAT = "dmat-at-dm-run/1"
VALUE_FORMAT = "dmat-at-dm-value/1"
TRAIN_KEYS = ("dist", "dist_kw", "corruption", "p", "s", "q", "outlier", "width", "depth", "lr", "ema",
              "P_mean", "P_std", "n_train", "steps", "batch")
NOT_MEASURED = ("cost_steps", "preset", "size")            # no run depends on these
BASELINE_ONLY = ("shrink_sigmas", "snapshot_fracs", "tune_n")   # only the baselines depend on these


def effective_at(at: dict) -> dict:
    """The AT options a loss actually uses: standard training uses none but the weighting of its
    denoising loss, so the standard model is the same for every budget floor."""
    if at["variant"] == "standard" or at.get("lam") == 0:
        return {"variant": "standard", "weighting": at["weighting"]}
    return dict(at)


def model_settings(cfg: dict, seed: int, at: dict) -> dict:
    """What a trained model depends on."""
    return {**{k: cfg[k] for k in TRAIN_KEYS}, "seed": seed, "at": effective_at(at)}


def run_settings(cfg: dict, seed: int, arm: str, at: dict, baseline: bool) -> dict:
    """What one measured run depends on (the baselines also on how they are tuned)."""
    drop = NOT_MEASURED + (() if baseline else BASELINE_ONLY)
    return {**{k: v for k, v in cfg.items() if k not in drop}, "arm": arm, "seed": seed,
            "at": effective_at(at)}


def key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def _plain(settings: dict) -> dict:
    return json.loads(json.dumps(settings, sort_keys=True))


def model_path(cache, settings: dict, step: int | None = None) -> Path:
    return Path(cache) / "models" / (key(settings) + ("" if step is None else f"-step{step}") + ".pt")


def run_path(cache, settings: dict) -> Path:
    return Path(cache) / "runs" / f"{key(settings)}.json"


def load_model(cache, settings: dict, step: int | None = None):
    """(denoiser, history) cached for these settings (and snapshot step), or None if absent;
    ValueError naming the file if it is there but of another kind or other settings."""
    path = model_path(cache, settings, step)
    if not path.exists():
        return None
    want = {**_plain(settings), **({} if step is None else {"snapshot_step": step})}
    try:
        model, saved, history = load_toy_run(path)
    except ValueError as e:
        raise ValueError(f"{e}; the model cache holds only files of dmat toy at-dm-study "
                         f"({TOY_RUN_FORMAT}): move it away or use another --cache") from None
    if saved != want:
        raise ValueError(f"{path}: a toy run of other settings than its name says; "
                         "the cache was changed by hand: move it away or use another --cache")
    return model, history


def save_model(cache, settings: dict, model, history, step: int | None = None) -> None:
    path = model_path(cache, settings, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_toy_run(path, model, {**_plain(settings), **({} if step is None else {"snapshot_step": step})},
                 history)


def load_run(cache, settings: dict):
    """The measured run cached for these settings (its 2D view as a float32 array), or None;
    ValueError naming the file if it is of another kind or other settings."""
    path = run_path(cache, settings)
    if not path.exists():
        return None
    try:
        d = read_json_file(path, "cached run")
    except SettingsError as e:
        raise ValueError(f"{e}; move it away or use another --cache") from None
    if d.get("format") != RUN_FORMAT or not isinstance(d.get("run"), dict):
        raise ValueError(f"{path}: not a cached run of at-dm-study (format {d.get('format')!r}, "
                         f"expected {RUN_FORMAT!r}); move it away or use another --cache")
    if d.get("settings") != _plain(settings):
        raise ValueError(f"{path}: a cached run of other settings than its name says; "
                         "the cache was changed by hand: move it away or use another --cache")
    run = copy.deepcopy(d["run"])
    run["view"] = np.asarray(run["view"], dtype=np.float32)
    return run


def save_run(cache, settings: dict, run: dict) -> None:
    path = run_path(cache, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = {**run, "view": np.asarray(run["view"]).tolist()}
    atomic_write_text(path, json.dumps({"format": RUN_FORMAT, "settings": _plain(settings), "run": plain},
                                       default=float) + "\n")


def memo(cache, settings: dict, compute):
    """compute() (a JSON-able value: numbers, lists, dicts), read from values/<key>.json when it is
    there for exactly these settings, else computed and written atomically. No cache: computed.
    ValueError naming the file if it is of another kind or other settings."""
    if cache is None:
        return compute()
    path = Path(cache) / "values" / f"{key(settings)}.json"
    if path.exists():
        try:
            d = read_json_file(path, "cached value")
        except SettingsError as e:
            raise ValueError(f"{e}; move it away or use another --cache") from None
        if d.get("format") != VALUE_FORMAT or "value" not in d:
            raise ValueError(f"{path}: not a cached value of at-dm-study (format {d.get('format')!r}, "
                             f"expected {VALUE_FORMAT!r}); move it away or use another --cache")
        if d.get("settings") != _plain(settings):
            raise ValueError(f"{path}: a cached value of other settings than its name says; "
                             "the cache was changed by hand: move it away or use another --cache")
        return d["value"]
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"format": VALUE_FORMAT, "settings": _plain(settings), "value": value},
                                       default=float) + "\n")
    return json.loads(json.dumps(value, default=float))        # as a later read returns it


def check_cache(cache, models=(), runs=()) -> None:
    """Before any work: the cache is a folder (or absent), and every file the study would read (the
    models `models`: [(settings, step or None)], the runs `runs`: [settings]) that is there is of
    the right kind and settings; ValueError (one line) otherwise. Reads only."""
    if cache is None:
        return
    root = Path(cache)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"--cache {root} is a file; a folder is expected")
    for settings, step in models:
        load_model(root, settings, step)
    for settings in runs:
        load_run(root, settings)


__all__ = ["effective_at", "model_settings", "run_settings", "key", "load_model", "save_model",
           "load_run", "save_run", "memo", "check_cache", "TRAIN_KEYS"]
