"""Layer 3 -- diffusion models on images: CIFAR-10, the U-Net, training, generation, quality.

``cifar`` (the python-format archive through the safe unpickler), ``gendata`` and ``data``
(generated ``.npz`` sets, the mixed real/generated batches of Wang et al.), ``pixels`` (uint8
images <-> model scale, corruption, grids), ``unet`` (class-conditional EDM U-Net),
``dm_config`` and ``dm_train`` (EDM training, optionally with AT for diffusion models: Briglia
et al. on images), ``generate`` (resumable class-balanced shards: the data that improves
adversarial training), ``quality`` (a classifier's accuracy on samples, filtering, FID),
``trajectory`` (attacks on an image sampler's trajectory).
"""
