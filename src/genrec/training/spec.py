"""The resolved build spec: what the data decides about a model, derived once, never written back.

The user's config says what they want (``model.time_bias: true``, ``model.max_seq_len: 50``); the
data says what exists (the catalogue size, whether timestamps are present, which ranking tasks
the labels define). :func:`resolve_spec` derives an immutable :class:`BuildSpec` from both, and
:meth:`BuildSpec.model_config` gives the model a *copy* of its config with those facts filled in.
The experiment config stays as the user wrote it; what was changed and why goes into the run's
protocol as ``notes``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from genrec.data.item_features import ItemFeatures, load_item_features
from genrec.data.prepare import SequenceData
from genrec.errors import ConfigError
from genrec.models import Model, ModelConfig, attach_item_attributes


@dataclass(frozen=True)
class BuildSpec:
    num_items: int
    """Catalogue size of the prepared data (item ids 1..num_items)."""
    timestamps: bool
    """Whether the data has timestamps (a time bias needs them)."""
    task_names: tuple[str, ...] = ()
    """Ranking tasks defined by the labels (empty for retrieval)."""
    task_kinds: tuple[str, ...] = ()
    """``binary``/``regression`` per ranking task."""
    num_behaviours: int = 0
    """Behaviour vocabulary size of multi-behaviour data (0: none; ``data.behaviour``)."""
    user_attributes: tuple[str, ...] = ()
    """User attribute vocabulary of data read with ``data.user_features`` (empty: none)."""
    max_user_attributes: int = 0
    """Most attribute tokens of one user."""
    user_feature_stats: dict | None = None
    """Where the user attributes came from and how many users have any (protocol notes)."""
    features: Callable[[], ItemFeatures] | None = None
    """Reads the item attributes (``data.item_features``) for a model that asks for them, when first
    needed: building a model reads them; evaluating a checkpoint (which carries them) never does."""

    @functools.cached_property
    def item_features(self) -> ItemFeatures | None:
        return self.features() if self.features is not None else None

    def model_config(self, model: ModelConfig) -> ModelConfig:
        """A copy of ``model`` with the data-decided fields set; ``model`` itself is not touched."""
        fields = {f.name for f in dataclasses.fields(model)}
        changes: dict = {"num_items": self.num_items}
        if model.item_features != "none":
            if self.item_features is None:
                raise ConfigError(f"model.item_features={model.item_features!r} needs data.item_features (a file of item "
                                  "attributes, or auto for a dataset that has one)")
            changes.update(num_attribute_tokens=self.item_features.num_tokens, max_item_attributes=self.item_features.max_per_item)
        if model.behaviour_embedding:
            if self.num_behaviours < 1:
                raise ConfigError("model.behaviour_embedding needs behaviours: set data.behaviour (rating or an action column) "
                                  "and data.behaviour_values")
            changes["num_behaviours"] = self.num_behaviours
        if model.user_features != "none":
            if not self.user_attributes:
                raise ConfigError(f"model.user_features={model.user_features!r} needs data.user_features (a file of user "
                                  "attributes, or auto for a dataset that has one)")
            changes.update(user_attributes=list(self.user_attributes), max_user_attributes=self.max_user_attributes,
                           user_numeric_fields=dict((self.user_feature_stats or {}).get("numeric_fields") or {}))
        if "time_bias" in fields and not self.timestamps:
            changes["time_bias"] = False
        if "task_names" in fields and self.task_names:  # models that carry their tasks (DIN)
            changes.update(task_names=self.task_names, task_kinds=self.task_kinds)
        return dataclasses.replace(model, **changes)

    def notes(self, model: ModelConfig) -> list[str]:
        """Protocol notes about what :meth:`model_config` changed and why."""
        notes = []
        wants_time_bias = "time_bias" in {f.name for f in dataclasses.fields(model)} and model.time_bias
        if wants_time_bias and not self.timestamps:
            notes.append("time bias off: the dataset has no timestamps (position bias only)")
        if model.item_features != "none" and self.item_features is not None:
            st = self.item_features.stats
            notes.append(f"item features ({model.item_features}): {self.item_features.source}, {st['attribute_tokens']} attribute "
                         f"tokens, {st['items_with_attributes']} of {st['items']} items have any")
        if model.behaviour_embedding and self.num_behaviours:
            notes.append(f"behaviour embedding: {self.num_behaviours} behaviour ids (data.behaviour, or own/context x domain for "
                         "data.domains) added to each history token")
        if model.user_features != "none" and self.user_feature_stats:
            st = self.user_feature_stats
            how = {"sum": "added to every history token", "concat": "mapped with every history token",
                   "token": "one token before the history (the model reads max_seq_len - 1 items)"}[model.user_features]
            notes.append(f"user features ({model.user_features}): {st['source']}, {st['attribute_tokens']} attribute tokens, "
                         f"{st['users_with_attributes']} of {st['users']} users have any; their mean embedding is {how}")
        return notes

    def attach(self, model: Model) -> Model:
        """Load the data-decided tables into a freshly built model: the item attributes, when its
        config asks for them (only then is :attr:`features` set)."""
        if self.features is not None:
            attach_item_attributes(model, torch.from_numpy(self.item_features.tokens))
        return model


class SpecDerived:
    """For tasks (with ``self.spec`` and ``self.cfg``): the model config and protocol notes the data
    decides, computed when first needed, so evaluating a checkpoint never reads the item feature
    file again (the checkpoint carries the attributes)."""

    @functools.cached_property
    def model_config(self) -> ModelConfig:
        return self.spec.model_config(self.cfg.model)

    @functools.cached_property
    def notes(self) -> list[str]:
        return self.spec.notes(self.cfg.model)

    def state_dict(self) -> dict:
        """What the task carries from step to step besides the model (a loss weighter's history),
        saved in ``last/state.json`` so a resumed run continues exactly; JSON-able."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (a resumed run)."""


def resolve_spec(data: SequenceData, task_names: tuple[str, ...] = (), task_kinds: tuple[str, ...] = (), cfg=None) -> BuildSpec:
    """The data's facts; with the experiment ``cfg``, also the item attributes its model asks for."""
    features = None
    if cfg is not None and cfg.model.item_features != "none" and cfg.data.item_features:
        features = functools.partial(load_item_features, cfg.data, data.item_ids)
    num_behaviours = 0 if data.behaviours is None else data.behaviours.num
    users = {} if data.user_tokens is None else {"user_attributes": data.user_vocabulary, "max_user_attributes": data.user_tokens.shape[1],
                                                  "user_feature_stats": data.user_feature_stats}
    return BuildSpec(data.num_items, data.timestamps is not None, tuple(task_names), tuple(task_kinds), num_behaviours, **users,
                     features=features)
