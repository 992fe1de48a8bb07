"""Layer 0 -- files, processes and settings that every trainer and study shares.

``checkpoint`` (atomic writes, ``weights_only`` loading, RNG state), ``safe_pickle`` (an
unpickler of plain data only), ``download`` (atomic, checksummed), ``settings`` (typed settings:
strict types and ranges on pydantic, one-line errors, presets < JSON file < flags; the device flag,
budgets such as ``8/255``), ``outputs`` (the output policy: outputs checked before any work,
another run's refused unless ``--overwrite``; OS errors in one line), ``train_utils`` (EMA, schedules,
DDP helpers, CSV logs), ``training`` (the training skeleton every trainer runs: loop,
checkpoint cadence, resume or start over, autocast, non-finite checks), ``notebook`` (quick mode, device, paths). Imports nothing of dmat_core.
"""
