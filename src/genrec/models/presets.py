"""Named model presets: the reference configurations of the HSTU paper's tables (PAPERS.md §1.2)
and genrec's own settings for the data on hand. A YAML config names one as ``model.preset``; keys
given beside it override the preset's."""

from __future__ import annotations

from typing import Any


def _ref(name: str, dim: int, layers: int, heads: int, d: int, dropout: float, max_len: int) -> dict[str, Any]:
    out: dict[str, Any] = dict(
        name=name, embedding_dim=dim, num_layers=layers, num_heads=heads, dropout=dropout, max_seq_len=max_len
    )
    if name == "hstu":
        out.update(attention_dim=d, value_dim=d)
    return out


PRESETS: dict[str, dict[str, Any]] = {
    # MovieLens-1M: D 50, max length 200, dropout 0.2
    "ml-1m/sasrec": _ref("sasrec", 50, 2, 1, 50, 0.2, 200),
    "ml-1m/hstu": _ref("hstu", 50, 2, 1, 50, 0.2, 200),
    "ml-1m/hstu-large": _ref("hstu", 50, 8, 2, 25, 0.2, 200),
    # MovieLens-20M: D 256, max length 200, dropout 0.2
    "ml-20m/sasrec": _ref("sasrec", 256, 4, 4, 64, 0.2, 200),
    "ml-20m/hstu": _ref("hstu", 256, 4, 4, 64, 0.2, 200),
    "ml-20m/hstu-large": _ref("hstu", 256, 16, 8, 32, 0.2, 200),
    # Amazon Books: D 64, max length 50, dropout 0.5
    "books/sasrec": _ref("sasrec", 64, 4, 4, 16, 0.5, 50),
    "books/hstu": _ref("hstu", 64, 4, 4, 16, 0.5, 50),
    "books/hstu-large": _ref("hstu", 64, 16, 8, 8, 0.5, 50),
}
