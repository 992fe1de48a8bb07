"""dmat_core: diffusion models and adversarial training, both ways, measured exactly where possible.

One subpackage per layer, bottom to top; a module imports only from its own subpackage and the
ones before it in ``LAYERS`` (``tests/test_layers.py`` checks every import, README's package
table lists the same order):

    common     files, processes, settings shared by every trainer
    diffusion  EDM math, samplers, the denoising loss and AT for diffusion models, flow measures
    toys       known densities: exact scores, corruption, exact metrics, toy nets and trainer
    images     CIFAR-10 and generated data, the U-Net, image DM training, generation, quality
    robust     attacks, TRADES / PGD-AT, classifiers, AutoAttack; exact robust accuracy in 2D
    viz        plots for the notebooks
    exercises  the notebooks' exercises: checks against exact answers or dmat's own code, solutions
    studies    the demo and the two exact studies that write results/
    cli        the `dmat` command line
"""
__version__ = "0.1.0"

LAYERS = ("common", "diffusion", "toys", "images", "robust", "viz", "exercises", "studies", "cli")
