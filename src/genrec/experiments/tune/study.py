"""A tuning study from start to finish: open (or continue) the Optuna study, recover interrupted
trials, run trials until the study has ``trials`` finished ones, plot it, write ``best.yaml``
and test the selected config once.

Folder layout (``OUT``):

- ``study.db``        the Optuna study (SQLite) unless ``--storage`` names another database;
- ``study.json``      which study and storage this folder belongs to;
- ``.tune.lock``      processes sharing the folder take turns on it to open and to conclude the study;
- ``trials/NNNN/``    one ordinary run folder per trial (validation only, see :mod:`.trial`);
- ``history.png``, ``importances.png``, ``intermediate.png``   the study's plots;
- ``trials.md``       every trial's state, validation value, epochs, minutes and parameters; the study's cost;
- ``best.yaml``       the best trial's config, frozen, with the commands that reproduce it;
- ``final/``          the selected model tested once (a run folder: metrics.json, best/).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shlex
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import sqlalchemy.exc

from genrec import jsonio
from genrec.config import ExperimentConfig, load_config, run_name
from genrec.data.prepare import load_prepared, prepare
from genrec.errors import ConfigError, GenrecError
from genrec.experiments.tune.conclude import FINISHED, evaluate_final, following, plot_study, write_best, write_trials
from genrec.experiments.tune.space import Space, left_out
from genrec.experiments.tune.trial import Objective, recover_interrupted
from genrec.training import distributed

MACHINE_KEYS = {"data": ("source", "cache_dir"), "train": ("device", "num_threads")}
"""Config fields that may differ between the processes or machines tuning one study."""


@dataclass
class TuneSettings:
    trials: int
    """Finished (complete or pruned) trials the study should have; a rerun continues up to it."""
    storage: str | None = None
    """Optuna RDB URL (default ``sqlite:///OUT/study.db``)."""
    study: str | None = None
    """Study name (default: the config's name)."""
    timeout: float | None = None
    """Start no new trial after this many seconds."""
    pruner: str = "median"
    """``median``, ``halving`` (successive halving) or ``none``."""
    warmup: int = 10
    """The earliest epoch at which a trial may be pruned (halving: its first rung)."""
    seed: int | None = None
    """Sampler seed (default ``train.seed``), combined with how many processes opened the study before."""

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"--trials {self.trials} must be >= 1")
        if self.pruner not in ("median", "halving", "none"):
            raise ConfigError(f"--pruner {self.pruner!r} is not one of ['median', 'halving', 'none']")
        if self.warmup < 0:
            raise ConfigError(f"--warmup {self.warmup} must be >= 0")


def tune(config: str, overrides: list[str], space_file: str, out: str | None, settings: TuneSettings) -> dict:
    """Run (or continue) a study; return its summary, with ``best_yaml`` and ``final`` (the test
    metrics.json) once it has ``settings.trials`` finished trials."""
    base = load_config(config, overrides)
    if base.task.kind == "cascade" or base.train.item_table != "local" or distributed.world_size() > 1:
        raise ConfigError("genrec tune trains one model per trial in one process: no cascades, sharded tables or "
                          "torchrun (to tune in parallel, start several tune processes on one --storage)")
    space = Space.load(space_file, base)
    out = Path(out or f"runs/tune-{run_name(base)}")
    out.mkdir(parents=True, exist_ok=True)
    url = settings.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    with _turn(out):  # processes sharing OUT open the study and recover its trials one at a time
        name = _bind_folder(out, settings.study or base.name, url)
        storage = _storage(url)
        study = _open_study(storage, url, name, base, space, settings, left_out(config, overrides, base))
        recover_interrupted(study, storage, out)
    data = load_prepared(prepare(base.data))
    remaining = settings.trials - len(study.get_trials(deepcopy=False, states=FINISHED))
    if remaining > 0:
        study.optimize(Objective(base, space, out, data, following(study)), n_trials=remaining, timeout=settings.timeout,
                       callbacks=[optuna.study.MaxTrialsCallback(settings.trials, states=FINISHED)],
                       catch=(GenrecError,), gc_after_trial=True)
    with _turn(out):  # processes that stop together take turns: the later one finds the study concluded
        plot_study(study, out)
        write_trials(study, out, base.train.num_threads)
        summary = _summary(study, url, base.eval.select_metric)
        if _finished(summary, settings.trials):
            command = tune_command(config, overrides, space_file, out, settings)
            summary["best_yaml"] = str(write_best(study, base, out, summary["complete"] + summary["pruned"], command))
            summary["final"] = evaluate_final(study, base, out, data, summary, command)
    return summary


def _finished(summary: dict, trials: int) -> bool:
    """Whether the study is finished (else say why not): the test waits for the whole study."""
    done = summary["complete"] + summary["pruned"]
    if summary["complete"] == 0:
        print(f"tune: no trial of study {summary['study']!r} completed yet; nothing selected", file=sys.stderr)
    elif done < trials:
        print(f"tune: {done}/{trials} trials finished; the test split is evaluated once the study is finished: "
              "run the same command again to continue", file=sys.stderr)
    elif summary["running"]:
        print(f"tune: {summary['running']} trial(s) still running in other processes; the last process to finish "
              "writes best.yaml and tests the selected config", file=sys.stderr)
    else:
        return True
    return False


def tune_command(config: str, overrides: list[str], space_file: str, out: Path, s: TuneSettings) -> str:
    parts = ["genrec", "tune", config, *overrides, "--space", space_file, "--trials", str(s.trials), "--out", str(out)]
    for flag, value, default in (("--storage", s.storage, None), ("--study", s.study, None), ("--pruner", s.pruner, "median"),
                                 ("--warmup", s.warmup, 10), ("--seed", s.seed, None)):
        if value != default:
            parts += [flag, str(value)]
    return shlex.join(parts)


@contextlib.contextmanager
def _turn(out: Path) -> Iterator[None]:
    """Exclusive among the processes tuning into ``out`` (blocking; released when the process ends, however)."""
    with open(out / ".tune.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _storage(url: str) -> optuna.storages.RDBStorage:
    """The study database, created on first use. Processes that start together on a new database
    (from different folders) race to create its tables; the loser retries."""
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {})
        except sqlalchemy.exc.SQLAlchemyError:
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


def _bind_folder(out: Path, name: str, url: str) -> str:
    """Trial folders are named by trial number, so a folder serves one study: ``name``."""
    path = out / "study.json"
    if path.exists():
        held = json.loads(path.read_text())
        if held["study"] != name:
            raise ConfigError(f"{out} holds study {held['study']!r} ({held['storage']}); choose another --out for {name!r}")
    else:
        path.write_text(json.dumps({"study": name, "storage": url}, indent=2) + "\n")
    return name


def _open_study(storage: optuna.storages.RDBStorage, url: str, name: str, base: ExperimentConfig, space: Space,
                s: TuneSettings, follow: list[str]) -> optuna.Study:
    """Create or load the study; check that a continued study has the same config and space; record
    which model fields follow the trials' values (``follow``, at creation only: a study started
    before genrec recorded them goes on keeping the base config's values, as its trials did); seed
    the sampler from (``seed``, how many processes have opened the study): a resumed sampler, or a
    second process, must not replay the start-up points proposed before."""
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True)
    if "config" not in study.user_attrs:  # a new study
        study.set_user_attr("follow", follow)
    for key, value in (("config", _fixed(base)), ("space", space.canonical)):
        held = study.user_attrs.get(key)
        if key == "config" and held is not None:
            held = _with_new_defaults(held, value, base.model.name)
        if held is None:
            study.set_user_attr(key, value)
        elif held != value:
            raise ConfigError(f"study {name!r} in {url} was started with another {key}"
                              f"{_difference(held, value) if key == 'config' else ''}; use a new --study or --out")
    starts = study.user_attrs.get("starts", 0) + 1  # under _turn: each process of one folder counts once
    study.set_user_attr("starts", starts)
    seed = int(np.random.SeedSequence([base.train.seed if s.seed is None else s.seed, starts]).generate_state(1)[0])
    return optuna.load_study(study_name=name, storage=storage, sampler=_sampler(seed, s.trials), pruner=_pruner(s))


def _sampler(seed: int, trials: int) -> optuna.samplers.TPESampler:
    """Multivariate TPE (``group``: keys with ``when`` form their own groups); a quarter of the
    trials (2 to 10) are random start-up points; a constant liar keeps parallel processes from
    proposing the point another is running."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, trials // 4)),
                                          multivariate=True, group=True, constant_liar=True)


def _pruner(s: TuneSettings) -> optuna.pruners.BasePruner:
    """Median: stop a trial whose best validation so far is below the median of the finished
    trials at the same epoch (after 2 finished trials, from epoch ``warmup``). Halving: keep the
    top third at epochs warmup, 3·warmup, 9·warmup, ..."""
    if s.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=s.warmup)
    if s.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, s.warmup), reduction_factor=3)
    return optuna.pruners.NopPruner()


def _fixed(base: ExperimentConfig) -> dict:
    raw = base.to_dict()
    for section, keys in MACHINE_KEYS.items():
        for key in keys:
            raw[section].pop(key)
    return json.loads(jsonio.dumps(raw))  # as the storage gives it back (tuples as lists)


def _with_new_defaults(held: dict, new: dict, model: str) -> dict:
    """``held`` (a study's stored base config) with the fields and sections it lacks taken from
    ``new`` where ``new`` holds their default: added to genrec after the study started, at their
    default, they change nothing the trials ran (set to anything else they still differ, and are
    refused)."""
    missing = [(section, None) for section in new if section not in held]
    missing += [(section, name) for section, fields in new.items() if isinstance(fields, dict) and isinstance(held.get(section), dict)
                for name in fields if name not in held[section]]
    if not missing:
        return held
    defaults = _fixed(ExperimentConfig.from_dict({"model": {"name": model}}))
    held = {section: dict(fields) if isinstance(fields, dict) else fields for section, fields in held.items()}
    for section, name in missing:
        if name is None:
            if section in defaults and defaults[section] == new[section]:
                held[section] = new[section]
        elif name in defaults.get(section, {}) and defaults[section][name] == new[section][name]:
            held[section][name] = new[section][name]
    return held


def _difference(held: dict, new: dict) -> str:
    keys = [section for section, value in new.items() if not isinstance(value, dict) and held.get(section) != value]
    keys += [f"{section}.{key}" for section, fields in new.items() if isinstance(fields, dict)
             for key, value in fields.items() if held.get(section, {}).get(key) != value]
    return f" (differs in {', '.join(keys[:5])})" if keys else ""


def _summary(study: optuna.Study, url: str, metric: str) -> dict:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    count = {s.name.lower(): states.count(s) for s in optuna.trial.TrialState}
    summary = {"study": study.study_name, "storage": url, "metric": f"valid {metric}",
               "complete": count["complete"], "pruned": count["pruned"], "failed": count["fail"], "running": count["running"]}
    if count["complete"]:
        best = study.best_trial
        summary["best"] = {"trial": best.number, "value": best.value, "params": best.params,
                           "best_epoch": best.user_attrs.get("best_epoch")}
    return summary


