"""Layer 7 -- the experiments that write ``results/``: the known-density demo (``demo``), AT for
diffusion models measured exactly (``at_dm_setup`` < ``at_dm_measure`` (one model against the clean
density) < ``at_dm_baselines`` (Tweedie shrinkage, early stopping, the ideal standard model) <
``at_dm_cache`` (trained models and measured runs shared between studies) < ``at_dm_summary`` (the
cross-setting summary: AT works only where it beats every baseline) < ``at_dm_report`` <
``at_dm_study`` < ``at_dm_sweep`` (the floor x noise x sampler sweep)),
generated data for adversarial training measured exactly (``at_classifier_setup`` <
``at_classifier_report`` < ``at_classifier_study``) and the same question in any dimension on the
closed-form Gaussian world, with Gaussian generators and affine diffusion models, and MLP
diffusion models scored by their exact likelihood where d <= 8 (``gen_data_setup`` <
``gen_data_report`` < ``gen_data_mlp`` < ``gen_data_study``); both papers on real images on a
CPU, scikit-learn's digits, with paired seeds (``digits_report`` < ``digits_study``). Each
registers its ``dmat`` sub-command."""
