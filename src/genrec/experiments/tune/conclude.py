"""What a study leaves when it is finished: its plots, ``best.yaml`` (the best trial's config,
frozen) and ``final/`` (the selected model tested once).

The test: the best trial's own ``best/`` checkpoint, copied into ``final/`` and evaluated by the
ordinary :meth:`Trainer.finish` (the model that won on validation, so nothing is retrained and
the number is that model's); when the best trial ran in another folder (another machine sharing
the study), its config is trained afresh into ``final/`` instead. Training is deterministic for a
seed, so on the same kind of machine both give the same model. A continued study whose best trial
changes tests again; ``test_evaluations`` in the protocol counts the tests of this study.
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import optuna
import yaml

from genrec import jsonio
from genrec.config import ExperimentConfig
from genrec.data.prepare import SequenceData
from genrec.experiments.run import add_refit, make_trainer, train_one
from genrec.experiments.run_folder import claim
from genrec.experiments.tune.space import with_params
from genrec.experiments.tune.trial import trial_folder


FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
"""Trial states that count toward a study's ``--trials``."""


def plot_study(study: optuna.Study, out: Path) -> None:
    """history.png, intermediate.png (the validation curves) and importances.png (2+ complete trials)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as vis
    except ImportError:
        print("tune: matplotlib is not installed; no plots", file=sys.stderr)
        return
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    plots = {"history": vis.plot_optimization_history, "intermediate": vis.plot_intermediate_values}
    if len(complete) >= 2:
        plots["importances"] = lambda s: vis.plot_param_importances(s, evaluator=_importance_evaluator())
    else:
        print(f"tune: parameter importances need 2 or more complete trials ({len(complete)} so far); not plotted",
              file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        for name, draw in plots.items():
            try:
                ax = draw(study)
            except (ValueError, RuntimeError) as exc:  # e.g. importances when no parameter varied
                print(f"tune: {name}.png not drawn ({exc})", file=sys.stderr)
                continue
            ax.figure.savefig(out / f"{name}.png", bbox_inches="tight")
            plt.close(ax.figure)


def _importance_evaluator():
    """fANOVA (Optuna's default) needs scikit-learn; PED-ANOVA (Optuna >= 3.6) does not."""
    try:
        import sklearn  # noqa: F401

        return None
    except ImportError:
        return optuna.importance.PedAnovaImportanceEvaluator()


def write_trials(study: optuna.Study, out: Path, threads: int) -> Path:
    """``OUT/trials.md``: one row per trial (state, best validation value and its epoch, epochs
    run, wall minutes, parameters) and the study's cost: the trials' wall time, and that times
    ``threads`` (this process's ``train.num_threads``), a bound on their CPU time when every
    process of the study ran that many. Interrupted trials are not timed (Optuna closes them when
    the study is next opened, so their clock would include the downtime); the trial that resumed
    one is timed for its own part only."""
    rows, minutes, untimed = [], 0.0, 0
    for t in study.get_trials(deepcopy=False):
        values = t.intermediate_values
        if t.state == optuna.trial.TrialState.COMPLETE:
            value, best_epoch = t.value, t.user_attrs.get("best_epoch")
        else:  # a pruned trial's value is its last report, not its best
            best_epoch = max(values, key=values.get) if values else None
            value = values[best_epoch] if values else None
        wall = None
        if t.state in FINISHED and t.datetime_complete and t.datetime_start:
            wall = (t.datetime_complete - t.datetime_start).total_seconds() / 60
            minutes += wall
        elif t.state == optuna.trial.TrialState.FAIL:
            untimed += 1
        ran = t.user_attrs.get("epochs_run") or (max(values) if values else None)
        params = ", ".join(f"{k}={_short(v)}" for k, v in t.params.items())
        rows.append(f"| {t.number} | {t.state.name.lower()} | {'-' if value is None else f'{value:.4f}'} | {best_epoch or '-'} | "
                    f"{ran or '-'} | {'-' if wall is None else f'{wall:.1f}'} | {params} |")
    cpu = (f"at most {minutes * threads / 60:.2f} CPU-hours ({threads} thread(s) per trial, train.num_threads of the process "
           "that wrote this file)") if threads else "CPU time not bounded here (train.num_threads=0: torch's default thread count)"
    text = (f"# Trials of study {study.study_name!r}\n\n"
            "Validation only; best valid: the trial's best validation value (pruned trials: before the pruning), best epoch: "
            "where it was reached, epochs run: the last validated epoch where a trial did not finish. "
            f"Finished trials' wall time {minutes / 60:.2f} h in all; {cpu}"
            + (f"; {untimed} failed or interrupted trial(s) not timed" if untimed else "") + ".\n\n"
            "| trial | state | best valid | best epoch | epochs run | minutes | parameters |\n|---|---|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")
    path = out / "trials.md"
    path.write_text(text)
    return path


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def following(study: optuna.Study) -> list[str]:
    """The model fields this study's trials derive from their own values (``follow`` user
    attribute; none for a study started before genrec recorded it, whose trials kept the base
    config's values)."""
    return list(study.user_attrs.get("follow", []))


def write_best(study: optuna.Study, base: ExperimentConfig, out: Path, finished: int, command: str) -> Path:
    """``OUT/best.yaml``: every field of the best trial's config written out (frozen against
    changes of defaults), with how it was found and how to train it in its header."""
    best = study.best_trial
    cfg = with_params(base, best.params, following(study))
    header = (
        f"# genrec train {out / 'best.yaml'}\n"
        f"# Selected by genrec tune on validation: trial {best.number} of {finished} finished trials, "
        f"valid {base.eval.select_metric} {best.value:.4f} (study {study.study_name!r}).\n"
        f"# Tuned with: {command}\n"
        f"# Parameters: {json.dumps(best.params)}\n"
    )
    path = out / "best.yaml"
    path.write_text(header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path


def evaluate_final(study: optuna.Study, base: ExperimentConfig, out: Path, data: SequenceData, summary: dict, command: str) -> dict:
    """Test the selected config, once, into ``OUT/final``: the best trial's own ``best/`` checkpoint
    when its folder is in ``out`` (the model that won on validation; no retraining), else the
    config trained afresh (the best trial ran on another machine). A continued study tests again
    only if its best trial changed; ``test_evaluations`` counts this study's tests."""
    best, final = study.best_trial, out / "final"
    n = summary["complete"] + summary["pruned"]
    result = json.loads((final / "metrics.json").read_text()) if (final / "metrics.json").exists() else None
    tuning = result["protocol"].get("tuning", {}) if result else {}
    if tuning.get("trial") != best.number:
        cfg, source = with_params(base, best.params, following(study)), trial_folder(out, best.number)
        with claim(final, overwrite=True):
            (final / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            if (source / "metrics.json").exists():
                result, origin = _test_checkpoint(cfg, source, final, data), f"trial {best.number}'s best/ checkpoint"
            else:
                result, origin = train_one(cfg, final, data=data), "trained afresh from best.yaml"
        tuning = {"study": study.study_name, "storage": summary["storage"], "trial": best.number, "valid_best": best.value,
                  "params": best.params, "model_from": origin, "test_evaluations": tuning.get("test_evaluations", 0) + 1}
    metric = base.eval.select_metric
    result["protocol"]["selection"] = (
        f"selected by genrec tune on validation, {n} trials ({summary['complete']} complete, {summary['pruned']} "
        f"pruned): the config by the study's best validation {metric}, the epoch by validation {metric}; "
        "test never used for selection, evaluated once for the selected config")
    result["protocol"]["tuning"] = {**tuning, "trials": n, "command": command}
    jsonio.write_json(final / "metrics.json", result)
    return result


def _test_checkpoint(cfg: ExperimentConfig, source: Path, final: Path, data: SequenceData) -> dict:
    """The trial's best/ into ``final``, validated and tested by the ordinary Trainer.finish."""
    for name in ("best", "log.jsonl", "curves.png"):
        if (source / name).is_dir():
            shutil.copytree(source / name, final / name)
        elif (source / name).exists():
            shutil.copy2(source / name, final / name)
    trial = json.loads((source / "metrics.json").read_text())
    trainer = make_trainer(cfg, final, data)
    trainer.state.update(best_epoch=trial["best_epoch"], epoch=trial["epochs_run"], train_seconds=trial["train_seconds"])
    result = trainer.finish()
    if cfg.train.refit:
        add_refit(trainer, result)
    return result
