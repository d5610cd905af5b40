"""GPT-style sequential recommender (the "GPT" backbone of the scaling study, PAPERS.md §3).

    x = E[items] × √D + P[positions] → dropout              learned absolute positions
    per block:  x = x + Dropout(MHA(LN(x)))                  pre-LN, softmax attention
                x = x + Dropout(W2 GELU(W1 LN(x)))           4D hidden by default
    out = LN(x)

Deviations from GPT-2: item embeddings are not tied to an LM head (items are scored against the
item table by the shared retrieval contract, cosine when ``l2_normalize``); the input is scaled by
√D as in every genrec backbone; no special initialisation of residual projections.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genrec.errors import ConfigError
from genrec.models.base import KVCache, ModelConfig, SequentialRecommender
from genrec.models.layers import GELUMLP, PreNormBlock, SelfAttention, run_blocks, run_blocks_at
from genrec.models.ops import Context


@dataclass
class GPTConfig(ModelConfig):
    name: str = "gpt"
    ffn_dim: int = 0
    """Hidden width of the GELU MLP (0 = 4 × embedding_dim, as GPT-2)."""

    def derived(self) -> dict[str, int]:
        return {"ffn_dim": 4 * self.embedding_dim}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.embedding_dim % self.num_heads:
            raise ConfigError(f"model.embedding_dim={self.embedding_dim} is not divisible by num_heads={self.num_heads}")


class GPT(SequentialRecommender):
    config: GPTConfig

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        D, p = config.embedding_dim, config.dropout
        self.blocks = nn.ModuleList(
            PreNormBlock(SelfAttention(D, config.num_heads, True, p), GELUMLP(D, config.ffn_dim), nn.LayerNorm(D), nn.LayerNorm(D), p)
            for _ in range(config.num_layers)
        )
        self.final_norm = nn.LayerNorm(D)

    def transduce(self, x: torch.Tensor, ctx: Context, cache: KVCache | None = None,
                  layer_outputs: list | None = None) -> tuple[torch.Tensor, KVCache]:
        x, new_cache = run_blocks(self.blocks, self.add_positions(x, ctx.q_pos), ctx, cache, layer_outputs)  # [B Nq D]
        return self.final_norm(x), new_cache

    def transduce_at(self, x: torch.Tensor, ctx: Context, at: torch.Tensor) -> torch.Tensor:
        """The last block for the tokens ``at`` only (:meth:`PreNormBlock.forward_at`) where :meth:`reads_at`."""
        if not self.reads_at(ctx):
            return super().transduce_at(x, ctx, at)
        return self.final_norm(run_blocks_at(self.blocks, self.add_positions(x, ctx.q_pos), ctx, at))
