"""User side information: per-user attribute tokens (age group, gender, occupation, region, ...)
from a file beside the log, mapped onto the prepared users.

``data.user_features`` names the file, or ``auto`` for a registered dataset's own demographics
(:data:`genrec.data.download.USER_FEATURE_FILES`: MovieLens ``u.user`` and ``users.dat``), found
like the item attributes (:func:`genrec.data.item_features.feature_file`).

Formats (``.gz`` read directly):

- MovieLens ``u.user`` (``id|age|gender|occupation|zip``) and ``users.dat``
  (``UserID::Gender::Age::Occupation::Zip-code``): ``age=<group>`` (the MovieLens-1M groups, so
  ages of ``u.user`` fall into the same seven), ``gender=``, ``occupation=`` and ``zip=<first
  character>`` tokens;
- CSV / TSV / Parquet with a header: the user id column (``user_id``, ``user``, ``userId``,
  ``reviewerID``, ``id``, else the first), every other column a field, tokenised as for item
  attributes (text by value, numbers by decile, booleans by flag);
- JSON ``{user id: [attribute, ...]}`` or ``{user id: {field: value, ...}}``.

Every token gets an id 1..A, most frequent first over the prepared users; the vocabulary is
stored in the model config (``model.user_attributes``, with the numeric fields' decile edges), so
a served checkpoint maps a request's attributes with the ids it was trained with. A model with
``model.user_features`` reads the mean of the user's token embeddings: ``sum`` adds it to every
history token, ``concat`` maps it with every token, ``token`` puts it first as a token of its own
(:class:`genrec.models.base.SequentialRecommender`); users the file lacks have a zero profile.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from genrec.data.domains import raw_user_ids
from genrec.data.download import USER_FEATURE_FILES
from genrec.data.item_features import _value_tokens, feature_file, read_attributes, token_table
from genrec.data.prepare import SequenceData
from genrec.errors import ConfigError, DataFormatError

USER_ID_COLUMNS = ("user_id", "user", "userId", "reviewerID", "id")
"""The user id column of a per-user file, first found wins."""

AGE_GROUPS = ((18, "under-18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"), (56, "50-55"))
"""MovieLens-1M's age groups (upper bound exclusive, label); 56 and over is ``56+``."""
ML1M_AGE_CODES = {"1": "under-18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49", "50": "50-55", "56": "56+"}


def age_group(age: int) -> str:
    return next((label for bound, label in AGE_GROUPS if age < bound), "56+")


def _zip(code: str) -> list[str]:
    code = code.strip()
    return [f"zip={code[0].upper()}"] if code else []


def _u_user_tokens(parts: list[str]) -> list[str] | None:
    if len(parts) != 5 or not parts[1].isdigit():
        return None
    return [f"age={age_group(int(parts[1]))}", f"gender={parts[2]}", f"occupation={parts[3]}", *_zip(parts[4])]


def _users_dat_tokens(parts: list[str]) -> list[str] | None:
    if len(parts) != 5 or parts[2] not in ML1M_AGE_CODES:
        return None
    return [f"age={ML1M_AGE_CODES[parts[2]]}", f"gender={parts[1]}", f"occupation={parts[3]}", *_zip(parts[4])]


USER_MOVIELENS = {"u.user": ("|", "user id|age|gender|occupation|zip code", _u_user_tokens),
                  "users.dat": ("::", "UserID::Gender::Age(1,18,25,35,45,50,56)::Occupation::Zip-code", _users_dat_tokens)}


def read_user_features(path: str | Path, edges: dict | None = None) -> dict[str, list[str]]:
    """{raw user id: [attribute token, ...]} from a user feature file (formats: module docstring);
    ``edges``: filled with the decile edges of its numeric fields (tables and JSON objects)."""
    return read_attributes(path, "user", USER_MOVIELENS, USER_ID_COLUMNS, edges)


def request_tokens(attributes, numeric_fields: dict[str, list[float]], vocabulary: list[str]) -> list[str]:
    """A request's user attributes -> tokens as training made them. A list is taken as tokens
    already (``["gender=F", "age=25-34"]``). A ``{field: value}`` object is tokenised like the
    attribute file: text ``field=value`` (``a|b`` several), ``true`` the bare flag, a number by the
    training file's deciles of that field (``field=q<k>``), and a number given for ``age`` where the
    vocabulary has MovieLens age groups, by its group."""
    if attributes is None:
        return []
    if not isinstance(attributes, dict):
        return [str(t) for t in attributes]
    groups = {label for _, label in AGE_GROUPS} | {"56+"}
    out: list[str] = []
    for name, value in attributes.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if name in numeric_fields:
                out.append(f"{name}=q{int(np.searchsorted(numeric_fields[name], float(value), side='right'))}")
            elif name == "age" and any(t.startswith("age=") and t[4:] in groups for t in vocabulary):
                out.append(f"age={age_group(int(value))}")
            else:
                out.append(f"{name}={value}")
        else:
            out += _value_tokens(name, value)
    return out


def with_user_features(data: SequenceData, data_cfg) -> SequenceData:
    """``data`` with its users' attribute tokens (``user_tokens`` [U, M], ``user_vocabulary``) read
    from ``data.user_features``. A file none of whose ids is a prepared user is an error (the wrong
    file, or ids written differently); one that covers under half the users gets a warning."""
    if not data_cfg.user_features:
        raise ConfigError("model.user_features needs data.user_features (a file of user attributes, or auto for a dataset "
                          f"that has one: {sorted(USER_FEATURE_FILES)})")
    path = feature_file(data_cfg, data_cfg.user_features, "user_features", USER_FEATURE_FILES)
    edges: dict[str, list[float]] = {}
    raw = read_user_features(path, edges)
    ids = raw_user_ids(data)  # multi-domain data: one row per user and domain, each read by the user's own id
    table, vocab, covered_rows, unknown = token_table(raw, ids)
    if covered_rows == 0:
        raise DataFormatError(f"{path}: no user of the log has attributes here: {len(raw)} ids in the file, {unknown} of them "
                              f"unknown (file ids e.g. {list(raw)[:3]}, log user ids e.g. {ids[:3]}); is it the right file?")
    users = len(set(ids))
    covered = len({u for u, has in zip(ids, table[1:].any(axis=1)) if has})  # distinct users, not rows
    if covered < users / 2:
        print(f"genrec: warning: {path}: only {covered} of {users} users have attributes", file=sys.stderr)
    stats = {"source": str(path), "users_with_attributes": covered, "users": users, "attribute_tokens": len(vocab),
             "ids_not_in_log": unknown, "numeric_fields": edges}
    return dataclasses.replace(data, user_tokens=table[1:], user_vocabulary=tuple(vocab), user_feature_stats=stats)
