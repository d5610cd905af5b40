"""Request and response bodies of the ``/v1`` routes (pydantic; they make the OpenAPI at ``/docs``).

Only shapes and types are checked here; what depends on the loaded checkpoint (catalogue size,
known ids, whether feedback or timestamps are needed) is checked by :mod:`genrec.serving.service`,
which answers 422 with a message saying what to fix.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator

ItemId = StrictStr | StrictInt
"""A raw item id as in the training data; numbers are accepted and compared as strings."""
Feedback = StrictInt | StrictFloat | list[StrictInt | StrictFloat]
"""One history item's feedback: a value, or one value per ranking task."""


class _Body(BaseModel):
    # a misspelt field is an error, not silently ignored; NaN/Infinity (which Python's JSON reader
    # accepts) are refused
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _History(_Body):
    history: list[ItemId] = Field(description="raw item ids, oldest first", examples=[["12", "7", "33"]])
    timestamps: list[StrictInt] | None = Field(None, description="unix seconds, one per history item (models with a time bias)")
    query_time: StrictInt | None = Field(None, description="request time in unix seconds (default: the last history time)")
    feedback: list[Feedback] | None = Field(
        None, description="ranking/unified models: per history item one value (or one per task), e.g. [1, 0, 1]; "
        "models whose tasks are like and the rating (the card's `rating_feedback`) also take one rating per item; "
        "multi-behaviour retrieval models: each item's behaviour value (e.g. its rating), e.g. [5, 2, 4]"
    )
    ignore_unknown: bool = Field(False, description="drop unknown history ids (listed in `dropped`) instead of failing")

    @field_validator("history")
    @classmethod
    def _not_empty(cls, v: list) -> list:
        if not v:
            raise ValueError("the history is empty: give at least one item id")
        return v


class RecommendRequest(_History):
    k: StrictInt = Field(10, description="number of items to return, 1..catalogue size")
    exclude_history: bool = Field(True, description="never return an item of the history")
    allow: list[ItemId] | None = Field(None, description="only these items may be returned (scored exactly)")
    deny: list[ItemId] | None = Field(None, description="these items are never returned")
    domain: str | None = Field(None, description="multi-domain models: the domain to recommend from (one of /v1/model's "
                               "domains); history ids of other domains are written <domain>:<id>")
    user_attributes: list[str] | dict[str, StrictBool | StrictInt | StrictFloat | str | list[str]] | None = Field(
        None, max_length=256, description="models with user features: the user's attributes as field=value tokens, e.g. "
        "[\"gender=F\", \"age=25-34\"], or a {field: value} object tokenised as the training file was (numbers by its "
        "deciles, true as a flag), e.g. {\"gender\": \"F\", \"age\": 27}; the vocabulary is in /v1/model",
    )


class RankRequest(_History):
    candidates: list[ItemId] = Field(description="raw item ids to score", examples=[["5", "9", "40"]])

    @field_validator("candidates")
    @classmethod
    def _some(cls, v: list) -> list:
        if not v:
            raise ValueError("no candidates given: give at least one item id")
        return v


class ReloadRequest(_Body):
    checkpoint: str | None = Field(None, description="checkpoint folder to load (default: the one being served, re-read)")


class ScoredItem(BaseModel):
    item: str
    score: float
    title: str | None = None


class RecommendResponse(BaseModel):
    items: list[ScoredItem]
    score: str = Field(description="`cosine` (L2-normalised vectors) or `dot`")
    index: str
    dropped: list[str] = Field(description="unknown history ids dropped (ignore_unknown)")
    model: str = Field(description="SHA-256 prefix of the weights that answered")


class RankedItem(BaseModel):
    item: str
    scores: dict[str, float] = Field(description="per task: probability (binary) or predicted value (regression)")
    title: str | None = None


class RankResponse(BaseModel):
    tasks: list[str]
    candidates: list[RankedItem] = Field(description="in the order given")
    dropped: list[str]
    model: str


class Item(BaseModel):
    item: str
    title: str | None = None
    fields: dict = Field(default_factory=dict)


class ItemsResponse(BaseModel):
    query: str
    items: list[Item]


class ErrorBody(BaseModel):
    code: str
    message: str
    unknown: list[str] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
