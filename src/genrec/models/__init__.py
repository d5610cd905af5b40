"""Sequence models behind one scoring contract (:class:`SequentialRecommender`), a registry from
model name to (config class, model class), and named presets reproducing published configs."""

from __future__ import annotations

import dataclasses
from typing import Any

from genrec.errors import ConfigError
from genrec.models.base import ModelConfig, SequentialRecommender
from genrec.models.din import DIN, DINConfig
from genrec.models.generative import GenerativeRecommender, HeadConfig
from genrec.models.gpt import GPT, GPTConfig
from genrec.models.hstu import HSTU, HSTUConfig
from genrec.models.llama import Llama, LlamaConfig
from genrec.models.presets import PRESETS
from genrec.models.sasrec import SASRec, SASRecConfig

MODELS: dict[str, tuple[type[ModelConfig], type]] = {
    "hstu": (HSTUConfig, HSTU),
    "sasrec": (SASRecConfig, SASRec),
    "gpt": (GPTConfig, GPT),
    "llama": (LlamaConfig, Llama),
    "din": (DINConfig, DIN),  # ranking only (no retrieval side)
}
BACKBONES = ("hstu", "sasrec", "gpt", "llama")
"""Models that implement the full sequence contract (retrieval, and ranking/unified when wrapped
in :class:`GenerativeRecommender`)."""


def model_config_class(name: str) -> type[ModelConfig]:
    if name not in MODELS:
        raise ConfigError(f"model.name={name!r} is not one of {sorted(MODELS)}")
    return MODELS[name][0]


def build_model(config: ModelConfig) -> SequentialRecommender:
    """Build the registered model for a config (``config.num_items`` must be set)."""
    return MODELS[config.name][1](config)


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
    "BACKBONES", "DIN", "DINConfig", "GPT", "GPTConfig", "GenerativeRecommender", "HeadConfig", "HSTU", "HSTUConfig",
    "Llama", "LlamaConfig", "MODELS", "ModelConfig", "PRESETS", "SASRec", "SASRecConfig",
    "SequentialRecommender", "build_model", "model_config_class", "model_config_from_dict", "preset",
]
