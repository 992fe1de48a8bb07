"""Layer 4 -- robust classifiers: attacks, adversarial training on real + generated data, evaluation.

``threat`` (the input contract, budget checks, the ball and the box, ``attack_mode``),
``attacks`` (FGSM; PGD: the bare loop ``pgd_steps`` and ``pgd`` with restarts and keep-best),
``trades`` (TRADES, Zhang et al.: inner maximisation and outer loss) and ``pgd_at`` (PGD-AT,
Madry et al.), each with a one-call ``trades`` / ``pgd_at`` returning ``(loss, parts)``,
``classifiers`` (WRN with the published checkpoint's names, PreActResNet-18, small nets),
``autoattack`` (AutoAttack through ``pyautoattack``), ``config``, ``train`` and ``evaluate``
(the recipe of Wang et al.: TRADES + EMA on CIFAR-10 with generated data, resumable, torchrun),
and the exact half for 2D classifiers: ``exact2d`` (the exact robust accuracy of a classifier),
``optimum2d`` and ``optimum2d_multiclass`` (the best robust accuracy any classifier can reach);
in any dimension, ``linear`` (linear classifiers in the two-class Gaussian world: exact robust
accuracy, the best robust linear classifier, PGD-AT and TRADES with the inner max in closed form).
"""
