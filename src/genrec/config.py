"""Typed experiment configuration: YAML files plus dotted ``key=value`` overrides.

(Over 350 lines on purpose: the whole schema — every section and every field with its
documentation and validation — lives in this one file, so a user reads every key in one place.)

An experiment is ``data`` + ``model`` + ``train`` + ``eval`` + ``task`` (+ ``distill``). The model
section is resolved by its ``name`` to the model's own config dataclass (``HSTUConfig``,
``SASRecConfig``), registered in :mod:`genrec.models`. Every field is documented where it is declared and validated in
``__post_init__`` with an error that names the bad value.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from genrec.errors import ConfigError
from genrec.models import ModelConfig, model_config_class, preset


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {list(choices)}")


@dataclass
class DataConfig:
    dataset: str = "custom"
    """Registered dataset name (see ``genrec datasets``), or ``custom`` for a local log."""
    source: str | None = None
    """``custom``: the log file (CSV, TSV, Parquet, or any registered format; ``.gz`` read directly).
    Registered datasets: a local file, folder or zip to read instead of downloading (offline use)."""
    format: str | None = None
    """Input format: ``csv``, ``parquet`` or one of ``genrec.data.loaders.FORMATS`` (e.g.
    ``movielens-100k``, ``amazon-reviews-json``, ``sequences``). Default: the registered dataset's;
    for ``custom``, ``parquet`` when the file name ends in ``.parquet``, else ``csv``."""
    columns: dict[str, str] = field(default_factory=dict)
    """Generic CSV/Parquet only: maps ``user``/``item`` (required) and ``timestamp``/``rating``
    (optional) to column names (positions 0, 1, ... without a header). Empty: recognised from the
    header by common names (``userId``, ``user_id``, ``movieId``, ``asin``, ``timestamp``, ``ts``,
    ``rating``, ...; ``genrec.data.columns.COLUMN_NAMES``); when given, exactly these are used.
    Times may be unix seconds (integer or decimal) or ISO-8601 dates/date-times (UTC unless offset)."""
    action_columns: list[str] = field(default_factory=list)
    """Generic CSV/Parquet only: numeric feedback columns kept per interaction (e.g. ``click``,
    ``like``, ``watch_time``), the raw material of ranking labels (see ``task.binary_actions``)."""
    delimiter: str = ","
    """Generic CSV only: field separator, one character; ``\\t`` or ``tab`` for a tab (so
    ``data.delimiter='\\t'`` works from a shell)."""
    has_header: bool = True
    """Generic CSV only: whether the first line names the columns (without one, ``data.columns``
    gives positions)."""
    min_user_count: int | None = None
    """Drop users with fewer interactions (None = the registered dataset's protocol, else keep all)."""
    min_item_count: int | None = None
    """Drop items with fewer interactions (None = the registered dataset's protocol, else keep all)."""
    kcore: bool = False
    """Repeat the user/item filters until both hold (iterative k-core); else one pass."""
    raw_integer_ids: bool = False
    """Use integer item ids as they are (catalogue 1..max id), as the HSTU reference does for MovieLens."""
    item_features: str | None = None
    """Item side information (``genrec.data.item_features``): a JSON / CSV / TSV / Parquet / u.item /
    movies.dat file of per-item attributes, or ``auto`` for the registered dataset's own (Beauty,
    Toys: S3-Rec attributes; ML-100K, ML-1M: genres and decade). Read by models with
    ``model.item_features`` set."""
    item_metadata: str = "auto"
    """Item titles and fields stored with every checkpoint (``item_metadata.json``, shown by
    ``genrec serve``; :mod:`genrec.data.item_metadata`): a CSV / TSV / JSON / JSON lines / Parquet /
    u.item / movies.dat file, ``auto`` (the dataset's own file when it is found beside the log, in
    ``$GENREC_SOURCE`` or in the download cache: MovieLens titles, Beauty's ASINs; never
    downloaded for this) or ``none``."""
    user_features: str | None = None
    """User side information (``genrec.data.user_features``): a JSON / CSV / TSV / Parquet / u.user /
    users.dat file of per-user attributes, or ``auto`` for the registered dataset's own (ML-100K,
    ML-1M: age group, gender, occupation, zip region). Read by models with ``model.user_features`` set."""
    cold_items: float = 0.0
    """Cold-item check: this fraction of the catalogue (a fixed random draw, the same for every run
    of one dataset) never occurs in training, neither as input, as target nor as sampled negative;
    the items stay in the catalogue and in every history and target of evaluation, so ``benchmarks/subgroups.py``
    can measure whether they are retrieved (through their attributes, ``model.item_features``)."""
    domains: list[str] = field(default_factory=list)
    """Multi-domain (``genrec.data.domains``): several logs trained as one, each a registered dataset
    (``beauty-p5``) or a log file; users joined by raw id, items kept apart, one row per (user,
    domain) with the user's other-domain training interactions as context, evaluation per domain
    over that domain's catalogue. Replaces ``dataset``/``source``. Empty: one log."""
    behaviour: str = ""
    """Multi-behaviour (``genrec.data.behaviours``): which per-interaction value is its behaviour
    type: ``rating`` (rating levels) or the name of an action column (``data.action_columns``, e.g.
    a 0/1/2 click/cart/buy code). Empty: one behaviour. Needs ``behaviour_values``."""
    behaviour_values: list[float] = field(default_factory=list)
    """The behaviour vocabulary in order (behaviour ids 1..B), e.g. ``[1, 2, 3, 4, 5]`` for ratings;
    an interaction whose value is not listed is an error naming it."""
    target_behaviours: list[float] = field(default_factory=list)
    """Retrieval predicts only interactions with these behaviour values (e.g. ``[4, 5]``: the next
    positively rated item) and the splits hold out each user's last two of them; every interaction
    is still read. Empty: every interaction is a target."""
    read_behaviours: str = "all"
    """What the model reads: ``all`` interactions, or only ``targets`` (those with a target
    behaviour: the positives-only baseline). Evaluation is the same either way: the same targets,
    and every earlier interaction excluded from the ranking."""
    verify_checksum: bool = True
    """Registered datasets: check the data file's size and published digest (turn off for a
    deliberately modified copy)."""
    cache_dir: str | None = None
    """Where downloads and prepared data live; default ``$GENREC_DATA_DIR`` or ``~/.cache/genrec``.
    Prepared data is found again by a key of these settings, so ``genrec eval`` needs no raw file."""

    def __post_init__(self) -> None:
        if (self.min_user_count or 0) < 0 or (self.min_item_count or 0) < 0:
            raise ConfigError("data.min_user_count and data.min_item_count must be >= 0")
        unknown = set(self.columns) - {"user", "item", "timestamp", "rating"}
        if unknown:
            raise ConfigError(f"data.columns has unknown keys {sorted(unknown)}")
        _check_choice("data.read_behaviours", self.read_behaviours, ("all", "targets"))
        if not 0.0 <= self.cold_items < 1.0:
            raise ConfigError(f"data.cold_items={self.cold_items} must be in [0, 1)")
        if self.domains and (self.behaviour or self.source or self.dataset != "custom" or self.item_features):
            raise ConfigError("data.domains replaces data.dataset / data.source, and does not combine with data.behaviour or "
                              "data.item_features yet (a domain's behaviours are its own domain vs the others' context; items "
                              "are kept apart per domain). data.user_features does: users are joined by their raw id")
        if self.domains and self.user_features == "auto":
            raise ConfigError("data.user_features=auto reads a dataset's own file; with data.domains give the file of user "
                              "attributes (keyed by the raw user id the domains share)")
        if self.domains:
            self._check_domains()
        if (self.behaviour_values or self.target_behaviours) and not self.behaviour:
            raise ConfigError("data.behaviour_values / data.target_behaviours need data.behaviour (rating or an action column)")
        if self.behaviour and not self.behaviour_values:
            raise ConfigError(f"data.behaviour={self.behaviour!r} needs data.behaviour_values, the behaviour vocabulary in order "
                              "(e.g. [1, 2, 3, 4, 5] for ratings)")
        if len(set(self.behaviour_values)) != len(self.behaviour_values):
            raise ConfigError(f"data.behaviour_values={self.behaviour_values} repeats a value")
        if set(self.target_behaviours) - set(self.behaviour_values):
            raise ConfigError(f"data.target_behaviours={self.target_behaviours} are not all in data.behaviour_values={self.behaviour_values}")
        if self.read_behaviours == "targets" and not self.target_behaviours:
            raise ConfigError("data.read_behaviours=targets needs data.target_behaviours")
        self.delimiter = {"\\t": "\t", "tab": "\t"}.get(self.delimiter.lower(), self.delimiter)
        if len(self.delimiter) != 1:
            raise ConfigError(f"data.delimiter={self.delimiter!r} must be one character (a tab: data.delimiter='\\t' or tab)")


    def _check_domains(self) -> None:
        """Each domain is prepared with its own dataset's settings (genrec.data.domains.domain_config):
        settings that would shape one log are refused rather than silently ignored."""
        from genrec.data.domains import domain_name

        names = [domain_name(d) for d in self.domains]
        if len(set(names)) != len(names):
            raise ConfigError(f"data.domains names a domain twice: {names}")
        shaping = {"format": None, "columns": {}, "action_columns": [], "delimiter": ",", "has_header": True, "min_user_count": None,
                   "min_item_count": None, "kcore": False, "raw_integer_ids": False}
        changed = sorted(k for k, default in shaping.items() if getattr(self, k) != default)
        if changed:
            raise ConfigError(f"data.domains: {changed} would apply to every domain and are not supported there; each domain "
                              "keeps its registered protocol (a log file's columns are recognised from its header)")


@dataclass
class TrainConfig:
    epochs: int = 100
    """Maximum number of epochs (one pass over every training user)."""
    batch_size: int = 128
    """Users per step."""
    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas."""
    lr_schedule: str = "constant"
    """``constant``, or ``cosine``: after the warm-up the learning rate falls along a half cosine
    from ``lr`` to 0 at the end of epoch ``train.epochs`` (the cap: early stopping ends a run sooner
    without changing the curve). Set per step from the step count alone, so a resumed run follows
    the same rates (``genrec.training.schedule``)."""
    warmup_epochs: float = 0.0
    """Epochs (fractions allowed, rounded to whole steps) over which the learning rate rises
    linearly to ``lr`` at the start of training (0 = none)."""
    loss: str = "sampled_softmax"
    """A registered retrieval loss (``genrec.training.losses.LOSSES``): ``sampled_softmax`` (uniform
    negatives), ``in_batch`` (other targets as negatives), ``mixed`` (other targets + ``num_negatives``
    uniform negatives shared by the batch) or ``full_softmax``."""
    num_negatives: int = 128
    """Uniform negatives per position (sampled_softmax; ``mixed``: one set per batch, beside the
    in-batch ones, whatever ``negative_sharing`` says)."""
    negative_sharing: str = "position"
    """``position``: fresh negatives for each position (reference); ``batch``: one set shared by the
    batch (``sampled_softmax`` only: ``mixed`` always shares its set)."""
    negatives_from: str = "catalogue"
    """Where sampled negatives come from: the whole ``catalogue``, or (multi-domain data,
    ``data.domains``) the ``target_domain``'s items only, as each target is ranked in evaluation;
    with ``negative_sharing: batch``, one shared set per domain."""
    temperature: float = 0.05
    """Softmax temperature on cosine similarities."""
    softmax_matmul: str = "fp32"
    """Operand dtype of the full softmax's three [positions x items x D] matmuls
    (``train.loss: full_softmax`` only): ``fp32`` (exact) or ``bf16`` (bf16 operands and blocks,
    fp32 sums across blocks; a 1.6-2x faster loss kernel on a Zen 4 CPU with avx512_bf16, not measured
    on GPUs; CPUs without native bf16 may be slower). Its speed and quality on Beauty:
    benchmarks/RESULTS.md, "Engine". Independent of ``precision``."""
    seed: int = 42
    """Seed for initialisation, shuffling, dropout and negatives."""
    precision: str = "auto"
    """``auto``, ``fp32`` or ``bf16`` (autocast; evaluation stays fp32). ``auto``: bf16 on CUDA
    devices with native bf16 and on CPUs with AMX, fp32 elsewhere (where bf16 is slower); the
    choice and its reason go into metrics.json's protocol."""
    patience: int = 10
    """Stop after this many evaluations without a validation improvement (0 = never stop early)."""
    eval_every: int = 1
    """Evaluate on validation every N epochs."""
    bucket_by_length: bool = False
    """Group users of similar history length into a batch, so less compute goes to padding."""
    data_fraction: float = 1.0
    """Train on this share of the training users (a fixed random subset drawn from ``seed``);
    validation and test stay whole. For data-scaling sweeps. Retrieval training only."""
    pack: bool = False
    """Pack several users' windows into each row (block-diagonal causal attention, positions
    restarting per user), so no compute goes to padding. Same users and targets per step as the
    padded batch. Retrieval training only."""
    compile: bool = False
    """Run the model through ``torch.compile`` (falls back to eager, with a message, if compiling fails)."""
    grad_clip: float = 0.0
    """Clip the gradient norm to this value (0 = off)."""
    num_threads: int = 0
    """torch intra-op threads (0 = torch's default)."""
    refit: bool = False
    """After selection, also retrain from scratch on training + validation items for the selected
    number of epochs and test that model (reported as ``test_refit``; ``test`` is unchanged)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    item_table: str = "local"
    """``local``: every process holds the whole item table. ``rowwise``: under ``torchrun``, the
    table's rows are split across the processes through TorchRec (optional install, README
    "Sharded item tables"), for catalogues too large for one device. Retrieval training only."""
    table_optimizer: str = "rowwise_adagrad"
    """With ``item_table: rowwise``: FBGEMM's fused optimizer that updates the table inside the
    backward pass, ``rowwise_adagrad`` or ``sgd`` (FBGEMM has no CPU Adam). The rest of the model
    trains with AdamW."""
    table_lr: float = 0.0
    """Learning rate of the table optimizer (0 = ``lr``)."""
    nonfinite_loss: str = "stop"
    """What a NaN/inf training loss does: ``stop`` the run with a clear error (``last/`` keeps the
    previous epoch), or ``skip`` the step (no update; counted as ``skipped_nonfinite_steps`` in
    ``log.jsonl``)."""

    def __post_init__(self) -> None:
        _check_choice("train.item_table", self.item_table, ("local", "rowwise"))
        _check_choice("train.nonfinite_loss", self.nonfinite_loss, ("stop", "skip"))
        _check_choice("train.table_optimizer", self.table_optimizer, ("rowwise_adagrad", "sgd"))
        if self.table_lr < 0:
            raise ConfigError(f"train.table_lr={self.table_lr} must be >= 0")
        from genrec.training.losses import LOSSES  # here: genrec.config loads before genrec.training
        from genrec.training.schedule import SCHEDULES

        _check_choice("train.loss", self.loss, tuple(LOSSES))
        _check_choice("train.negative_sharing", self.negative_sharing, ("position", "batch"))
        _check_choice("train.negatives_from", self.negatives_from, ("catalogue", "target_domain"))
        if self.negatives_from == "target_domain" and self.loss != "sampled_softmax":
            raise ConfigError("train.negatives_from=target_domain draws sampled negatives: use it with train.loss=sampled_softmax")
        _check_choice("train.precision", self.precision, ("auto", "fp32", "bf16"))
        _check_choice("train.softmax_matmul", self.softmax_matmul, ("fp32", "bf16"))
        if self.softmax_matmul != "fp32" and self.loss != "full_softmax":
            raise ConfigError(f"train.softmax_matmul={self.softmax_matmul} applies to train.loss=full_softmax only (got train.loss={self.loss})")
        _check_choice("train.device", self.device, ("auto", "cpu", "cuda"))
        for name in ("epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 1")
        if self.loss in ("sampled_softmax", "mixed") and self.num_negatives < 1:
            raise ConfigError(f"train.num_negatives={self.num_negatives} must be >= 1")
        if not 0.0 < self.data_fraction <= 1.0:
            raise ConfigError(f"train.data_fraction={self.data_fraction} must be in (0, 1]")
        if self.temperature <= 0:
            raise ConfigError(f"train.temperature={self.temperature} must be > 0")
        _check_choice("train.lr_schedule", self.lr_schedule, SCHEDULES)
        if self.warmup_epochs < 0:
            raise ConfigError(f"train.warmup_epochs={self.warmup_epochs} must be >= 0")
        if self.lr_schedule == "cosine" and self.warmup_epochs >= self.epochs:
            raise ConfigError(f"train.warmup_epochs={self.warmup_epochs} leaves no epoch of the cosine decay (train.epochs="
                              f"{self.epochs}): lower it or raise train.epochs")
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"train.warmup_epochs={self.warmup_epochs} is longer than the run (train.epochs={self.epochs}): "
                              "the rate would never reach train.lr")
        if self.item_table == "rowwise" and (self.lr_schedule != "constant" or self.warmup_epochs):
            raise ConfigError(f"train.lr_schedule={self.lr_schedule} / train.warmup_epochs={self.warmup_epochs} set the AdamW "
                              "rate only; with train.item_table=rowwise the table's fused optimizer would keep a constant rate: "
                              "not supported together (use lr_schedule=constant, warmup_epochs=0)")
        self.betas = tuple(self.betas)


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [1, 10, 50, 200])
    """Cut-offs for HR@K and NDCG@K."""
    exclude_history: str = "full"
    """Items not ranked: ``full`` (every earlier item of the user), ``targets`` (with
    ``data.target_behaviours``: the earlier interactions with a target behaviour only, for logs where
    an item is clicked before it is bought), ``input`` (the truncated model input only, as the HSTU
    reference code) or ``none``. A target inside the excluded set counts as a miss."""
    query_time: str = "target"
    """Timestamp used as the last position's "next" time for the time bias: ``target`` (the held-out
    item's own timestamp = the request time, as the HSTU reference) or ``last`` (the last history item's)."""
    select_metric: str = "ndcg@10"
    """Validation metric used for early stopping and picking the best checkpoint (higher is better):
    a retrieval metric, ``auc``/``gauc`` for ranking, or a sum like ``ndcg@10+auc`` for unified models."""
    holdout: int = 1
    """Interactions held out per user for validation and again for test: 1 = leave-one-out; K > 1
    holds out blocks of K (ranking needs several impressions per user for GAUC)."""
    batch_size: int = 256
    """Users scored at once."""
    item_chunk_size: int = 8192
    """Items scored at once, so memory stays bounded on large catalogues (a chunk's temporaries
    are ~10 bytes x batch_size x item_chunk_size; smaller chunks keep the heap from growing)."""

    def __post_init__(self) -> None:
        _check_choice("eval.exclude_history", self.exclude_history, ("full", "targets", "input", "none"))
        _check_choice("eval.query_time", self.query_time, ("target", "last"))
        if self.holdout < 1:
            raise ConfigError(f"eval.holdout={self.holdout} must be >= 1")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"eval.ks={self.ks} must be a non-empty list of positive cut-offs")
        self.ks = sorted(set(int(k) for k in self.ks))
        computed = {"mrr", "auc", "gauc"} | {f"{m}@{k}" for m in ("hr", "ndcg") for k in self.ks}
        parts = [p.strip() for p in self.select_metric.split("+")]
        if not all(p in computed for p in parts):
            raise ConfigError(
                f"eval.select_metric={self.select_metric!r} is not computed; choose from {sorted(computed)} "
                "(or a sum such as 'ndcg@10+auc')"
            )


@dataclass
class TaskConfig:
    """What the model is trained for, where its labels come from, and the UniGRF options."""

    kind: str = "retrieval"
    """``retrieval`` (next item), ``ranking`` (feedback of an item, interleaved sequences or DIN),
    ``unified`` (both in one model, UniGRF) or ``cascade`` (a retrieval run's top-K reranked by a
    ranking run; see ``retrieval_config``/``ranking_config``)."""
    labels: str = "rating"
    """Ranking labels: ``rating`` (one binary task ``like`` = rating >= ``positive_rating``; with
    ``regression_actions: [rating]`` a second task, the rating itself, MSE) or ``actions`` (the
    log's action columns, see ``binary_actions``/``regression_actions``)."""
    positive_rating: float = 4.0
    """Ratings at or above this are positive feedback."""
    binary_actions: list[str] = field(default_factory=list)
    """Action columns used as binary tasks (value > 0 = positive), e.g. click, like, share."""
    regression_actions: list[str] = field(default_factory=list)
    """Action columns used as regression tasks (MSE), e.g. watch_time. With ``labels: rating`` only
    ``[rating]`` is allowed: the rating value as a task beside ``like``."""
    head_hidden_dim: int = 64
    """Hidden width of the ranking MLP head."""
    action_token: str = "item_and_feedback"
    """Ranking/unified: what an action token carries (``item_and_feedback`` or ``feedback``; see
    :class:`genrec.models.generative.HeadConfig`)."""
    micro_batch: int = 256
    """M-FALCON candidates per micro-batch at inference."""
    retrieval_weight: float = 1.0
    """Unified: weight of the retrieval loss (constant weighter; the initial weight for ``dwa``)."""
    ranking_weight: float = 1.0
    """Unified: weight of the ranking loss (constant weighter; the initial weight for ``dwa``)."""
    weighter: str = "constant"
    """Unified loss weighting: ``constant``, ``dwa`` (learning speed from each loss's rate of change,
    Dynamic Weight Average form), ``gradient`` (UniGRF's gradient-guided weighter: learning speed
    from the rate of change of each task's gradient norm on the shared trunk; see
    ``training/weighting.py``) or ``gradnorm`` (weights ∝ 1 / each loss's gradient norm on the
    shared last layer)."""
    dwa_temperature: float = 2.0
    """Temperature T of the ``dwa`` / ``gradient`` weights w_k = K·exp(r_k / T) / Σ_j exp(r_j / T)."""
    dwa_window: int = 20
    """Values averaged for the ``dwa`` / ``gradient`` ratios r_k = mean(recent window) / mean(the
    window before): losses per step (``dwa``) or gradient norms per measurement (``gradient``)."""
    grad_every: int = 1
    """``gradient``: measure the gradient norms every this many steps (each measurement costs one
    extra backward pass per task through the trunk)."""
    hard_negatives: int = 0
    """Enhancer (a): per position, this many of the retrieval side's top candidates that the ranking
    head scores lowest are added to the retrieval loss as negatives (0 = off)."""
    candidate_pool: int = 16
    """Enhancer: the retrieval side's top candidates per position that the ranking head scores."""
    enhancer_pool: str = "negatives"
    """Enhancer: where the pool comes from: ``negatives`` (the step's sampled negatives that
    retrieval scores highest; potential positives are then sampled negatives, as UniGRF describes)
    or ``catalogue`` (the retrieval side's top items over the catalogue: genrec's first design)."""
    enhancer_rows: float = 0.05
    """Enhancer (``negatives`` pool): fraction of the batch's sequences examined per step, drawn at
    random (bounds the ranking head's extra pass: one candidate token per pool item and position)."""
    pool_sample: int = 0
    """Enhancer (``catalogue`` pool): pick the pool's top candidates from this many shared uniform
    items (0 = the whole catalogue)."""
    potential_positive_alpha: float = 0.0
    """Enhancer (b): pool candidates whose ranking probability exceeds α are not used as negatives
    (0 = off)."""
    potential_positive_mode: str = "remove"
    """``remove`` (drop from the negatives) or ``relabel`` (count as extra positives in the softmax)."""
    enhancer_warmup_epochs: int = 1
    """Epochs of plain training before the enhancer switches on (the ranking head must learn first)."""
    enhancer_task: str = ""
    """Binary task whose probability the enhancer reads ("" = the first binary task)."""
    retrieval_config: str = ""
    """Cascade: the retrieval experiment config (path relative to this config's folder; made
    absolute when the config is loaded)."""
    ranking_config: str = ""
    """Cascade: the ranking experiment config (path relative to this config's folder)."""
    cascade_k: int = 100
    """Cascade: how many retrieved items the ranking model reorders."""

    def __post_init__(self) -> None:
        _check_choice("task.kind", self.kind, ("retrieval", "ranking", "unified", "cascade"))
        _check_choice("task.labels", self.labels, ("rating", "actions"))
        _check_choice("task.weighter", self.weighter, ("constant", "dwa", "gradient", "gradnorm"))
        if self.dwa_window < 1 or self.grad_every < 1:
            raise ConfigError(f"task.dwa_window={self.dwa_window} and task.grad_every={self.grad_every} must be >= 1")
        _check_choice("task.action_token", self.action_token, ("item_and_feedback", "feedback"))
        _check_choice("task.potential_positive_mode", self.potential_positive_mode, ("remove", "relabel"))
        _check_choice("task.enhancer_pool", self.enhancer_pool, ("negatives", "catalogue"))
        if not 0.0 < self.enhancer_rows <= 1.0:
            raise ConfigError(f"task.enhancer_rows={self.enhancer_rows} must be in (0, 1]")
        if self.labels == "actions" and not (self.binary_actions or self.regression_actions):
            raise ConfigError("task.labels=actions needs task.binary_actions and/or task.regression_actions")
        if self.labels == "rating" and (self.binary_actions or set(self.regression_actions) - {"rating"}):
            columns = [a for a in [*self.binary_actions, *self.regression_actions] if a != "rating"]
            raise ConfigError(f"task.labels=rating makes the task like = rating >= {self.positive_rating} and, with "
                              f"task.regression_actions=[rating], the rating itself; action columns ({columns}) need task.labels=actions")
        wanted = [*self.binary_actions, *self.regression_actions]
        if len(set(wanted)) != len(wanted):
            raise ConfigError(f"task.binary_actions + task.regression_actions name a task twice: {wanted}")
        if min(self.retrieval_weight, self.ranking_weight) < 0:
            raise ConfigError("task.retrieval_weight and task.ranking_weight must be >= 0")
        if self.hard_negatives < 0 or self.candidate_pool < 1 or (self.hard_negatives and self.hard_negatives >= self.candidate_pool):
            raise ConfigError(f"task.hard_negatives={self.hard_negatives} must be 0 or below task.candidate_pool={self.candidate_pool}: "
                              "the ranking head picks the ones it ranks lowest among the pool (with m = pool it would pick nothing)")
        if not 0.0 <= self.potential_positive_alpha < 1.0:
            raise ConfigError(f"task.potential_positive_alpha={self.potential_positive_alpha} must be in [0, 1)")
        if self.kind == "cascade" and not (self.retrieval_config and self.ranking_config):
            raise ConfigError("task.kind=cascade needs task.retrieval_config and task.ranking_config")

    @property
    def enhancer_on(self) -> bool:
        return self.hard_negatives > 0 or self.potential_positive_alpha > 0


@dataclass
class DistillConfig:
    """Layer-aligned distillation of a deep teacher into this shallower student (SLMRec, PAPERS.md
    §4; ``genrec distill CONFIG --teacher CKPT``). The teacher's M layers and the student's N are
    cut into B ``blocks``; block k = 1..B aligns teacher layer k·M/B with student layer k·N/B.
    Loss = train.loss + cosine_weight · Σ_k (1 − cos(h_t, h_s)) + l2_weight · Σ_k ‖h_t − h_s‖²
    + supervision_weight · Σ_{k<B} train.loss of adapter_k(h_s) (a linear map per block to the
    student's output space, scored against its item vectors). When the widths differ, h_s goes
    through a learned linear projection per block to the teacher's width."""

    teacher: str = ""
    """Teacher checkpoint folder (a trained genrec retrieval model on the same catalogue; set by
    ``genrec distill --teacher``). Empty: no distillation."""
    blocks: int = 4
    """B, the number of aligned blocks; must divide both layer counts (paper: 4)."""
    positions: str = "last"
    """Hidden states compared: ``last`` (each sequence's last token, as the paper) or ``all``
    (every position with a target)."""
    cosine_weight: float = 1.0
    """λ1 on Σ_k (1 − cosine similarity) (paper: 1)."""
    l2_weight: float = 0.1
    """λ2 on Σ_k squared Euclidean distance, averaged over positions (paper: 0.1)."""
    supervision_weight: float = 0.1
    """λ3 on multi-supervision: adapters at blocks 1..B-1 (block B is the student's own output,
    already under ``train.loss``), each trained with ``train.loss`` (paper: 1, 0.1 or 0.01)."""
    logit_weight: float = 0.0
    """λ4 on τ² KL(teacher ‖ student) of the two models' softmax over the whole catalogue at the
    compared positions (knowledge distillation of the scores; genrec's addition, not in the paper:
    0 = off). Each model's scores are divided by its own ``train.temperature``, then by τ."""
    logit_temperature: float = 1.0
    """τ, the softening of both score distributions in the λ4 term (> 0)."""

    def __post_init__(self) -> None:
        _check_choice("distill.positions", self.positions, ("last", "all"))
        if self.blocks < 1:
            raise ConfigError(f"distill.blocks={self.blocks} must be >= 1")
        for name in ("cosine_weight", "l2_weight", "supervision_weight", "logit_weight"):
            value = getattr(self, name)
            if not 0.0 <= value < float("inf"):
                raise ConfigError(f"distill.{name}={value} must be a finite number >= 0")
        if not 0.0 < self.logit_temperature < float("inf"):
            raise ConfigError(f"distill.logit_temperature={self.logit_temperature} must be a finite number > 0")


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    """Default: the config's folder and file name (``ml-100k-hstu``). The default run folder is
    ``runs/<run_name(cfg)>-<timestamp>``, named after a custom log's file (see :func:`run_name`)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: model_config_class("hstu")())
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:  # checks that span sections
        if self.eval.exclude_history == "targets" and not (self.data.target_behaviours or self.data.domains):
            raise ConfigError("eval.exclude_history=targets needs target behaviours (data.target_behaviours or data.domains)")
        if self.model.behaviour_embedding and not (self.data.behaviour or self.data.domains):
            raise ConfigError("model.behaviour_embedding needs behaviours: data.behaviour (with data.behaviour_values) or data.domains")
        if self.model.user_features == "token" and self.train.pack:
            raise ConfigError("model.user_features=token puts a profile token before each sequence: use padded batches "
                              "(train.pack=false; train.bucket_by_length keeps the padding small)")
        if self.model.user_features != "none" and not self.data.user_features:
            raise ConfigError("model.user_features needs data.user_features (a file of user attributes, or auto for a dataset "
                              "that has one)")
        if self.model.user_features != "none" and (self.task.kind != "retrieval" or self.model.name in ("din", "popularity")):
            raise ConfigError("model.user_features is for retrieval (task.kind=retrieval) with a sequence backbone")
        if self.train.negatives_from == "target_domain" and not self.data.domains:
            raise ConfigError("train.negatives_from=target_domain needs several domains (data.domains)")
        if self.data.cold_items and (self.task.kind != "retrieval" or self.train.loss == "full_softmax"):
            raise ConfigError("data.cold_items (the cold-item check) is for retrieval (task.kind=retrieval) with a sampled or "
                              "in-batch loss (full softmax would score the held-out items as negatives)")
        if self.data.cold_items and self.distill.logit_weight:
            raise ConfigError("data.cold_items with distill.logit_weight: the score term spans the whole catalogue, so the "
                              "held-out items would be trained on; set distill.logit_weight=0")
        if (self.data.behaviour or self.data.domains) and (self.task.kind != "retrieval" or self.eval.holdout != 1):
            raise ConfigError("data.behaviour and data.domains are for retrieval (task.kind=retrieval) with eval.holdout=1; "
                              "ranking tasks read feedback through task.labels instead")
        if self.train.item_table == "rowwise" and (self.task.kind != "retrieval" or self.train.refit):
            raise ConfigError("train.item_table=rowwise is for retrieval training (task.kind=retrieval) without train.refit")
        if self.distill.teacher and (self.task.kind != "retrieval" or self.train.refit or self.train.item_table != "local"):
            raise ConfigError("distill.teacher is set: distillation trains a retrieval student (task.kind=retrieval), "
                              "without train.refit, with train.item_table=local")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ExperimentConfig":
        raw = dict(raw or {})
        unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown top-level config keys {sorted(unknown)}")
        model_raw = dict(raw.get("model") or {})
        if "preset" in model_raw:  # preset values first, explicit keys win
            model_raw = {**preset(model_raw.pop("preset")), **model_raw}
        model_cls = model_config_class(model_raw.get("name", "hstu"))
        return cls(
            name=str(raw.get("name", "experiment")),
            data=_build(DataConfig, raw.get("data"), "data"),
            model=_build(model_cls, model_raw, "model"),
            train=_build(TrainConfig, raw.get("train"), "train"),
            eval=_build(EvalConfig, raw.get("eval"), "eval"),
            task=_build(TaskConfig, raw.get("task"), "task"),
            distill=_build(DistillConfig, raw.get("distill"), "distill"),
        )


def _build(cls: type, raw: dict[str, Any] | None, prefix: str) -> Any:
    raw = dict(raw or {})
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(names)
    if unknown:
        raise ConfigError(f"unknown keys in {prefix}: {sorted(unknown)}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}") for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{prefix}: {exc}") from exc


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Convert a YAML/override value to the declared field type, or raise naming the field."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name)
    if hint is Any:
        return value
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint in (int, float, str):
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return hint(value)
        if origin in (list, tuple):
            items = yaml.safe_load(value) if isinstance(value, str) else value
            return origin(_coerce(v, args[0], name) for v in items)
        if origin is dict:
            items = yaml.safe_load(value) if isinstance(value, str) else value
            return {str(k): _coerce(v, args[1], name) for k, v in dict(items).items()}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}={value!r} is not a valid {getattr(hint, '__name__', hint)}") from exc
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a raw config dict (values parsed as YAML scalars)."""
    raw = _deep_copy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else None
    return raw


def _deep_copy(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in raw.items()}


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment config, apply dotted overrides and validate it: the one way an
    experiment is loaded (``genrec train``, sweeps, cascade stages, ``--resume``). A cascade's
    stage configs are resolved relative to this file, so the loaded config is self-contained."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)  # PyYAML's position of the error, when it knows it
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    raw.setdefault("name", path.stem if path.parent.name in ("", ".") else f"{path.parent.name}-{path.stem}")
    cfg = experiment_from_dict(raw, overrides)
    if cfg.task.kind == "cascade":
        cfg.task.retrieval_config = str((path.parent / cfg.task.retrieval_config).resolve())
        cfg.task.ranking_config = str((path.parent / cfg.task.ranking_config).resolve())
    return cfg


def run_name(cfg: ExperimentConfig) -> str:
    """The stem of a run's default folder: the experiment's name, except that a custom log is named
    after its file, ``ratings.csv`` + ``configs/custom/hstu.yaml`` -> ``ratings-hstu``."""
    if cfg.data.dataset != "custom" or not cfg.data.source:
        return cfg.name
    stem = Path(cfg.data.source).name.removesuffix(".gz")
    stem = re.sub(r"[^\w.-]+", "-", stem.rsplit(".", 1)[0] if "." in stem else stem).strip("-.") or "data"
    rest = cfg.name.removeprefix("custom-")
    return stem if rest in ("", stem, "custom") else f"{stem}-{rest}"


def experiment_from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> ExperimentConfig:
    """An experiment from a raw dict (a checkpoint's ``experiment.json``) plus dotted overrides."""
    return ExperimentConfig.from_dict(apply_overrides(raw, overrides or []))
