"""Layer 4 -- robust classifiers: attacks, adversarial training on real + generated data, evaluation.

``attacks`` (FGSM, PGD), ``losses`` (TRADES and PGD-AT: Zhang et al., Madry et al.),
``classifiers`` (WRN with the published checkpoint's names, PreActResNet-18, small nets),
``autoattack`` (AutoAttack through ``pyautoattack``), ``config``, ``train`` and ``evaluate``
(the recipe of Wang et al.: TRADES + EMA on CIFAR-10 with generated data, resumable, torchrun),
and the exact half for 2D classifiers: ``exact2d`` (the exact robust accuracy of a classifier),
``optimum2d`` and ``optimum2d_multiclass`` (the best robust accuracy any classifier can reach).
"""
