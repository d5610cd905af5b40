"""Runs made of trainings: a config's run with its refit (:mod:`.run`, with the run-folder lock in
:mod:`.run_folder`), cascades, scaling sweeps, distillation and tuning. They sit above
:mod:`genrec.training` and below the CLI."""
