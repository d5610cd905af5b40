"""The base of every sequence backbone: the :class:`~genrec.models.contracts.Retriever` contract
over one causal transducer.

Trainer, evaluator, CLI and the inference layer all go through these methods, so training,
evaluation and serving cannot drift apart. One file on purpose: the input side (item, attribute,
behaviour and user tables) and the output side (item vectors, top-k) must agree for every
backbone, and here they are read together.

- ``transduce(x, context, cache)`` -> the backbone over token embeddings under any attention
  context (causal, interleaved item/action tokens, M-FALCON candidates against a KV cache);
- ``encode(items, timestamps, query_timestamps)`` -> one vector per position (causal);
- ``encode_layers(...)`` -> the same, plus the hidden state after every layer (distillation);
- ``user_vectors(items, timestamps, query_time)`` -> the vector after the last history item;
- ``score_items`` / ``topk(..., exclude=...)`` over the whole catalogue, in bounded-memory chunks;
- ``score_candidates`` for given candidate items;
- the training losses in :mod:`genrec.training.losses` use ``encode`` and ``item_vectors``.

Sequences are right-padded with item id 0; real items are ``1..num_items``. Scores are cosine
similarities when ``l2_normalize`` is on (the reference setting), dot products otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from genrec.errors import ConfigError
from genrec.models.contracts import ItemTable, Retriever
from genrec.models.ops import Context, WeightCaches, same_version, version_key

KVCache = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer, the keys and values [B, H, N, d] of tokens encoded earlier."""


@dataclass
class ModelConfig:
    name: str = ""
    """Registered model name (``hstu``, ``sasrec``)."""
    num_items: int = 0
    """Catalogue size (item ids 1..num_items; 0 is padding). 0 here = take it from the data."""
    max_seq_len: int = 50
    """Longest history the model reads, in interactions (items), for every task (one fewer with
    ``user_features: token``, whose profile takes a position); longer histories keep their most
    recent items. Models over interleaved item/action tokens convert it to tokens
    themselves (:func:`genrec.models.generative.interleaved_tokens`)."""
    embedding_dim: int = 64
    """Width D of item embeddings and of the residual stream."""
    num_layers: int = 2
    """Number of blocks."""
    num_heads: int = 1
    """Attention heads."""
    dropout: float = 0.2
    """Dropout on the input embeddings and inside every block."""
    l2_normalize: bool = True
    """L2-normalise user and item vectors (cosine scores), as in the HSTU reference."""
    item_features: str = "none"
    """Item side information (needs ``data.item_features``): ``none``; ``sum``: an item's vector is
    its id embedding plus the mean of its attribute embeddings; ``concat``: a linear map of the two
    concatenated. The same vector is the input token and the output-side item vector, so items that
    never occur in training are still scored through their attributes."""
    num_attribute_tokens: int = 0
    """Attribute vocabulary size (set from the data when ``item_features`` is on)."""
    max_item_attributes: int = 0
    """Most attribute tokens of one item (set from the data when ``item_features`` is on)."""
    behaviour_embedding: bool = False
    """Multi-behaviour (needs ``data.behaviour``): add a learned embedding of each history
    interaction's behaviour (e.g. its rating level) to its token."""
    num_behaviours: int = 0
    """Behaviour vocabulary size (set from the data when ``behaviour_embedding`` is on)."""
    user_features: str = "none"
    """User side information (needs ``data.user_features``): ``none``; ``sum``: the mean of the
    user's attribute embeddings (age group, gender, ...) is added to every history token, so the
    query depends on who the user is as well as on what they did; ``concat``: each token is a
    linear map of the token and that mean, concatenated; ``token``: that mean is one more token
    at the start of the sequence (the HSTU paper's auxiliary series merged into the main one; a
    static profile is a series of one), read by every position through attention, and taking one
    of the ``max_seq_len`` positions (the model then reads ``max_seq_len - 1`` items; not with
    ``train.pack``)."""
    user_attributes: list[str] = field(default_factory=list)
    """User attribute vocabulary, token id k = ``user_attributes[k - 1]`` (set from the data when
    ``user_features`` is on; serving maps a request's attributes with it)."""
    max_user_attributes: int = 0
    """Most attribute tokens of one user (set from the data when ``user_features`` is on)."""
    user_numeric_fields: dict[str, list[float]] = field(default_factory=dict)
    """Decile edges of each numeric user field of the attribute file (``age=q3`` = three edges at
    or below the age), so serving tokenises a request's numbers as training did (set from the data)."""

    def __post_init__(self) -> None:
        if self.item_features not in ("none", "sum", "concat"):
            raise ConfigError(f"model.item_features={self.item_features!r}: expected 'none', 'sum' or 'concat'")
        if self.user_features not in ("none", "sum", "concat", "token"):
            raise ConfigError(f"model.user_features={self.user_features!r}: expected 'none', 'sum', 'concat' or 'token'")
        if self.user_features == "token" and self.max_seq_len < 2:
            raise ConfigError("model.user_features=token takes one of the max_seq_len positions: max_seq_len must be >= 2")
        for key in ("max_seq_len", "embedding_dim", "num_layers", "num_heads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key}={getattr(self, key)} must be >= 1")
        if self.num_items < 0:
            raise ConfigError(f"model.num_items={self.num_items} must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} must be in [0, 1)")
        for key, value in self.derived().items():  # 0 = follow the other fields
            if not getattr(self, key):
                setattr(self, key, value)

    def derived(self) -> dict[str, int]:
        """The fields whose 0 means "derive from the others" (an MLP's width from embedding_dim,
        say), with the values the other fields give them now. ``genrec tune`` uses it so that a
        field left to follow the width still follows a searched width."""
        return {}


def history_length(config: ModelConfig) -> int:
    """Most history items a model of ``config`` reads: ``max_seq_len``, less the profile token of
    ``user_features: token``."""
    return config.max_seq_len - (1 if config.user_features == "token" else 0)


def next_timestamps(timestamps: torch.Tensor, lengths: torch.Tensor, query_time: torch.Tensor) -> torch.Tensor:
    """Per position i, the time of the item that follows it: ``t[i+1]``; at the last real
    position, ``query_time`` (the request time). timestamps [B, N], lengths [B], query_time [B]."""
    nxt = torch.cat([timestamps[:, 1:], timestamps[:, -1:]], dim=1)  # [B N]
    rows = torch.arange(timestamps.size(0), device=timestamps.device)
    nxt[rows, lengths - 1] = query_time
    return nxt


class SequentialRecommender(WeightCaches, nn.Module, Retriever):
    """Base class of the backbones: item table, scoring over the catalogue, top-k with exclusions.
    Subclasses implement :meth:`transduce` (and may override :meth:`time_buckets`)."""

    config: ModelConfig
    absolute_positions: bool = True
    """Whether the input adds a learned absolute position embedding (False for rotary backbones)."""
    _cache_fields = ("_catalogue_cache",)

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.num_items < 1:
            raise ConfigError("model.num_items must be set (>= 1) before building a model")
        self.config = config
        self._catalogue_cache: tuple[list, torch.Tensor] | None = None  # see catalogue_vectors
        self.item_embedding = ItemTable(config.num_items, config.embedding_dim)
        if config.item_features != "none":
            if config.num_attribute_tokens < 1 or config.max_item_attributes < 1:
                raise ConfigError(f"model.item_features={config.item_features!r} needs the item attributes: set data.item_features "
                                  "(a file, or auto for a dataset that has one)")
            self.attribute_embedding = nn.EmbeddingBag(config.num_attribute_tokens + 1, config.embedding_dim, mode="mean", padding_idx=0)
            nn.init.trunc_normal_(self.attribute_embedding.weight, std=0.02)
            with torch.no_grad():
                self.attribute_embedding.weight[0].zero_()
            # item idx -> its attribute token ids (0 = none); filled from the data, saved with the model
            self.register_buffer("item_attributes", torch.zeros(config.num_items + 1, config.max_item_attributes, dtype=torch.long))
            if config.item_features == "concat":
                self.feature_proj = nn.Linear(2 * config.embedding_dim, config.embedding_dim, bias=False)
        if config.behaviour_embedding:
            if config.num_behaviours < 1:
                raise ConfigError("model.behaviour_embedding needs behaviours: data.behaviour (+ behaviour_values) or data.domains")
            self.behaviour_table = nn.Embedding(config.num_behaviours + 1, config.embedding_dim, padding_idx=0)
            nn.init.trunc_normal_(self.behaviour_table.weight, std=0.02)
            with torch.no_grad():
                self.behaviour_table.weight[0].zero_()
        if config.user_features != "none":
            if not config.user_attributes or config.max_user_attributes < 1:
                raise ConfigError(f"model.user_features={config.user_features} needs the user attributes: set data.user_features "
                                  "(a file, or auto for a dataset that has one)")
            self.user_table = nn.EmbeddingBag(len(config.user_attributes) + 1, config.embedding_dim, mode="mean", padding_idx=0)
            nn.init.trunc_normal_(self.user_table.weight, std=0.02)
            with torch.no_grad():
                self.user_table.weight[0].zero_()
            if config.user_features == "concat":
                self.user_proj = nn.Linear(2 * config.embedding_dim, config.embedding_dim, bias=False)
        if self.absolute_positions:
            self.pos_embedding = nn.Embedding(config.max_seq_len, config.embedding_dim)
            nn.init.trunc_normal_(self.pos_embedding.weight, std=0.02)

    @property
    def num_items(self) -> int:
        return self.config.num_items

    @property
    def max_history(self) -> int:
        """Most history interactions the model reads (one token each; ``max_seq_len`` less the
        profile token of ``user_features: token``)."""
        return history_length(self.config)

    def embedding_parameters(self) -> int:
        n = self.item_embedding.weight.numel()
        if self.config.item_features != "none":
            n += self.attribute_embedding.weight.numel()
        if self.config.behaviour_embedding:
            n += self.behaviour_table.weight.numel()
        if self.config.user_features != "none":
            n += self.user_table.weight.numel()
        return n + (self.pos_embedding.weight.numel() if self.absolute_positions else 0)

    def load_item_attributes(self, tokens: torch.Tensor) -> None:
        """Fill the attribute table [num_items + 1, max_item_attributes] (from
        :class:`genrec.data.item_features.ItemFeatures`) of a model built with ``item_features``."""
        if self.config.item_features == "none":
            raise ConfigError("this model has model.item_features=none: it reads no item attributes")
        if tuple(tokens.shape) != tuple(self.item_attributes.shape):
            raise ConfigError(f"item attribute table {tuple(tokens.shape)} does not fit this model's {tuple(self.item_attributes.shape)}")
        if int(tokens.max()) > self.config.num_attribute_tokens or int(tokens.min()) < 0:
            raise ConfigError(f"item attribute ids must lie in 0..{self.config.num_attribute_tokens}")
        self.item_attributes.copy_(tokens)

    def item_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [...] -> the items' vectors before scaling or normalisation [..., D]: the id
        embedding, with ``item_features`` fused with the mean of the item's attribute embeddings."""
        e = self.item_embedding(ids)
        if self.config.item_features == "none":
            return e
        attrs = self.attribute_embedding(self.item_attributes[ids.reshape(-1)]).view(*ids.shape, self.config.embedding_dim)  # items without any: 0
        if self.config.item_features == "sum":
            return e + attrs
        return self.feature_proj(torch.cat([e, attrs], dim=-1))

    def compile_backbone(self, compile_fn) -> bool:
        self.transduce = compile_fn(self.transduce)
        return True

    @property
    def uses_timestamps(self) -> bool:
        """Whether ``encode`` reads timestamps (a time bias is on)."""
        return False

    @property
    def reads_behaviours(self) -> bool:
        """Whether ``encode`` needs each history item's behaviour id (``model.behaviour_embedding``)."""
        return self.config.behaviour_embedding

    @property
    def reads_user_attributes(self) -> bool:
        """Whether ``encode`` needs each user's attribute token ids (``model.user_features``)."""
        return self.config.user_features != "none"

    # ---- to implement -------------------------------------------------------------------------
    def transduce(
        self, x: torch.Tensor, ctx: Context, cache: KVCache | None = None, layer_outputs: list | None = None
    ) -> tuple[torch.Tensor, KVCache]:
        """Token embeddings x [B, Nq, D] (no positions yet) -> (hidden states [B, Nq, D], the keys
        and values of this call's tokens appended to ``cache``). Positions come from ``ctx.q_pos``.
        ``layer_outputs``: when given, the hidden state leaving each layer is appended to it."""
        raise NotImplementedError

    def transduce_at(self, x: torch.Tensor, ctx: Context, at: torch.Tensor) -> torch.Tensor:
        """The hidden state of :meth:`transduce` at one token per row: ``at`` [B] token indices ->
        [B, D] (no cache, no layer outputs; what :meth:`user_vectors` reads). The backbones
        override it to run their final layer for those tokens only where :meth:`reads_at` allows."""
        h, _ = self.transduce(x, ctx)
        return h[torch.arange(h.size(0), device=h.device), at]

    def reads_at(self, ctx: Context) -> bool:
        """Whether a backbone's :meth:`transduce_at` may skip the final layer's other tokens: eval
        mode, no autograd, a plain causal context (no packed rows), and ``transduce`` is the one
        written beside that ``transduce_at``. Not when this object's ``transduce`` was replaced
        (``compile_backbone``: evaluation then runs the compiled graph, as before) or a subclass
        re-defines ``transduce`` alone (its own layers are what its vectors must come from)."""
        if torch.is_grad_enabled() or self.training or not ctx.is_causal or "transduce" in vars(self):
            return False
        mro = type(self).__mro__
        at_owner, owner = (next(c for c in mro if name in vars(c)) for name in ("transduce_at", "transduce"))
        return issubclass(at_owner, owner)

    # ---- input --------------------------------------------------------------------------------
    def time_buckets(self, ctx: Context, rel_bias) -> torch.Tensor | None:
        """Time-bucket indices [B, Nq, Nk] for a relative time bias (computed once per call and
        shared by every layer), or None when the model has no time bias."""
        if not self.uses_timestamps:
            return None
        if ctx.q_time is None or ctx.k_time is None:
            raise ValueError(f"this {self.config.name} has time_bias on: pass timestamps and query timestamps")
        return rel_bias.buckets(ctx.k_time, ctx.q_time)

    def embed_items(self, items: torch.Tensor, behaviours: torch.Tensor | None = None,
                    user_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """items [...] -> item embedding × √D [..., D] (the input scale of the HSTU reference); with
        ``behaviour_embedding``, plus the embedding of each item's ``behaviours`` [...] (ids, 0 = none);
        with ``user_features``, plus the mean embedding of the user's attribute tokens ``user_tokens``
        ([B, 1, M] per row, or [B, N, M] per token for packed rows; ids, 0 = none)."""
        x = self.item_rows(items)
        if self.config.behaviour_embedding:
            if behaviours is None:
                raise ValueError("this model reads behaviours (model.behaviour_embedding): pass one per history item")
            x = x + self.behaviour_table(behaviours)
        if self.config.user_features != "none":
            if user_tokens is None:
                raise ValueError("this model reads user attributes (model.user_features): pass the user's attribute token ids")
            if user_tokens.dim() != 3 or user_tokens.size(0) != items.size(0) or user_tokens.size(1) not in (1, items.size(1)):
                raise ValueError(f"user_tokens {tuple(user_tokens.shape)}: expected [B, 1, M] or [B, N, M] for items {tuple(items.shape)}")
            profile = self.user_table(user_tokens.reshape(-1, user_tokens.size(-1))).view(*user_tokens.shape[:2], -1)  # none: 0
            if self.config.user_features == "sum":
                x = x + profile
            elif self.config.user_features == "concat":
                x = self.user_proj(torch.cat([x, profile.expand(-1, x.size(1), -1)], dim=-1))
            # token: the profile is a token of its own (:meth:`_inputs`), not part of the items
        return x * math.sqrt(self.config.embedding_dim)

    def add_positions(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [B, N, D] + learned absolute position (when the backbone has one) -> dropout.
        Rejects positions beyond ``max_seq_len``: callers truncate on purpose, never silently here."""
        # (the check syncs on the max; under torch.compile the embedding lookup rejects bad positions)
        if not torch.compiler.is_compiling() and positions.numel() and int(positions.max()) >= self.config.max_seq_len:
            raise ValueError(f"sequence length {int(positions.max()) + 1} exceeds model.max_seq_len={self.config.max_seq_len}")
        if self.absolute_positions:
            x = x + self.pos_embedding(positions)
        return F.dropout(x, p=self.config.dropout, training=self.training)

    def encode(
        self,
        items: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        query_timestamps: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
        behaviours: torch.Tensor | None = None,
        user_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """items [B, N] right-padded -> [B, N, D]; position i sees items 0..i only. With
        ``segments`` [B, N] (packed rows, see :meth:`Context.packed`), each row holds several
        sequences and a token sees only the earlier tokens of its own sequence. ``behaviours``
        [B, N]: each item's behaviour id (read when ``reads_behaviours``); ``user_tokens``: the
        user's attribute ids (read when ``reads_user_attributes``; shapes in :meth:`embed_items`)."""
        x, ctx = self._inputs(items, timestamps, query_timestamps, segments, behaviours, user_tokens)
        h, _ = self.transduce(x, ctx)
        return self._normalize(self._drop_profile(h))

    def encode_layers(
        self,
        items: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        query_timestamps: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
        behaviours: torch.Tensor | None = None,
        user_tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """:meth:`encode` plus the hidden state leaving each layer (layer-aligned distillation):
        (encode's output [B, N, D], ``num_layers`` tensors [B, N, W], W = :attr:`layer_width`).
        The states are the residual stream after each layer, before any final norm or output map."""
        layers: list[torch.Tensor] = []
        x, ctx = self._inputs(items, timestamps, query_timestamps, segments, behaviours, user_tokens)
        h, _ = self.transduce(x, ctx, None, layers)
        return self._normalize(self._drop_profile(h)), [self._drop_profile(s) for s in layers]

    @property
    def layer_width(self) -> int:
        """Width W of the per-layer hidden states of :meth:`encode_layers`."""
        return self.config.embedding_dim

    def _inputs(self, items, timestamps, query_timestamps, segments, behaviours, user_tokens) -> tuple[torch.Tensor, Context]:
        """Token embeddings [B, N(+1), D] and attention context of :meth:`encode`: the items, and
        with ``user_features: token`` the user's profile token first (its time: the first item's)."""
        x = self.embed_items(items, behaviours, user_tokens)
        if self.config.user_features != "token":
            return x, self._context(items, timestamps, query_timestamps, segments)
        if segments is not None:
            raise ValueError("model.user_features=token reads padded rows, not packed ones (train.pack)")
        if items.size(1) > self.max_history:
            raise ValueError(f"sequence length {items.size(1)} exceeds the {self.max_history} items this model reads "
                             f"(model.max_seq_len={self.config.max_seq_len}, one position is the profile token)")
        profile = self.user_table(user_tokens.reshape(-1, user_tokens.size(-1))).view(items.size(0), 1, -1)  # [B 1 D]
        x = torch.cat([profile * math.sqrt(self.config.embedding_dim), x], dim=1)
        if timestamps is not None and query_timestamps is not None:  # the profile sits at the first item's time
            timestamps, query_timestamps = (torch.cat([timestamps[:, :1], t], dim=1) for t in (timestamps, query_timestamps))
        return x, self._context(F.pad(items, (1, 0), value=1), timestamps, query_timestamps, None)

    def _drop_profile(self, h: torch.Tensor) -> torch.Tensor:
        """Outputs [B, N(+1), ...] -> the items' [B, N, ...] (without the profile token's)."""
        return h[:, 1:] if self.config.user_features == "token" else h

    def _context(self, items: torch.Tensor, timestamps: torch.Tensor | None, query_timestamps: torch.Tensor | None,
                 segments: torch.Tensor | None) -> Context:
        """The attention context of :meth:`encode`: causal, or per sequence for packed rows."""
        if not self.uses_timestamps:
            timestamps = query_timestamps = None
        elif timestamps is None or query_timestamps is None:
            raise ValueError(f"this {self.config.name} has a time bias: pass timestamps and query_timestamps")
        if segments is None:
            return Context.causal(items.size(1), items.device, query_timestamps, timestamps, valid=items != 0)
        return Context.packed(segments, query_timestamps, timestamps)

    # ---- shared contract ----------------------------------------------------------------------
    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1, eps=1e-6) if self.config.l2_normalize else x

    def item_vectors(self, ids: torch.Tensor | None = None, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Output-side item vectors: for ``ids`` (any shape) -> [..., D], else rows start..end-1.
        Rows of the catalogue read without autograd (evaluation, serving) come from
        :meth:`catalogue_vectors`, computed once per version of the weights."""
        if ids is None and not torch.is_grad_enabled() and (self.config.l2_normalize or self.config.item_features != "none"):
            return self.catalogue_vectors()[start:end]
        if ids is None and self.config.item_features != "none":
            ids = torch.arange(start, self.config.num_items + 1 if end is None else end, device=self.item_attributes.device)
        vecs = self.item_rows(ids) if ids is not None else self.item_embedding.weight[start:end]
        return self._normalize(vecs)

    def catalogue_vectors(self) -> torch.Tensor:
        """Every output-side item vector [num_items + 1, D] (row 0: padding), without autograd.
        In eval mode, kept until a tensor it is computed from is replaced or changed in place (an
        optimizer step, ``load_state_dict``), or the model is moved (``.to``) or set to training:
        the key is their :func:`version_key`, so a full-catalogue scan does not re-normalise (or
        re-fuse) the whole table per request. Computed afresh in training mode."""
        sources = [self.item_embedding.weight]
        if self.config.item_features != "none":
            sources += [self.attribute_embedding.weight, self.item_attributes]
            sources += list(self.feature_proj.parameters()) if self.config.item_features == "concat" else []
        key, cached = version_key(self, sources), self._catalogue_cache
        if cached is not None and same_version(cached[0], key):
            return cached[1]
        with torch.no_grad():
            if self.config.item_features != "none":
                ids = torch.arange(self.config.num_items + 1, device=self.item_attributes.device)
                vecs = self._normalize(self.item_rows(ids))
            else:
                vecs = self._normalize(self.item_embedding.weight)
        if key is not None:
            self._catalogue_cache = (key, vecs)  # one assignment: a concurrent reader sees the old pair or the new
        return vecs

    def user_vectors(
        self,
        items: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        query_time: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        behaviours: torch.Tensor | None = None,
        user_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """History items [B, N] (right-padded, each row non-empty) -> [B, D] next-item query vector.
        ``labels`` (feedback per history item) is read only by models over interleaved sequences,
        ``behaviours`` [B, N] only by models with ``behaviour_embedding``, ``user_tokens`` [B, 1, M]
        only by models with ``user_features``."""
        lengths = (items != 0).sum(dim=1)
        if bool((lengths == 0).any()):
            raise ValueError("every history must contain at least one item")
        query_ts = None
        if timestamps is not None and self.uses_timestamps:
            rows = torch.arange(items.size(0), device=items.device)
            last = timestamps[rows, lengths - 1]
            query_ts = next_timestamps(timestamps, lengths, last if query_time is None else query_time)
        if type(self).encode is not SequentialRecommender.encode:  # a subclass that encodes its own way: read its encode()
            users = {} if user_tokens is None else {"user_tokens": user_tokens}  # (its encode need not take it)
            h = self.encode(items, timestamps, query_ts, behaviours=behaviours, **users)  # [B N D]
            return h[torch.arange(items.size(0), device=items.device), lengths - 1]
        x, ctx = self._inputs(items, timestamps, query_ts, None, behaviours, user_tokens)
        at = lengths - 1 + (1 if self.config.user_features == "token" else 0)  # (the profile token comes first)
        return self._normalize(self.transduce_at(x, ctx, at))  # [B D]: encode()'s output at each row's last item

    def score_items(self, user: torch.Tensor, start: int = 1, end: int | None = None) -> torch.Tensor:
        """user [B, D] -> scores [B, end - start] for item ids start..end-1."""
        return user @ self.item_vectors(start=start, end=end).T

    def score_candidates(self, user: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """user [B, D], candidates [B, C] item ids -> [B, C]."""
        return torch.einsum("bd,bcd->bc", user, self.item_vectors(candidates))

    @torch.no_grad()
    def topk(
        self,
        user: torch.Tensor,
        k: int,
        exclude: torch.Tensor | None = None,
        chunk_size: int = 65536,
        start: int = 1,
        end: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k items over the catalogue, or over item ids start..end-1 only. exclude [B, E] item
        ids never returned (0 = none). Returns (scores [B, k'], item ids [B, k']) with
        k' = min(k, end - start), best first; excluded items may fill the tail only when fewer than
        k items remain (score -inf). Non-finite scores (NaN/inf) count as -inf: they rank last."""
        B, end = user.size(0), item_range_end(self.config.num_items, start, end)
        k = min(k, end - start)
        best_s = user.new_full((B, 0), float("-inf"))
        best_i = torch.zeros((B, 0), dtype=torch.long, device=user.device)
        for first in range(start, end, chunk_size):
            last = min(first + chunk_size, end)
            s = self.score_items(user, first, last).float()  # [B C]
            if not bool(torch.isfinite(s.sum())):  # one reduction; a non-finite score makes the sum non-finite
                s = s.masked_fill(~torch.isfinite(s), float("-inf"))  # non-finite scores rank last
            if exclude is not None:
                s = mask_items(s, exclude, first, last)
            s_top, i_top = s.topk(min(k, last - first), dim=1)
            best_s, order = torch.cat([best_s, s_top], 1).topk(min(k, best_s.size(1) + s_top.size(1)), dim=1)
            best_i = torch.cat([best_i, i_top + first], 1).gather(1, order)
        return best_s, best_i


def item_range_end(num_items: int, start: int, end: int | None) -> int:
    """``end`` checked against the catalogue (None = past the last item id)."""
    end = num_items + 1 if end is None else end
    if not 1 <= start < end <= num_items + 1:
        raise ValueError(f"item range [{start}, {end}) is not inside the catalogue's ids 1..{num_items}")
    return end


def mask_items(scores: torch.Tensor, items: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Scores [B, C] with the item ids in ``items`` [B, E] (ids start..end-1 map to columns; others
    and 0 ignored) set to -inf: a copy, written at the B·E excluded cells only."""
    keep = (items >= start) & (items < end) & (items != 0)
    rows = torch.arange(items.size(0), device=items.device).unsqueeze(1).expand_as(items)[keep]
    return scores.index_put((rows, (items - start)[keep]), scores.new_tensor(float("-inf")))
