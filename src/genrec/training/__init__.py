"""Training: losses, checkpoints and the trainer (a recipe over the library)."""
