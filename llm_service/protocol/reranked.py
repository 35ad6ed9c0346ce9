"""Reranked documents as the service we replace reports them back: links and files.

A request's ``data.reranked_docs`` holds TextDoc-like dicts ``{text, metadata}``. The
reference converts each (its ``TextDoc.to_reranked_doc``) and answers with
``data: {"reranked_docs": [...]}`` (whole answers) or the ``json:`` trailer (streams):

- a link when ``metadata`` has ``url``: ``{text, vector_distance, reranker_score,
  citation_id, type: "link", url}``;
- else a file when it has ``bucket_name`` and ``object_name``: ``{..., type: "file",
  bucket_name, object_name}``;
- else the request is refused (400 here, naming the document).

Missing scores take the reference's defaults: ``vector_distance`` 1.0 (as far as it gets),
``reranker_score`` 0.0 (the lowest), ``citation_id`` 0. Values are coerced as the reference's
pydantic models coerce them (``"0.5"`` is 0.5; ``"x"`` for a number is refused).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from llm_service.errors import InvalidRequest

REFUSED = 400
"""The reference's status for a document it cannot convert (its ValueError)."""

DEFAULTS: dict[str, Any] = {"vector_distance": 1.0, "reranker_score": 0.0, "citation_id": 0}


class RerankedBase(BaseModel):
    """What both kinds carry, in the reference's field order."""

    model_config = ConfigDict(allow_inf_nan=False)

    text: str = ""
    vector_distance: float = 1.0
    reranker_score: float = 0.0
    citation_id: int = 0


class RerankedLinkDoc(RerankedBase):
    """A document that came from a web page."""

    type: Literal["link"] = "link"
    url: str


class RerankedFileDoc(RerankedBase):
    """A document that came from a stored file (object storage)."""

    type: Literal["file"] = "file"
    bucket_name: str
    object_name: str


class AnswerData(BaseModel):
    """GeneratedDoc ``data`` and the ``json:`` trailer (for the OpenAPI description).

    ``citations`` and ``context`` come with the RAG form only."""

    reranked_docs: list[RerankedLinkDoc | RerankedFileDoc]
    citations: list[Any] | None = None
    context: dict[str, Any] | None = None


class NotReranked(ValueError):
    """A document that cannot be reported as a link or a file.

    ``where`` is the place of the fault inside the document (``metadata.url``), empty when it
    is the document as a whole."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(message)
        self.where = where


def source_fields(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """The document in the reference's shape, values as they are (defaults for missing
    scores); None when its metadata has neither a ``url`` nor both ``bucket_name`` and
    ``object_name``."""
    metadata = doc.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        return None
    if "url" in metadata:  # present, as the reference tests it: a null url is refused later
        kind: dict[str, Any] = {"type": "link", "url": metadata["url"]}
    elif "bucket_name" in metadata and "object_name" in metadata:
        kind = {
            "type": "file",
            "bucket_name": metadata["bucket_name"],
            "object_name": metadata["object_name"],
        }
    else:
        return None
    scores = {key: metadata.get(key, default) for key, default in DEFAULTS.items()}
    return {"text": doc.get("text"), **scores, **kind}


def to_reranked_doc(doc: Any) -> dict[str, Any]:
    """One TextDoc as the reference reports it, checked and coerced as the reference does;
    ``NotReranked`` when it cannot be."""
    if not isinstance(doc, Mapping):
        raise NotReranked("must be an object with 'text' and 'metadata'")
    metadata = doc.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise NotReranked("must be an object", "metadata")
    if "text" not in doc:  # the reference checks the TextDoc first, then its source
        raise NotReranked("Field required", "text")
    if not isinstance(doc["text"], str):
        raise NotReranked("Input should be a valid string", "text")
    fields = source_fields(doc)
    if fields is None:
        raise NotReranked("has neither a url nor bucket_name and object_name")
    model = RerankedLinkDoc if fields["type"] == "link" else RerankedFileDoc
    try:
        return model.model_validate(fields).model_dump()
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        name = str(err["loc"][0]) if err["loc"] else ""
        where = "text" if name == "text" else f"metadata.{name}"
        raise NotReranked(str(err["msg"]), where) from None


def reported_docs(data: Mapping[str, Any] | None) -> list[dict[str, Any]] | None:
    """``data.reranked_docs`` converted, or None when ``data`` has no ``reranked_docs``
    (null counts as none). A document that cannot be converted is a 400 naming it:
    ``data.reranked_docs.2: has neither a url nor bucket_name and object_name``."""
    docs = None if data is None else data.get("reranked_docs")
    if docs is None:
        return None
    where = "data.reranked_docs"
    if not isinstance(docs, list):
        raise InvalidRequest(f"{where}: must be a list of documents", status=REFUSED, param=where)
    out: list[dict[str, Any]] = []
    for i, doc in enumerate(docs):
        try:
            out.append(to_reranked_doc(doc))
        except NotReranked as exc:
            param = ".".join(part for part in (where, str(i), exc.where) if part)
            raise InvalidRequest(f"{param}: {exc}", status=REFUSED, param=param) from None
    return out
