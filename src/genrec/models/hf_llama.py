"""An LLM-initialised sequential recommender: the first M decoder layers of a Hugging Face Llama
checkpoint read from a local folder (the E4SRec / SLMRec teacher, PAPERS.md §4).

    x = Dropout(E[items] × √D)          E: the item table; copied (and frozen) from a trained genrec
                                        checkpoint when ``item_embeddings`` is set
    h = W_in x                          D -> H, the LLM's width
    h = LLM decoder layers 1..M (h)     rotary positions, causal; LoRA on the MLP when lora_rank > 0
    out = W_out RMSNorm(h)              H -> D, scored against the item table (shared retrieval contract)

The one model that reads files when it is built: its pretrained weights are its initialisation.
A checkpoint of it holds every weight, but rebuilding it (``load_model``) reads
``pretrained_path`` (and ``item_embeddings``) again for the architecture, so they must stay where
they were. Needs the optional extra ``genrec[llm]`` (transformers, peft); the rest of genrec
imports without it.

Deviations from SLMRec, on purpose: no text instruction around the item tokens (the items alone
are the sequence; the official code wraps them in an Alpaca prompt); scores are cosine
similarities when ``l2_normalize`` is on (genrec's default; ``model.l2_normalize=false`` gives the
paper's dot product); every position is trained by genrec's retrieval losses, not only the last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from genrec.errors import ConfigError
from genrec.models.base import KVCache, ModelConfig, SequentialRecommender
from genrec.models.ops import Context

LORA_TARGETS = ["gate_proj", "up_proj", "down_proj"]
"""LoRA sits on the MLP of every decoder layer, as SLMRec's setting."""


@dataclass
class HFLlamaConfig(ModelConfig):
    name: str = "hf_llama"
    pretrained_path: str = ""
    """Local folder of a Hugging Face Llama checkpoint (``config.json`` + weights). Only its first
    ``num_layers`` decoder layers are kept; the LLM's own width, heads and token table are not
    genrec fields (``embedding_dim`` is the item embeddings' width, ``num_heads`` is unused).
    Hub names are not downloaded."""
    item_embeddings: str = ""
    """A trained genrec retrieval checkpoint folder (e.g. ``runs/<run>/best``, same catalogue,
    width ``embedding_dim``) whose item table initialises this model's; empty: random init."""
    freeze_item_embeddings: bool = True
    """Keep the copied item table fixed during training (as SLMRec); only with ``item_embeddings``."""
    lora_rank: int = 0
    """LoRA rank on the decoder layers' MLP (gate/up/down projections), the rest of the LLM frozen;
    0: no LoRA, every decoder weight trains."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator (the update is scaled by alpha / rank)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch's input."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lora_rank < 0:
            raise ConfigError(f"model.lora_rank={self.lora_rank} must be >= 0 (0 = no LoRA)")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"model.lora_dropout={self.lora_dropout} must be in [0, 1)")


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise ConfigError("model.name=hf_llama needs Hugging Face transformers: pip install 'genrec[llm]'") from exc
    return transformers


def load_decoder(cfg: HFLlamaConfig) -> nn.Module:
    """The first ``cfg.num_layers`` decoder layers of the Llama at ``cfg.pretrained_path`` (a
    ``LlamaModel`` without its token table), float32, LoRA on the MLP when asked."""
    transformers = _transformers()
    path = Path(cfg.pretrained_path).expanduser()
    if not cfg.pretrained_path or not (path / "config.json").is_file():
        raise ConfigError(
            f"model.pretrained_path={cfg.pretrained_path!r} is not a local folder with a config.json: hf_llama reads a "
            "Hugging Face Llama checkpoint from a local path only (nothing is downloaded from the hub); download it "
            "on a machine with access (e.g. `huggingface-cli download NAME --local-dir DIR`) and pass model.pretrained_path=DIR")
    hf_config = json.loads((path / "config.json").read_text())
    if hf_config.get("model_type") != "llama":
        raise ConfigError(f"model.pretrained_path={cfg.pretrained_path!r} holds a {hf_config.get('model_type')!r} model, not a Llama")
    available = int(hf_config.get("num_hidden_layers", 0))
    if cfg.num_layers > available:
        raise ConfigError(f"model.num_layers={cfg.num_layers}: {cfg.pretrained_path} has only {available} decoder layers")
    log = transformers.utils.logging
    verbosity, bar = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()  # the layers past num_layers are "unexpected" by design
    log.disable_progress_bar()
    try:
        llm = transformers.LlamaModel.from_pretrained(str(path), num_hidden_layers=cfg.num_layers, local_files_only=True,
                                                      dtype=torch.float32)
    finally:
        log.set_verbosity(verbosity)
        if bar:
            log.enable_progress_bar()
    llm.config.use_cache = False
    llm.embed_tokens = None  # items come in as vectors; the LLM's token table is never read
    if cfg.lora_rank:
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError as exc:
            raise ConfigError("model.lora_rank needs peft: pip install 'genrec[llm]'") from exc
        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=LORA_TARGETS)
        llm = inject_adapter_in_model(lora, llm)  # freezes every LLM weight but the LoRA ones
    return llm


class HFLlama(SequentialRecommender):
    config: HFLlamaConfig
    absolute_positions = False  # rotary positions inside the LLM's attention

    def __init__(self, config: HFLlamaConfig):
        super().__init__(config)
        llm = load_decoder(config)
        H, D = llm.config.hidden_size, config.embedding_dim
        self.input_proj = nn.Linear(D, H)
        self.llm = llm
        self.norm, llm.norm = llm.norm, nn.Identity()  # ours, so every layer's output is the raw residual stream
        self.output_proj = nn.Linear(H, D)
        if config.item_embeddings:
            self._copy_item_table(Path(config.item_embeddings).expanduser())

    def _copy_item_table(self, folder: Path) -> None:
        from safetensors import safe_open

        file = folder / "model.safetensors"
        if not file.is_file():
            raise ConfigError(f"model.item_embeddings={str(folder)!r}: no model.safetensors there (expected a trained "
                              "genrec retrieval checkpoint folder, e.g. runs/<run>/best)")
        with safe_open(str(file), framework="pt") as f:
            if "item_embedding.weight" not in f.keys():
                raise ConfigError(f"model.item_embeddings={str(folder)!r}: no item_embedding.weight (not a retrieval checkpoint)")
            table = f.get_tensor("item_embedding.weight")
        if table.shape != self.item_embedding.weight.shape:
            raise ConfigError(f"model.item_embeddings={str(folder)!r}: item table {tuple(table.shape)}, this model needs "
                              f"{tuple(self.item_embedding.weight.shape)} (num_items + 1, embedding_dim)")
        with torch.no_grad():
            self.item_embedding.weight.copy_(table)
        self.item_embedding.weight.requires_grad_(not self.config.freeze_item_embeddings)

    @property
    def layer_width(self) -> int:
        return self.input_proj.out_features

    def transduce(self, x: torch.Tensor, ctx: Context, cache: KVCache | None = None,
                  layer_outputs: list | None = None) -> tuple[torch.Tensor, KVCache]:
        if cache is not None or not ctx.is_causal:
            raise ValueError("hf_llama encodes plain causal item sequences only (no KV cache, packed rows or interleaved tokens)")
        h = self.input_proj(self.add_positions(x, ctx.q_pos))  # [B N H]; add_positions: dropout only here
        out = self.llm(inputs_embeds=h, position_ids=ctx.q_pos, output_hidden_states=layer_outputs is not None)
        if layer_outputs is not None:
            layer_outputs.extend(out.hidden_states[1:])  # [0] is the input; then one per decoder layer
        return self.output_proj(self.norm(out.last_hidden_state)), []
