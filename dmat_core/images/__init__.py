"""Layer 3 -- diffusion models on images: CIFAR-10, the digits, the U-Net, training, generation, quality.

``cifar`` (the python-format archive through the safe unpickler), ``digits`` (scikit-learn's
8x8 handwritten digits, real images without a download), ``datasets`` (every dataset by name: its
shape, classes, augmentation and loader), ``gendata`` and ``data``
(generated ``.npz`` sets, the mixed real/generated batches of Wang et al.), ``pixels`` (uint8
images <-> model scale, corruption, grids), ``unet`` (class-conditional EDM U-Net),
``dm_config`` and ``dm_train`` (EDM training, optionally with AT for diffusion models: Briglia
et al. on images), ``generate`` (resumable class-balanced shards: the data that improves
adversarial training), ``quality`` (a classifier's accuracy on samples, filtering, FID, the
Frechet distance in a classifier's features),
``trajectory`` (attacks on an image sampler's trajectory).
"""
