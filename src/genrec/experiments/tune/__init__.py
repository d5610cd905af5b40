"""``genrec tune``: hyper-parameter search on validation with Optuna (TPE, pruning on the
validation curve, the study in a database so it resumes and several processes can share it).

- :mod:`.space`: the search space file (dotted config keys -> distributions), validated;
- :mod:`.trial`: one trial, an ordinary run folder that never reads the test split;
- :mod:`.study`: the study (storage, sampler, pruner, recovery of interrupted trials, plots,
  best.yaml, the one test of the selected config).
"""

try:
    import optuna  # noqa: F401
except ImportError as exc:  # an optional extra
    from genrec.errors import GenrecError

    raise GenrecError("genrec tune needs Optuna: pip install 'genrec[tune]' (or pip install optuna)") from exc

from genrec.experiments.tune.space import Space, with_params
from genrec.experiments.tune.study import TuneSettings, tune

__all__ = ["Space", "TuneSettings", "tune", "with_params"]
