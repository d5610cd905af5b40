"""Models behind two written contracts (:mod:`genrec.models.contracts`: :class:`Retriever`,
:class:`Ranker`), a registry from model name to (config class, model class), the builders a run
uses, and named presets reproducing published configs."""

from __future__ import annotations

import dataclasses
from typing import Any

from genrec.errors import ConfigError
from genrec.models.base import ModelConfig, SequentialRecommender
from genrec.models.contracts import ItemTable, Model, Ranker, Retriever
from genrec.models.din import DIN, DINConfig
from genrec.models.generative import GenerativeRecommender, HeadConfig, InterleavedRanker, interleaved_tokens
from genrec.models.gpt import GPT, GPTConfig
from genrec.models.hf_llama import HFLlama, HFLlamaConfig
from genrec.models.hstu import HSTU, HSTUConfig
from genrec.models.llama import Llama, LlamaConfig
from genrec.models.popularity import Popularity, PopularityConfig
from genrec.models.presets import PRESETS
from genrec.models.sasrec import SASRec, SASRecConfig

MODELS: dict[str, tuple[type[ModelConfig], type]] = {
    "hstu": (HSTUConfig, HSTU),
    "sasrec": (SASRecConfig, SASRec),
    "gpt": (GPTConfig, GPT),
    "llama": (LlamaConfig, Llama),
    "hf_llama": (HFLlamaConfig, HFLlama),  # Hugging Face Llama layers from a local folder (genrec[llm]); causal retrieval only
    "din": (DINConfig, DIN),  # ranking only (no retrieval side)
    "popularity": (PopularityConfig, Popularity),  # baseline: counts, nothing to train
}
BACKBONES = ("hstu", "sasrec", "gpt", "llama", "hf_llama")
"""Models that implement the full sequence contract (retrieval, and ranking/unified when wrapped
in :class:`GenerativeRecommender`; ``hf_llama`` encodes causal item sequences only, so retrieval)."""


def model_config_class(name: str) -> type[ModelConfig]:
    if name not in MODELS:
        raise ConfigError(f"model.name={name!r} is not one of {sorted(MODELS)}")
    return MODELS[name][0]


def build_model(config: ModelConfig) -> Model:
    """Build the registered model for a config (``config.num_items`` must be set)."""
    return MODELS[config.name][1](config)


def build_interleaved(config: ModelConfig, head: HeadConfig) -> InterleavedRanker:
    """A backbone over interleaved item/action tokens for ``config.max_seq_len`` interactions (the
    backbone gets :func:`interleaved_tokens` positions) with a ranking head; a
    :class:`GenerativeRecommender` (retrieval too) when ``head.retrieval``."""
    if config.name not in BACKBONES:
        raise ConfigError(f"model.name={config.name!r} cannot be an interleaved backbone; use one of {BACKBONES}")
    backbone = build_model(dataclasses.replace(config, max_seq_len=interleaved_tokens(config.max_seq_len)))
    return wrap_interleaved(backbone, head)


def wrap_interleaved(backbone: SequentialRecommender, head: HeadConfig) -> InterleavedRanker:
    """Wrap an already built backbone (its ``max_seq_len`` counts tokens), e.g. when loading."""
    return (GenerativeRecommender if head.retrieval else InterleavedRanker)(backbone, head)


def attach_item_attributes(model: Model, tokens) -> None:
    """Give a model built with ``model.item_features`` its attribute table (a [num_items + 1, M]
    tensor of attribute token ids): the backbone's, for interleaved models."""
    backbone = model.backbone if isinstance(model, InterleavedRanker) else model
    if not isinstance(backbone, SequentialRecommender):
        raise ConfigError(f"model.item_features: {type(model).__name__} reads no item attributes (the sequence backbones "
                          f"{BACKBONES} do)")
    backbone.load_item_attributes(tokens)


def model_config_from_dict(raw: dict[str, Any]) -> ModelConfig:
    cls = model_config_class(raw.get("name", ""))
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in names})


def preset(name: str) -> dict[str, Any]:
    """Model fields of a named preset (e.g. ``ml-1m/hstu-large``)."""
    if name not in PRESETS:
        raise ConfigError(f"model.preset={name!r} is not one of {sorted(PRESETS)}")
    return dict(PRESETS[name])


__all__ = [
    "BACKBONES", "DIN", "DINConfig", "GPT", "GPTConfig", "GenerativeRecommender", "HeadConfig", "HFLlama", "HFLlamaConfig", "HSTU", "HSTUConfig",
    "InterleavedRanker", "ItemTable", "Llama", "LlamaConfig", "MODELS", "Model", "ModelConfig", "PRESETS", "Popularity", "PopularityConfig", "Ranker",
    "Retriever", "SASRec", "SASRecConfig", "SequentialRecommender", "attach_item_attributes", "build_interleaved", "build_model",
    "interleaved_tokens", "model_config_class", "model_config_from_dict", "preset", "wrap_interleaved",
]
