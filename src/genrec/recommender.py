"""Python API over a trained checkpoint: ``Recommender.load(path).recommend(history, k)`` (top-k
over the catalogue) and ``.rank(history, candidates, feedback)`` (ranking-head outputs).

The layer a server calls: one :class:`Recommender` per checkpoint, shared by every request thread.
What a checkpoint can answer is what its model declares (:mod:`genrec.models.contracts`):
``recommend`` / ``score`` / ``user_vector`` / ``item_vectors`` need a
:class:`~genrec.models.contracts.Retriever`, ``rank`` a :class:`~genrec.models.contracts.Ranker`;
a unified checkpoint is both. One class in one file on purpose: every request path (single,
batched, ranking) goes through the same input checks, so they cannot drift apart.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

import torch

from genrec.checkpoint import load_model
from genrec.data.domains import domain_name
from genrec.data.user_features import request_tokens
from genrec.errors import GenrecError, UnknownItemError
from genrec.models.contracts import Model, Ranker, Retriever
from genrec.models.generative import InterleavedRanker


class Query(NamedTuple):
    """One request's checked model inputs (built per call by :meth:`Recommender.query`, never
    stored on the Recommender): what a micro-batcher collects before one forward pass."""

    items: torch.Tensor  # [1, n] item idx of the newest n <= max_history known history items
    timestamps: torch.Tensor | None  # [1, n] when the model has a time bias
    query_time: torch.Tensor | None  # [1] the request time, when given
    labels: torch.Tensor | None  # [1, n, A] feedback of those items, when the model reads it
    known: list[int]  # item idx of the whole known history (excluded from top-k)
    behaviours: torch.Tensor | None = None  # [1, n] behaviour ids of those items, when the model reads them
    user_tokens: torch.Tensor | None = None  # [1, 1, M] the user's attribute ids, when the model reads them
    item_range: tuple[int, int] | None = None  # multi-domain: item idx [first, end) of the requested domain, what it ranks


class Recommender:
    """A trained model behind raw item ids: top-k, candidate scores, ranking outputs, vectors.

    Holds only the model (put in eval mode once, here, and never toggled) and read-only maps:
    ``item_ids`` (raw id of item idx 1..I), ``index`` (raw id -> idx) and ``experiment`` (the
    training config). Nothing about a request is stored on the object, and every forward pass runs
    under ``torch.inference_mode()``, so one instance is safe to share across threads (a server's
    workers call it concurrently; do not train or edit the model while it serves).

    Requests:

    - histories are raw item ids (as in the source data, compared as strings), oldest first, with
      one timestamp (unix seconds) per item when the model has a time bias, and one feedback value
      per ranking task per item (a scalar, or a list for several tasks; models whose tasks are like
      and the rating it comes from also take one rating per item, :attr:`rating_threshold`) when it reads feedback
      (ranking, unified and DIN checkpoints), or one behaviour value per item (e.g. its rating)
      when it reads behaviours (``model.behaviour_embedding``; the values of the training config's
      ``data.behaviour_values``); ``query_time`` is the request time (default: the last history item's);
    - ``user_attributes`` (models with ``model.user_features``): the user's attributes as
      ``field=value`` tokens (``["gender=F", "age=25-34"]``) or a ``{field: value}`` dict, in the
      vocabulary the model was trained with (:attr:`user_attribute_vocabulary`). A token outside it
      raises ``ValueError`` naming it, or is dropped with ``ignore_unknown=True``; none given reads
      the history alone, as training did for users the attribute file lacked. Models without user
      features refuse attributes;
    - histories longer than the model's limit (``max_history``: ``model.max_seq_len`` interactions,
      one fewer with a profile token) keep their newest items; ``recommend`` still excludes every
      known history item, not only those kept;
    - unknown ids raise :class:`~genrec.errors.UnknownItemError` naming them, or are dropped (with
      their timestamps and feedback) when ``ignore_unknown=True``; unknown candidates always raise;
    - an empty history (or one with no known item left) raises ``ValueError``: a cold-start user
      needs a fallback (e.g. popular items) outside the model;
    - a multi-domain checkpoint (``data.domains``) answers for one ``domain`` per request (one of
      :attr:`domains`): the history holds that domain's items (raw ids, or ``<domain>:<id>``) and,
      as context, other domains' items as ``<domain>:<id>``, in the order training read them
      (without timestamps: the other domains' items first); the domain token of each item is set
      from its domain, and top-k ranks the requested domain's catalogue only;
    - asking a ranking-only checkpoint (DIN, ``task.kind: ranking``) for retrieval, or a
      retrieval-only one for ``rank``, raises :class:`~genrec.errors.GenrecError` saying which
      method it does answer.
    """

    def __init__(self, model: Model, item_ids: Sequence[str], experiment: dict | None = None):
        if not isinstance(model, Model):
            raise TypeError(f"Recommender needs a genrec model (Retriever and/or Ranker), got {type(model).__name__}")
        if len(item_ids) != model.num_items:
            raise GenrecError(f"{len(item_ids)} item ids for a model over {model.num_items} items")
        self.model = model.eval()
        self._device = next(itertools.chain(model.parameters(), model.buffers())).device
        self.item_ids: tuple[str, ...] = tuple(str(i) for i in item_ids)
        self._idx = {raw: i + 1 for i, raw in enumerate(self.item_ids)}  # (lookups: a plain dict's get is faster than the view's)
        self.index = MappingProxyType(self._idx)
        if len(self.index) != len(self.item_ids):
            raise GenrecError("the item id list repeats an id: raw ids must be unique")
        self.experiment = dict(experiment or {})
        task = self.experiment.get("task") or {}
        self._rating_threshold = (float(task.get("positive_rating", 4.0))
                                  if task.get("labels") == "rating" and self.task_names == ["like", "rating"] else None)
        ranges = model.head_config.feedback_range if isinstance(model, InterleavedRanker) else ()
        self._rating_range = ranges[1] if self._rating_threshold is not None and ranges else None
        # user attribute -> token id, built once (read by every request of a model with user features)
        self._user_index = MappingProxyType({t: k + 1 for k, t in enumerate(self.user_attribute_vocabulary)})
        self.domains = MappingProxyType(_domain_ranges(self.item_ids, (self.experiment.get("data") or {}).get("domains") or []))
        """Multi-domain checkpoints: domain name -> item idx [first, end) (empty otherwise)."""

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "Recommender":
        """Load a checkpoint folder, e.g. ``runs/<run>/best`` (or ``last``), onto ``device``
        (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).

        Checked on the way in (:func:`genrec.checkpoint.load_model`): every ``*.safetensors`` file
        against the SHA-256 in ``digests.json``, every JSON file parses, the weights match the model
        that ``model.json`` (+ ``head.json``) describes key for key, and ``items.json`` holds one
        unique raw id per catalogue item. Any failure is one :class:`~genrec.errors.CheckpointError`
        or :class:`~genrec.errors.GenrecError` line; no pickle is ever loaded. A folder left
        half-swapped by a crash is read from its ``.old`` copy.
        """
        model, items, experiment = load_model(path, device)
        return cls(model, items, experiment)

    # ---- what the checkpoint is ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the model's weights are, read once at construction (every request asks; walking
        the parameters each time was ~4% of a serving worker's event loop). Move a model by loading
        it onto the device (:meth:`load`), not by moving ``model`` afterwards."""
        return self._device

    @property
    def reads_feedback(self) -> bool:
        """Whether requests must give the feedback of each history item."""
        return self.model.reads_feedback

    @property
    def reads_behaviours(self) -> bool:
        """Whether requests must give each history item's behaviour (as ``feedback``)."""
        return self.model.reads_behaviours

    @property
    def reads_user_attributes(self) -> bool:
        """Whether the model reads the user's attributes (``user_attributes``)."""
        return self.model.reads_user_attributes

    @property
    def user_attribute_vocabulary(self) -> list[str]:
        """The ``field=value`` user attribute tokens the model knows (empty when it reads none)."""
        return list(self.model.config.user_attributes) if self.reads_user_attributes else []

    @property
    def rating_threshold(self) -> float | None:
        """``t`` for checkpoints whose two ranking tasks both come from the rating (``task.labels:
        rating`` with ``task.regression_actions: [rating]``: like = rating >= t, and the rating): their
        feedback may be one rating per history item, like then derived from it. None otherwise."""
        return self._rating_threshold

    @property
    def rating_range(self) -> tuple[float, float] | None:
        """(min, max) of the training ratings where :attr:`rating_threshold` is set and the checkpoint
        records them (a rating given alone is checked against it); None otherwise."""
        return self._rating_range

    @property
    def task_names(self) -> list[str]:
        """Ranking tasks (keys of :meth:`rank`'s dicts, feedback order); empty for retrieval-only."""
        return list(self.model.task_names) if isinstance(self.model, Ranker) else []

    def _retriever(self) -> Retriever:
        if not isinstance(self.model, Retriever):
            raise GenrecError(
                f"this checkpoint is a ranking-only model ({type(self.model).__name__}): it has no trained retrieval "
                "side, so recommend/score/user_vector/item_vectors are not available; use rank(history, candidates, "
                "feedback) on candidates from a retrieval model"
            )
        return self.model

    def _ranker(self) -> Ranker:
        if not isinstance(self.model, Ranker):
            raise GenrecError(
                f"this checkpoint is a retrieval-only model ({type(self.model).__name__}) with no ranking head; "
                "use score() for candidate scores, or a ranking/unified checkpoint for rank()"
            )
        return self.model

    # ---- request -> tensors (pure functions of their arguments) ----------------------------------
    def _encode_ids(self, history: Sequence, ignore_unknown: bool) -> tuple[list[int], list[int]]:
        """Raw ids -> (item idx of the known ids, their positions in ``history``)."""
        if len(history) == 0:
            raise ValueError("the history is empty: give at least one item id")
        found = [self._idx.get(raw if type(raw) is str else str(raw)) for raw in history]
        if None not in found:  # (the usual case: every id known)
            return found, list(range(len(found)))
        idx, kept, unknown = [], [], []
        for pos, (raw, i) in enumerate(zip(history, found)):
            if i is None:
                unknown.append(str(raw))
            else:
                idx.append(i)
                kept.append(pos)
        if unknown and not ignore_unknown:
            raise UnknownItemError(unknown)
        if not idx:
            raise ValueError(f"none of the history's item ids is in the catalogue ({len(unknown)} unknown)")
        return idx, kept

    def _labels(self, feedback: Sequence | None, history_len: int, kept: list[int]) -> torch.Tensor | None:
        """Per-history-item feedback (scalars or per-task lists) -> [1, n, A] for the kept items."""
        if not self.reads_feedback:
            return None
        names, threshold = self.task_names, self.rating_threshold
        also = f", or one rating per item (like = rating >= {threshold:g})" if threshold is not None else ""
        if feedback is None:
            raise ValueError(f"this model reads feedback: give one value per history item for tasks {names}{also}")
        rows = [[float(x) for x in v] if isinstance(v, (list, tuple)) else [float(v)] for v in feedback]
        singles = []
        if threshold is not None and any(len(r) == 1 for r in rows):  # one rating per item stands for (like, rating)
            rows = [[float(r[0] >= threshold), r[0]] if len(r) == 1 else r for r in rows]
            singles = [(v[0] if isinstance(v, (list, tuple)) else v) for v in feedback if not isinstance(v, (list, tuple)) or len(v) == 1]
        if len(rows) != history_len or any(len(r) != len(names) for r in rows):
            raise ValueError(f"feedback needs {history_len} entries (one per history item) of {len(names)} value(s) each{also}")
        lo, hi = self._rating_range or (-math.inf, math.inf)  # (older checkpoints record no range)
        bad = [v for v in singles if isinstance(v, bool) or not lo <= float(v) <= hi]
        if bad:  # e.g. like labels (1, 0) given to a like + rating model
            raise ValueError(f"feedback {bad[:3]} read as ratings is outside the training ratings' range [{lo:g}, {hi:g}] "
                             f"(or is a boolean): give one rating per item, or (like, rating) pairs")
        return torch.tensor([[rows[p] for p in kept]], dtype=torch.float32, device=self.device)

    def _behaviours(self, feedback: Sequence | None, history_len: int, kept: list[int]) -> torch.Tensor | None:
        """Per-history-item behaviour values -> [1, n] behaviour ids (1..B in the order of the
        training config's ``data.behaviour_values``) for the kept items."""
        if not self.reads_behaviours:
            return None
        data = self.experiment.get("data") or {}
        vocab = [float(v) for v in data.get("behaviour_values") or []]
        what = f"data.behaviour={data.get('behaviour')!r}, one of {vocab}"
        if feedback is None or len(feedback) != history_len:
            raise ValueError(f"this model reads behaviours: give feedback with one value per history item ({what})")
        ids = []
        for v in feedback:
            value = _behaviour_value(v)
            if value not in vocab:
                raise ValueError(f"behaviour {v!r} is not one of the model's behaviour values ({what})")
            ids.append(vocab.index(value) + 1)
        return torch.tensor([[ids[p] for p in kept]], device=self.device)

    def _user_tokens(self, attributes, ignore_unknown: bool) -> torch.Tensor | None:
        """A request's user attributes -> [1, 1, M] token ids (0 = none) for a model that reads them."""
        if not self.reads_user_attributes:
            if attributes:
                raise ValueError("this model reads no user attributes (trained without model.user_features): leave them out")
            return None
        vocab = self.user_attribute_vocabulary
        tokens = request_tokens(attributes, self.model.config.user_numeric_fields, vocab)
        index = self._user_index
        unknown = [t for t in tokens if t not in index]
        if unknown and not ignore_unknown:
            raise ValueError(f"unknown user attribute(s) {unknown[:5]}: this model knows {len(vocab)} tokens "
                             f"such as {vocab[:5]} (field=value)")
        ids = sorted({index[t] for t in tokens if t in index})
        width = max(int(self.model.config.max_user_attributes), len(ids), 1)
        return torch.tensor([[ids + [0] * (width - len(ids))]], device=self.device)

    def _read(self, feedback: Sequence | None, history_len: int, kept: list[int]) -> list[int]:
        """Which of the ``kept`` history positions the model reads: all of them, or, for a model
        trained on target behaviours only (``data.read_behaviours: targets``) and given
        ``feedback``, those whose value is a target behaviour (without feedback, the history is read
        as sent: send that model the positives)."""
        data = self.experiment.get("data") or {}
        if data.get("read_behaviours") != "targets" or feedback is None:
            return kept
        if len(feedback) != history_len:
            raise ValueError(f"feedback needs {history_len} entries (one behaviour value per history item)")
        targets = [float(v) for v in data.get("target_behaviours") or []]
        read = [p for p in kept if _behaviour_value(feedback[p]) in targets]
        if not read:
            raise ValueError(f"none of the history items has a target behaviour ({data.get('behaviour')} in {targets}); "
                             "this model reads only those")
        return read

    def resolve_history(self, history: Sequence, domain: str | None = None) -> list[str]:
        """Raw history ids as the catalogue names them: for a multi-domain checkpoint, an id that
        is not ``<domain>:<id>`` already is taken as the requested ``domain``'s."""
        if not self.domains:
            if domain is not None:
                raise ValueError("this model was trained on one domain: leave domain out")
            return [str(h) for h in history]
        if domain not in self.domains:
            raise ValueError(f"this model was trained on several domains: name the one to recommend from, domain = one of "
                             f"{list(self.domains)} (got {domain!r})")
        own = lambda h: f"{domain}:{h}"  # noqa: E731
        return [own(h) if str(h) not in self.index and own(h) in self.index else str(h) for h in history]

    def _domain_behaviours(self, idx: list[int], domain: str) -> torch.Tensor | None:
        """Multi-domain behaviour ids of the read items: own domain d -> d + 1, context from domain
        e -> D + e + 1 (as :func:`genrec.data.domains.domain_behaviours` trained them)."""
        if not self.reads_behaviours:
            return None
        ranges = list(self.domains.values())
        own, D = list(self.domains).index(domain), len(ranges)
        which = [next(d for d, (first, end) in enumerate(ranges) if first <= i < end) for i in idx]
        return torch.tensor([[own + 1 if d == own else D + d + 1 for d in which]], device=self.device)

    def _inputs(self, history, timestamps, query_time, ignore_unknown, feedback, user_attributes=None, domain=None) -> Query:
        history = self.resolve_history(history, domain)
        if self.domains and feedback is not None:
            raise ValueError("a multi-domain model reads each item's domain from its id, not feedback: leave feedback out")
        known, kept = self._encode_ids(history, ignore_unknown)
        idx_at = dict(zip(kept, known))  # history position -> item idx
        kept = self._read(feedback, len(history), kept)  # what the model reads; known stays whole (exclusions)
        idx = [idx_at[p] for p in kept]
        L = self.model.max_history
        labels = self._labels(feedback, len(history), kept)
        labels = None if labels is None else labels[:, -L:]
        behaviours = self._domain_behaviours(idx, domain) if self.domains else self._behaviours(feedback, len(history), kept)
        behaviours = None if behaviours is None else behaviours[:, -L:]
        ts, device = None, self.device
        if self.model.uses_timestamps:
            if timestamps is None or len(timestamps) != len(history):
                raise ValueError("this model uses timestamps (time bias on): give one timestamp per history item")
            ts = torch.tensor([[int(timestamps[p]) for p in kept][-L:]], device=device)
        items = torch.tensor([idx[-L:]], device=device)
        qt = None if query_time is None else torch.tensor([int(query_time)], device=device)
        return Query(items, ts, qt, labels, known, behaviours, self._user_tokens(user_attributes, ignore_unknown),
                     self.domains[domain] if self.domains else None)

    def _candidates(self, candidates: Sequence) -> torch.Tensor:
        """Raw candidate ids -> [1, C] item idx; unknown candidates always raise."""
        if len(candidates) == 0:
            raise ValueError("no candidates given")
        cand_idx = [self.index.get(str(c)) for c in candidates]
        unknown = [str(c) for c, i in zip(candidates, cand_idx) if i is None]
        if unknown:
            raise UnknownItemError(unknown)
        return torch.tensor([cand_idx], device=self.device)

    def _query(self, model: Retriever, x: Query) -> torch.Tensor:
        """[1, D] next-item query vector of one request."""
        with torch.inference_mode():
            users = {} if x.user_tokens is None else {"user_tokens": x.user_tokens}  # (models without user features need not take it)
            user = model.user_vectors(x.items, x.timestamps, x.query_time, x.labels, x.behaviours, **users)
        _check_finite(user, "query vector")
        return user

    # ---- retrieval --------------------------------------------------------------------------------
    def user_vector(
        self, history: Sequence, timestamps: Sequence[int] | None = None, query_time: int | None = None,
        ignore_unknown: bool = False, feedback: Sequence | None = None, user_attributes=None, domain: str | None = None,
    ) -> tuple[torch.Tensor, list[int]]:
        """-> ([1, D] query vector, item idx of the whole known history). The vector is scored by
        dot product against :meth:`item_vectors` (an inference tensor: no autograd)."""
        model = self._retriever()
        x = self._inputs(history, timestamps, query_time, ignore_unknown, feedback, user_attributes, domain)
        return self._query(model, x), x.known

    def query(
        self, history: Sequence, timestamps: Sequence[int] | None = None, query_time: int | None = None,
        ignore_unknown: bool = False, feedback: Sequence | None = None, user_attributes=None, domain: str | None = None,
    ) -> Query:
        """Check one request and build its model inputs, without a forward pass (raises as
        :meth:`recommend` does). What a server's micro-batcher collects for :meth:`query_vectors`."""
        return self._inputs(history, timestamps, query_time, ignore_unknown, feedback, user_attributes, domain)

    cpu_cells_per_pass: int | None = 40_000
    """On CPU, :meth:`query_vectors` splits a batch into passes of rows of similar length, each of
    at most this many attention cells (rows x longest history²; a pass of one row may exceed it):
    past a cache-sized score buffer a wider pass costs more than two narrower ones (on a 2-core
    AMD EPYC, against one pass: 32 random 1-50 histories 1.05x, 64 1.30x faster in passes;
    ``benchmarks/query_batch.py``, results in benchmarks/RESULTS.md). None: always one pass.
    GPUs always take one pass."""

    def query_vectors(self, queries: Sequence[Query]) -> torch.Tensor:
        """[B, D] next-item query vectors of several requests in padded forward passes.

        Histories are right-padded to the longest of their pass (timestamps padded with each row's
        last one); a row sees only its own earlier items and every backbone's normaliser is a
        constant, so row b is the vector of ``queries[b]`` alone, up to float rounding of the wider
        matmuls. On CPU a large batch runs as several passes of similar lengths
        (:attr:`cpu_cells_per_pass`), one pass otherwise.
        """
        self._retriever()
        if not queries:
            raise ValueError("no queries given")
        budget = self.cpu_cells_per_pass if self.device.type == "cpu" else None
        lengths = [q.items.size(1) for q in queries]
        if budget is None or len(queries) * max(lengths) ** 2 <= budget:
            return self._pass_vectors(queries)
        passes, cur = [], []
        for b in sorted(range(len(queries)), key=lengths.__getitem__):  # ascending: a pass's last row is its longest
            if cur and (len(cur) + 1) * lengths[b] ** 2 > budget:
                passes.append(cur)
                cur = []
            cur.append(b)
        passes.append(cur)
        flat = torch.cat([self._pass_vectors([queries[b] for b in rows]) for rows in passes])  # [B D], pass order
        order = torch.tensor([b for rows in passes for b in rows], device=flat.device)
        with torch.inference_mode():
            return torch.empty_like(flat).index_copy_(0, order, flat)

    def _pass_vectors(self, queries: Sequence[Query]) -> torch.Tensor:
        """:meth:`query_vectors` of one padded forward pass."""
        model = self._retriever()
        B = len(queries)
        items = torch.nn.utils.rnn.pad_sequence([q.items[0] for q in queries], batch_first=True)  # [B N] 0 = padding
        N = items.size(1)
        ts = qt = None
        if model.uses_timestamps:  # padded with each row's last time; the query time defaults to it (the model's own default)
            ts = torch.nn.utils.rnn.pad_sequence([q.timestamps[0] for q in queries], batch_first=True)  # [B N]
            lasts = [q.timestamps[0, -1:] for q in queries]
            ts = torch.where(items != 0, ts, torch.cat(lasts).unsqueeze(1))
            qt = torch.cat([last if q.query_time is None else q.query_time for last, q in zip(lasts, queries)])  # [B]
        labels = torch.zeros(B, N, len(self.task_names), device=self.device) if self.reads_feedback else None
        behaviours = torch.zeros(B, N, dtype=torch.long, device=self.device) if self.reads_behaviours else None
        users = None
        if self.reads_user_attributes:
            M = max(q.user_tokens.size(-1) for q in queries)
            users = torch.zeros(B, 1, M, dtype=torch.long, device=self.device)  # [B 1 M] 0 = none
        per_row = any(t is not None for t in (labels, behaviours, users))  # else the items (and times) are all
        for b, q in enumerate(queries if per_row else ()):
            n = q.items.size(1)
            if labels is not None:
                labels[b, :n] = q.labels[0]
            if behaviours is not None:
                behaviours[b, :n] = q.behaviours[0]
            if users is not None:
                users[b, 0, : q.user_tokens.size(-1)] = q.user_tokens[0, 0]
        with torch.inference_mode():
            user = model.user_vectors(items, ts, qt, labels, behaviours, **({} if users is None else {"user_tokens": users}))  # [B D]
        _check_finite(user, "query vectors")
        return user

    def recommend_many(self, queries: Sequence[Query], k: int = 10, exclude_history: bool = True) -> list[list[tuple[str, float]]]:
        """:meth:`recommend` for several requests (from :meth:`query`) in one forward pass and
        one top-k over the catalogue: per request, (raw item id, score) best first."""
        self._retriever()  # a ranking-only checkpoint refuses here, before k is checked
        if k < 1:
            raise ValueError(f"k={k} must be >= 1")
        user = self.query_vectors(queries)
        top = self.top_items(user, k, [q.known for q in queries] if exclude_history else None, [q.item_range for q in queries])
        return [[(self.item_ids[i - 1], s) for i, s in row] for row in top]

    def top_items(self, user: torch.Tensor, k: int, exclude: Sequence[Sequence[int]] | None = None,
                  ranges: Sequence[tuple[int, int] | None] | None = None) -> list[list[tuple[int, float]]]:
        """Exact top-k of query vectors user [B, D] over the whole catalogue (the model's chunked
        scan), or over item idx [first, end) of ``ranges[b]`` (a multi-domain request's domain),
        never an item idx of ``exclude[b]``: per row, (item idx, score) best first. Rows with the
        same range share one scan."""
        model = self._retriever()
        ranges = list(ranges) if ranges is not None else [None] * user.size(0)
        groups: dict[tuple[int, int] | None, list[int]] = {}
        for b, r in enumerate(ranges):
            groups.setdefault(r, []).append(b)
        top: list[list[tuple[int, float]]] = [[] for _ in ranges]
        for r, rows in groups.items():
            ex = None
            if exclude is not None and any(exclude[b] for b in rows):
                E = max(len(exclude[b]) for b in rows)
                ex = torch.tensor([list(exclude[b]) + [0] * (E - len(exclude[b])) for b in rows], device=self.device)  # [B E] 0 = none
            span = {} if r is None else {"start": r[0], "end": r[1]}  # (a Retriever of an older topk needs no range)
            with torch.inference_mode():
                scores, ids = model.topk(user[rows], k, ex, **span)  # [B k'] each
            for b, srow, irow in zip(rows, scores.tolist(), ids.tolist()):
                top[b] = [(i, s) for s, i in zip(srow, irow) if s != float("-inf")]
        return top

    def recommend(
        self,
        history: Sequence,
        k: int = 10,
        timestamps: Sequence[int] | None = None,
        query_time: int | None = None,
        exclude_history: bool = True,
        ignore_unknown: bool = False,
        feedback: Sequence | None = None,
        user_attributes=None,
        domain: str | None = None,
    ) -> list[tuple[str, float]]:
        """Top-k (raw item id, score) over the whole catalogue (a multi-domain model: over
        ``domain``'s), best first. Fewer than k when the catalogue minus the excluded history is smaller."""
        model = self._retriever()
        if k < 1:
            raise ValueError(f"k={k} must be >= 1")
        x = self._inputs(history, timestamps, query_time, ignore_unknown, feedback, user_attributes, domain)
        user = self._query(model, x)
        top = self.top_items(user, k, [x.known] if exclude_history else None, [x.item_range])[0]
        return [(self.item_ids[i - 1], s) for i, s in top]

    def score(
        self,
        history: Sequence,
        candidates: Sequence,
        timestamps: Sequence[int] | None = None,
        query_time: int | None = None,
        ignore_unknown: bool = False,
        feedback: Sequence | None = None,
        user_attributes=None,
        domain: str | None = None,
    ) -> list[float]:
        """Retrieval scores (similarity to the next-item query) of the given candidates, in order."""
        model = self._retriever()
        user = self._query(model, self._inputs(history, timestamps, query_time, ignore_unknown, feedback, user_attributes, domain))
        cands = self._candidates(self.resolve_history(candidates, domain) if self.domains else candidates)
        with torch.inference_mode():
            return model.score_candidates(user, cands)[0].tolist()

    def item_vectors(self) -> torch.Tensor:
        """[num_items, D] output-side item vectors; row r is item ``item_ids[r]`` (idx r + 1). What
        an ANN index is built from: a query vector's score for an item is their dot product."""
        model = self._retriever()
        with torch.inference_mode():
            return model.item_vectors(start=1, end=model.num_items + 1)

    # ---- ranking ----------------------------------------------------------------------------------
    def rank(
        self,
        history: Sequence,
        candidates: Sequence,
        feedback: Sequence | None = None,
        timestamps: Sequence[int] | None = None,
        query_time: int | None = None,
        ignore_unknown: bool = False,
    ) -> list[dict[str, float]]:
        """Ranking-head outputs per candidate (raw ids), in the order given: {task: probability
        for binary tasks, predicted value for regression tasks}. All candidates in one M-FALCON pass."""
        model = self._ranker()
        x = self._inputs(history, timestamps, query_time, ignore_unknown, feedback)
        cands = self._candidates(candidates)
        with torch.inference_mode():
            out = model.rank(x.items, x.labels, cands, x.timestamps, x.query_time)[0].float().cpu()  # [C A]
        _check_finite(out, "ranking outputs")
        binary = torch.tensor([kind == "binary" for kind in model.task_kinds])  # [A]
        probs = torch.where(binary, torch.sigmoid(out), out)
        return [{name: round(float(v), 6) for name, v in zip(model.task_names, row)} for row in probs]


def _behaviour_value(v) -> float | None:
    """A request's behaviour value as a number (None for anything that is not one, booleans included)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _check_finite(t: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise GenrecError(f"the model produced non-finite {what} (NaN/inf): its weights are corrupted or training diverged")


def _domain_ranges(item_ids: Sequence[str], domains: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Multi-domain catalogues (:mod:`genrec.data.domains`): raw ids ``<domain>:<id>``, one idx
    range per domain, in ``data.domains`` order -> {domain: (first, end)}; {} for one domain."""
    if not domains:
        return {}
    out: dict[str, tuple[int, int]] = {}
    for name in map(domain_name, domains):
        idx = [i + 1 for i, raw in enumerate(item_ids) if raw.startswith(name + ":")]
        if not idx or idx[-1] - idx[0] + 1 != len(idx):
            raise GenrecError(f"multi-domain checkpoint: the items of domain {name!r} are not one id range as data.domains makes them")
        out[name] = (idx[0], idx[-1] + 1)
    return out
