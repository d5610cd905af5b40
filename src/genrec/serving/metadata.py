"""Item metadata for the service: titles and search over the catalogue (:class:`ItemCatalog`).

Where it comes from, first found wins:

1. ``--metadata FILE`` given to ``genrec serve``;
2. ``item_metadata.json`` in the checkpoint folder (written by training, ``data.item_metadata``;
   :func:`genrec.checkpoint.read_item_metadata`);
3. the dataset's own metadata file next to its data (:func:`genrec.data.item_metadata.discover`).

The readers live in :mod:`genrec.data.item_metadata`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class ItemCatalog:
    """Read-only metadata of the catalogue's items: ``fields(id)`` and a substring search over
    titles and ids. Built once per loaded checkpoint; shared by every request."""

    def __init__(self, item_ids: Iterable[str], metadata: Mapping[str, Mapping] | None = None, source: str | None = None):
        self.item_ids = tuple(item_ids)
        meta = metadata or {}
        self.source = source if meta else None
        self._fields = {i: dict(meta[i]) for i in self.item_ids if i in meta}  # only items the model knows
        # lower-cased "id title" per item, in catalogue order, for search
        self._haystack = [(i, f"{i} {self._fields.get(i, {}).get('title', '')}".lower()) for i in self.item_ids]
        self._known = frozenset(self.item_ids)

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def has_titles(self) -> bool:
        return bool(self._fields)

    def fields(self, item_id: str) -> dict:
        """The item's metadata fields (``title`` first when known); {} for an item without any."""
        return dict(self._fields.get(item_id, {}))

    def title(self, item_id: str) -> str | None:
        return self._fields.get(item_id, {}).get("title")

    def search(self, query: str, limit: int = 20) -> list[str]:
        """Ids matching ``query``: the item whose id it is first, then those whose "id title"
        contains every word of it (case-insensitive), in catalogue order; the first ``limit``
        items for an empty query."""
        query = query.strip()
        if not query:
            return list(self.item_ids[:limit])
        words = query.lower().split()
        out = [query] if query in self._known else []
        for item_id, text in self._haystack:
            if len(out) >= limit:
                break
            if item_id != query and all(w in text for w in words):
                out.append(item_id)
        return out
