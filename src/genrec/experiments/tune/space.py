"""A search space file: dotted config keys, each with the distribution Optuna samples it from.

.. code-block:: yaml

    train.lr: {type: float, low: 3.0e-4, high: 3.0e-3, log: true}
    model.num_layers: {type: int, low: 2, high: 4}
    model.dropout: {type: float, low: 0.1, high: 0.6, step: 0.1}
    train.loss: {type: categorical, choices: [sampled_softmax, full_softmax]}
    train.num_negatives: {type: int, low: 64, high: 1024, log: true, when: {train.loss: sampled_softmax}}

``when`` makes a key conditional on an earlier categorical key (a value or a list of values):
a trial that does not meet it leaves the key at the base config's value and Optuna never samples
it, so TPE's model of it sees only the trials where it mattered. Keys must name existing fields of
``model``, ``train`` or ``task``; ``data`` and ``eval`` are fixed for a study (they change what the
validation metric measures) and so are ``model.name`` and ``train.seed``. Every bound and choice
is checked against the base config when the file is loaded, so a bad value fails before any trial
runs, with an error that names the key.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from genrec.config import ExperimentConfig, apply_overrides
from genrec.errors import ConfigError

TUNABLE_SECTIONS = ("model", "train", "task")
FIXED_KEYS = {
    "model.name": "a study tunes one backbone; run one study per model",
    "train.seed": "tuning the seed selects a lucky draw of noise, not a better config",
    "train.refit": "trials never refit (it reads the test split); best.yaml keeps the base config's value",
}
SPEC_KEYS = {"type", "low", "high", "log", "step", "choices", "when"}


@dataclass(frozen=True)
class Param:
    key: str
    """Dotted config key (``train.lr``); also the Optuna parameter name."""
    type: str
    """``float``, ``int`` or ``categorical``."""
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    """Sample on a log scale (``low`` > 0)."""
    step: float | int | None = None
    """Grid spacing from ``low`` (not with ``log``)."""
    choices: tuple = ()
    when: dict[str, tuple] = field(default_factory=dict)
    """Earlier categorical key -> the values under which this key is sampled."""

    def suggest(self, trial) -> Any:
        """Sample the value for an Optuna trial."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def extremes(self) -> list:
        """Values that bound what this key can take (checked against the config at load time)."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]


@dataclass(frozen=True)
class Space:
    params: tuple[Param, ...]
    canonical: str
    """The parsed file as JSON (stored in the study, so that a continued study is checked to search
    the same space; comments may change)."""

    @classmethod
    def load(cls, path: str | Path, base: ExperimentConfig) -> "Space":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"search space {path} does not exist")
        text = path.read_text()
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"search space {path}: not valid YAML ({exc})") from exc
        if not isinstance(raw, dict) or not raw:
            raise ConfigError(f"search space {path}: expected a mapping of dotted config keys to distributions")
        params: list[Param] = []
        for key, spec in raw.items():
            try:
                params.append(_param(str(key), spec, {p.key: p for p in params}, base))
            except ConfigError as exc:
                raise ConfigError(f"search space {path}: {exc}") from None
        return cls(tuple(params), json.dumps(raw))

    def suggest(self, trial) -> dict[str, Any]:
        """The trial's values for every key whose ``when`` holds (in file order)."""
        values: dict[str, Any] = {}
        for p in self.params:
            if all(values.get(k) in allowed for k, allowed in p.when.items()):
                values[p.key] = p.suggest(trial)
        return values


def with_params(base: ExperimentConfig, params: dict[str, Any], follow: tuple[str, ...] | list[str] = ()) -> ExperimentConfig:
    """``base`` with dotted keys set (validated as any config; ``base`` is not modified). ``follow``:
    model fields the base config left out (:func:`left_out`), derived again from the trial's
    values unless ``params`` sets them, as they would be in a config written with those values."""
    raw = base.to_dict()
    for name in follow:
        if f"model.{name}" not in params:
            raw["model"][name] = 0
    for key, value in params.items():
        section, name = key.split(".", 1)
        raw[section][name] = value
    return ExperimentConfig.from_dict(raw)


def left_out(config: str | Path, overrides: list[str], base: ExperimentConfig) -> list[str]:
    """The model fields of ``base`` that follow others (:meth:`~genrec.models.base.ModelConfig.derived`,
    e.g. SASRec's ``ffn_dim`` = ``embedding_dim``) and that the config file and ``overrides`` leave
    out (or set to 0): a trial that searches the width derives them from its own values."""
    raw = apply_overrides(yaml.safe_load(Path(config).read_text()) or {}, overrides)
    given = raw.get("model") or {}
    return [name for name in base.model.derived() if not given.get(name)]


def _param(key: str, spec: Any, earlier: dict[str, Param], base: ExperimentConfig) -> Param:
    current = _check_key(key, base)
    if not isinstance(spec, dict):
        raise ConfigError(f"{key}: expected a mapping like {{type: float, low: 0.1, high: 0.5}}, got {spec!r}")
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ConfigError(f"{key}: unknown fields {sorted(unknown)}; known: {sorted(SPEC_KEYS)}")
    kind = spec.get("type")
    if kind not in ("float", "int", "categorical"):
        raise ConfigError(f"{key}: type={kind!r} is not one of ['float', 'int', 'categorical']")
    when = _when(key, spec.get("when") or {}, earlier)
    if kind == "categorical":
        choices = spec.get("choices")
        if set(spec) & {"low", "high", "log", "step"}:
            raise ConfigError(f"{key}: a categorical takes choices only, not low/high/log/step")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{key}: categorical needs a non-empty list of choices")
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise ConfigError(f"{key}: choices must be numbers, strings, booleans or null, got {choices!r}")
        param = Param(key, kind, choices=tuple(choices), when=when)
    else:
        if kind == "float" and isinstance(current, int) and not isinstance(current, bool):
            raise ConfigError(f"{key} is an integer field: use type: int")
        param = Param(key, kind, *_range(key, kind, spec), when=when)
    _check_values(param, base)
    return param


def _check_key(key: str, base: ExperimentConfig) -> Any:
    """The key's value in ``base``, after checking that the key may be tuned."""
    section, _, name = key.partition(".")
    if key in FIXED_KEYS:
        raise ConfigError(f"{key} cannot be tuned: {FIXED_KEYS[key]}")
    if section not in TUNABLE_SECTIONS or not name:
        raise ConfigError(f"{key}: tunable keys are model.*, train.* or task.* (data and eval are fixed for a study: "
                          "they change what the validation metric measures)")
    fields = base.to_dict()[section]
    if name not in fields:
        raise ConfigError(f"{key} is not a config field; {section} has {sorted(fields)}")
    return fields[name]


def _range(key: str, kind: str, spec: dict) -> tuple:
    if set(spec) & {"choices"}:
        raise ConfigError(f"{key}: choices are for type: categorical")
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    number = int if kind == "int" else (int, float)
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value):
            raise ConfigError(f"{key}: {name}={value!r} must be {'an integer' if kind == 'int' else 'a number'}")
    if low > high:
        raise ConfigError(f"{key}: low={low} is above high={high}")
    if not isinstance(log, bool):
        raise ConfigError(f"{key}: log={log!r} must be true or false")
    if log and low <= 0:
        raise ConfigError(f"{key}: log=true needs low > 0, got low={low}")
    if step is not None:
        if log:
            raise ConfigError(f"{key}: step and log=true cannot be combined")
        if isinstance(step, bool) or not isinstance(step, number) or step <= 0:
            raise ConfigError(f"{key}: step={step!r} must be a positive {'integer' if kind == 'int' else 'number'}")
    return low, high, log, step


def _when(key: str, when: Any, earlier: dict[str, Param]) -> dict[str, tuple]:
    if not isinstance(when, dict):
        raise ConfigError(f"{key}: when must map an earlier categorical key to its value(s), got {when!r}")
    out = {}
    for other, values in when.items():
        ref = earlier.get(other)
        if ref is None or ref.type != "categorical":
            raise ConfigError(f"{key}: when names {other!r}, which is not a categorical key earlier in the file")
        values = tuple(values) if isinstance(values, list) else (values,)
        bad = [v for v in values if v not in ref.choices]
        if bad:
            raise ConfigError(f"{key}: when {other} in {list(values)}: {bad} not among {other}'s choices {list(ref.choices)}")
        out[other] = values
    return out


def _check_values(param: Param, base: ExperimentConfig) -> None:
    """Each bound or choice, alone on the base config, must make a valid config."""
    for value in param.extremes():
        try:
            with_params(base, {param.key: value})
        except ConfigError as exc:
            raise ConfigError(f"{param.key}: {value!r} does not make a valid config ({exc})") from None
