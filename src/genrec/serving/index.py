"""Retrieval indexes over :meth:`genrec.Recommender.item_vectors`: exact or FAISS.

- ``exact``: the model's own chunked full-catalogue scan (:meth:`Recommender.top_items`, what
  ``Recommender.recommend`` and the evaluator use); exclusions are masked before the top-k.
- ``faiss-flat`` (``IndexFlatIP``: exact inner product, FAISS's kernels), ``faiss-ivf``
  (``IndexIVFFlat``, inner product, ``nlist`` lists, ``nprobe`` searched), ``faiss-hnsw``
  (``IndexHNSWFlat``, inner product, ``M`` links, ``efSearch``) and ``faiss-pq`` (every item
  scanned as a 4-bit product-quantised code with FAISS's SIMD "fast-scan" kernels, then the best
  ``refine``·k (plus the excluded items it over-fetches) re-scored exactly against the stored vectors: ``index_factory("PQ{m}x4fs,RFlat")``),
  built from the item vectors. ``faiss-pq`` partitions nothing, so it keeps its recall on
  catalogues without cluster structure, where IVF and HNSW lose theirs (benchmarks/RESULTS.md,
  "ANN indexes").

A query's score for an item is their inner product, so scores are cosine similarities when the
model L2-normalises its vectors (``model.l2_normalize``, the default) and dot products otherwise
(:attr:`ItemIndex.score_kind` says which).

Exclusions with every index (the request's history, its ``deny`` list): a FAISS index cannot
skip items while it searches, so it is asked for k + (number of excluded items) neighbours and the
excluded ones are dropped afterwards; flat search then always returns k items, and IVF/HNSW return
fewer only when their approximate search finds fewer. An ``allow`` list is scored exactly against
the allowed items' vectors, whatever the index (it is a small candidate set by nature). A
multi-domain request's domain (an item idx range) is one batched exact scan of that range, whatever
the index (a FAISS index is built over the whole catalogue).
Each answer names the search that produced it (:meth:`ItemIndex.searched_by`).

FAISS indexes are saved beside the checkpoint (``<checkpoint>.index/<kind>.faiss`` plus a JSON
stamp) and reused while the stamp matches: the SHA-256 of the weights, the catalogue size and the
index parameters. Anything else (a retrained checkpoint, other parameters) rebuilds and rewrites it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from genrec.errors import GenrecError
from genrec.recommender import Recommender

KINDS = ("exact", "faiss-flat", "faiss-ivf", "faiss-hnsw", "faiss-pq")


@dataclass(frozen=True)
class IndexOptions:
    kind: str = "exact"
    """One of ``KINDS``."""
    nlist: int = 0
    """IVF: number of lists (0 = 4·√I, at most I/39 so every list gets FAISS's 39 training points)."""
    nprobe: int = 32
    """IVF: lists searched per query."""
    hnsw_m: int = 32
    """HNSW: links per node."""
    ef_construction: int = 200
    """HNSW: candidate list size while building."""
    ef_search: int = 128
    """HNSW: candidate list size while searching (raised to the number of neighbours asked for)."""
    pq_m: int = 0
    """PQ: sub-quantisers, 4 bits each (0 = half the vector width, 2 dimensions each; the full width
    when it is odd)."""
    refine: int = 100
    """PQ: candidates re-scored exactly, as a multiple of the neighbours asked for (plus the
    excluded items the search over-fetches)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise GenrecError(f"--index {self.kind!r} is not one of {', '.join(KINDS)}")
        for key, value in asdict(self).items():
            low = 0 if key in ("nlist", "pq_m") else 1
            if key != "kind" and value < low:
                raise GenrecError(f"index option {key}={value} must be >= {low}")


class ItemIndex:
    """Top-k item idx (1..I) for query vectors, with per-row exclusions and allow lists."""

    kind = "exact"

    def __init__(self, rec: Recommender):
        self.rec = rec
        self.vectors = rec.item_vectors().float().cpu().contiguous()  # [I D] row r = item idx r + 1
        norms = self.vectors.norm(dim=1)
        self.score_kind = "cosine" if bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-3)) else "dot"

    @property
    def num_items(self) -> int:
        return self.vectors.size(0)

    def describe(self) -> dict:
        return {"kind": self.kind, "score": self.score_kind, "items": self.num_items}

    def search(
        self, user: torch.Tensor, ks: Sequence[int], exclude: Sequence[set[int]], allow: Sequence[list[int] | None],
        ranges: Sequence[tuple[int, int] | None] | None = None,
    ) -> list[list[tuple[int, float]]]:
        """user [B, D]; per row: how many items (``ks``), the item idx never returned
        (``exclude``), the only idx that may be (``allow``, None = any) and the item idx range
        [first, end) searched (``ranges``: a multi-domain request's domain, None = the whole
        catalogue) -> per row (item idx, score) best first, at most k. :meth:`searched_by` says
        which search answers a row."""
        ranges = list(ranges) if ranges is not None else [None] * user.size(0)
        out: list[list[tuple[int, float]]] = [[] for _ in range(user.size(0))]
        native = [b for b in range(user.size(0)) if self._native(allow[b], ranges[b])]
        scans = [b for b in range(user.size(0)) if allow[b] is None and b not in native]  # a range on a FAISS index
        for group, search in ((native, self._search), (scans, lambda *a: ItemIndex._search(self, *a))):
            if group:
                rows = search(user[group], max(ks[b] for b in group), [exclude[b] for b in group], [ranges[b] for b in group])
                for b, row in zip(group, rows):
                    out[b] = row[: ks[b]]
        for b in range(user.size(0)):
            if allow[b] is not None:
                allowed = allow[b] if ranges[b] is None else [i for i in allow[b] if ranges[b][0] <= i < ranges[b][1]]
                out[b] = self._search_allowed(user[b], ks[b], exclude[b], allowed)
        return out

    def searched_by(self, allow: list[int] | None, item_range: tuple[int, int] | None) -> str:
        """Which search answers a row: this index, or ``exact`` (an allow list: the allowed items
        scored exactly; on a FAISS index, a domain's item range: the exact scan of that range)."""
        return self.kind if self._native(allow, item_range) else "exact"

    def _native(self, allow: list[int] | None, item_range: tuple[int, int] | None) -> bool:
        """Whether :meth:`_search` answers the row (else its allowed items are scored one by one)."""
        return allow is None

    def _search(self, user: torch.Tensor, k: int, exclude: Sequence[set[int]],
                ranges: Sequence[tuple[int, int] | None]) -> list[list[tuple[int, float]]]:
        """Top-k (item idx, score) per row of user [B, D] within its range, never an excluded idx."""
        return self.rec.top_items(user, k, [sorted(e) for e in exclude], ranges)

    def _search_allowed(self, q: torch.Tensor, k: int, exclude: set[int], allowed: list[int]) -> list[tuple[int, float]]:
        """Exact scores of the allowed items (minus the excluded) for one query q [D]."""
        ids = [i for i in dict.fromkeys(allowed) if i not in exclude]
        if not ids:
            return []
        scores = self.vectors[torch.tensor(ids) - 1] @ q.float().cpu()  # [A]
        top = scores.topk(min(k, len(ids)))
        return [(ids[j], s) for s, j in zip(top.values.tolist(), top.indices.tolist())]


class FaissIndex(ItemIndex):
    """A FAISS inner-product index over the item vectors (label r = item idx r + 1)."""

    def __init__(self, rec: Recommender, options: IndexOptions, weights_digest: str, folder: Path | None):
        super().__init__(rec)
        faiss = _faiss()
        self.kind, self.options = options.kind, options
        self.build_seconds, self.loaded_from = 0.0, None
        self.params = self._params(options)
        stamp = {"kind": self.kind, "weights_sha256": weights_digest, "items": self.num_items,
                 "dim": self.vectors.size(1), "params": self.params}
        path = None if folder is None else folder / f"{self.kind}.faiss"
        self.index = None
        if path is not None and path.exists() and _read_stamp(path) == stamp:
            try:
                self.index = faiss.read_index(str(path))
                self.loaded_from = str(path)
            except RuntimeError as exc:  # a damaged cache file: rebuild it
                print(f"genrec serve: the cached index {path} is unreadable ({exc}); rebuilding", file=sys.stderr)
        if self.index is None:
            start = time.perf_counter()
            self.index = self._build(faiss)
            self.build_seconds = time.perf_counter() - start
            if path is not None:
                _save(faiss, self.index, path, stamp)
        self.stamp = stamp

    def _native(self, allow: list[int] | None, item_range: tuple[int, int] | None) -> bool:
        return allow is None and item_range is None  # a FAISS index searches the whole catalogue

    def describe(self) -> dict:
        return {**super().describe(), "params": self.params, "build_seconds": round(self.build_seconds, 3),
                "loaded_from": self.loaded_from}

    def _params(self, options: IndexOptions) -> dict:
        if self.kind == "faiss-ivf":
            nlist = options.nlist or max(1, min(int(4 * self.num_items**0.5), self.num_items // 39))
            if nlist > self.num_items:
                raise GenrecError(f"--nlist {nlist} exceeds the catalogue ({self.num_items} items): an IVF list needs training points")
            return {"nlist": nlist, "nprobe": min(options.nprobe, nlist)}
        if self.kind == "faiss-hnsw":
            return {"M": options.hnsw_m, "efConstruction": options.ef_construction, "efSearch": options.ef_search}
        if self.kind == "faiss-pq":
            dim = self.vectors.size(1)
            m = options.pq_m or (dim // 2 if dim % 2 == 0 else dim)
            if dim % m:
                raise GenrecError(f"--pq-m {m} must divide the item vectors' width {dim}")
            if self.num_items < 16:
                raise GenrecError(f"faiss-pq needs at least 16 items to train its 16 codes per sub-quantiser "
                                  f"(the catalogue has {self.num_items}); use --index exact")
            return {"M": m, "nbits": 4, "refine": options.refine}
        return {}

    def _build(self, faiss):
        x = self.vectors.numpy()
        D = x.shape[1]
        if self.kind == "faiss-flat":
            index = faiss.IndexFlatIP(D)
        elif self.kind == "faiss-ivf":
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(D), D, self.params["nlist"], faiss.METRIC_INNER_PRODUCT)
            index.train(x)
        elif self.kind == "faiss-pq":
            index = faiss.index_factory(D, f"PQ{self.params['M']}x4fs,RFlat", faiss.METRIC_INNER_PRODUCT)
            index.train(x)
        else:
            index = faiss.IndexHNSWFlat(D, self.params["M"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.params["efConstruction"]
        index.add(x)
        return index

    def _search(self, user: torch.Tensor, k: int, exclude: Sequence[set[int]],
                ranges: Sequence[tuple[int, int] | None]) -> list[list[tuple[int, float]]]:
        faiss = _faiss()
        fetch = min(self.num_items, k + max(len(e) for e in exclude))  # over-fetch, then filter
        params = None
        if self.kind == "faiss-ivf":
            params = faiss.SearchParametersIVF(nprobe=self.params["nprobe"])
        elif self.kind == "faiss-hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.params["efSearch"], fetch))
        elif self.kind == "faiss-pq":  # refine·k candidates besides the excluded ones are re-scored exactly
            params = faiss.IndexRefineSearchParameters(k_factor=(self.params["refine"] * k + fetch - k) / fetch)
        q = np.ascontiguousarray(user.float().cpu().numpy())
        scores, labels = self.index.search(q, fetch, params=params)  # [B fetch] each; label -1 = none found
        out = []
        for srow, lrow, ex in zip(scores.tolist(), labels.tolist(), exclude):
            row = [(lab + 1, s) for s, lab in zip(srow, lrow) if lab >= 0 and lab + 1 not in ex]
            out.append(row[:k])
        return out


def build_index(rec: Recommender, options: IndexOptions, weights_digest: str, folder: Path | None) -> ItemIndex:
    """The index ``options.kind`` over ``rec``'s item vectors (FAISS ones cached in ``folder``)."""
    if options.kind == "exact":
        return ItemIndex(rec)
    return FaissIndex(rec, options, weights_digest, folder)


def index_folder(checkpoint: str | Path) -> Path:
    """Where a checkpoint's FAISS indexes live: ``<checkpoint>.index/`` beside it."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + ".index")


def _faiss():
    try:
        import faiss
    except ImportError as exc:
        raise GenrecError("FAISS indexes need faiss-cpu: pip install 'genrec[serve]' (or use --index exact)") from exc
    return faiss


def _read_stamp(path: Path) -> dict | None:
    try:
        return json.loads(path.with_suffix(".json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _save(faiss, index, path: Path, stamp: dict) -> None:
    """Write the index and its stamp atomically (several workers may build it at once); a folder
    that cannot be written only costs a rebuild next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)
        tmp_stamp = path.with_name(f".{path.stem}.json.tmp-{os.getpid()}")
        tmp_stamp.write_text(json.dumps(stamp, indent=2))
        os.replace(tmp_stamp, path.with_suffix(".json"))
    except OSError as exc:
        print(f"genrec serve: could not save the index to {path} ({exc}); it will be rebuilt next start", file=sys.stderr)

