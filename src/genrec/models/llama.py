"""Llama-style sequential recommender (the "Llama" backbone of the scaling study, PAPERS.md §3).

    x = E[items] × √D → dropout                              no absolute positions
    per block:  x = x + Dropout(MHA_rope(RMSNorm(x)))        rotary q/k, softmax attention, no biases
                x = x + Dropout(W_down(SiLU(W_gate h) ⊙ W_up h)),  h = RMSNorm(x)
    out = RMSNorm(x)

Deviations from Llama: no grouped-query attention (every head has its own k/v; recommender
models are small); the SwiGLU width defaults to 8/3 · D rounded up to a multiple of 8; no LM head
(items are scored against the item table by the shared retrieval contract). The block layout and
names (q/k/v in one ``qkv``, gate/up in one ``gate_up``) are kept simple so a Hugging Face Llama
checkpoint can be mapped onto it later (the SLMRec teacher).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genrec.errors import ConfigError
from genrec.models.base import KVCache, ModelConfig, SequentialRecommender
from genrec.models.layers import PreNormBlock, SelfAttention, SwiGLU, run_blocks, run_blocks_at
from genrec.models.ops import Context


@dataclass
class LlamaConfig(ModelConfig):
    name: str = "llama"
    ffn_dim: int = 0
    """Hidden width of the SwiGLU MLP (0 = 8/3 × embedding_dim, rounded up to a multiple of 8)."""
    rope_theta: float = 10000.0
    """Rotary base θ."""
    norm_eps: float = 1e-6
    """RMSNorm epsilon."""

    def derived(self) -> dict[str, int]:
        return {"ffn_dim": -(-8 * self.embedding_dim // 3 // 8) * 8}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.embedding_dim % self.num_heads or (self.embedding_dim // self.num_heads) % 2:
            raise ConfigError(
                f"model.embedding_dim={self.embedding_dim} must split into num_heads={self.num_heads} heads of even width (rotary)"
            )


class Llama(SequentialRecommender):
    config: LlamaConfig
    absolute_positions = False  # rotary positions inside attention instead

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        D, p, eps = config.embedding_dim, config.dropout, config.norm_eps
        self.blocks = nn.ModuleList(
            PreNormBlock(
                SelfAttention(D, config.num_heads, False, p, rotary_theta=config.rope_theta),
                SwiGLU(D, config.ffn_dim), nn.RMSNorm(D, eps=eps), nn.RMSNorm(D, eps=eps), p,
            )
            for _ in range(config.num_layers)
        )
        self.final_norm = nn.RMSNorm(D, eps=eps)

    def transduce(self, x: torch.Tensor, ctx: Context, cache: KVCache | None = None,
                  layer_outputs: list | None = None) -> tuple[torch.Tensor, KVCache]:
        x, new_cache = run_blocks(self.blocks, self.add_positions(x, ctx.q_pos), ctx, cache, layer_outputs)  # [B Nq D]
        return self.final_norm(x), new_cache

    def transduce_at(self, x: torch.Tensor, ctx: Context, at: torch.Tensor) -> torch.Tensor:
        """The last block for the tokens ``at`` only (:meth:`PreNormBlock.forward_at`) where :meth:`reads_at`."""
        if not self.reads_at(ctx):
            return super().transduce_at(x, ctx, at)
        return self.final_norm(run_blocks_at(self.blocks, self.add_positions(x, ctx.q_pos), ctx, at))
