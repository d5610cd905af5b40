"""Experiments that run several trainings: refit, cascades, scaling sweeps (later distillation); they sit above genrec.training."""
