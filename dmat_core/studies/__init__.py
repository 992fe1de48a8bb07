"""Layer 6 -- the experiments that write ``results/``: the known-density demo (``demo``), AT for
diffusion models measured exactly (``at_dm_setup`` < ``at_dm_report`` < ``at_dm_study``) and
generated data for adversarial training measured exactly (``at_classifier_setup`` <
``at_classifier_report`` < ``at_classifier_study``). Each registers its ``dmat`` sub-command."""
