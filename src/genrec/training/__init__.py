"""Training: the trainer (one task on one model), execution strategies, tasks, losses, the resolved
build spec, precision and curves. Checkpoint I/O is in :mod:`genrec.checkpoint`."""
