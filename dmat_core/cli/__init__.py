"""Layer 8 -- the ``dmat`` command line: ``main`` assembles the sub-commands, ``settings`` layers
preset < JSON file < flags < ``--set`` for the trainers, ``train_at``, ``train_dm`` and
``generate`` are the front ends of the long jobs."""
