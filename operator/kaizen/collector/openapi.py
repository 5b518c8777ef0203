"""The collector's OpenAPI 3.1 document, generated from the route table and the pydantic models.

Nothing here is written by hand per endpoint: each :class:`Route` names its body, query, path and response models
and the statuses it answers, and their JSON schemas (camelCase, with the field descriptions) become the document's
components. The document is meant to be true to the service: every status the service can answer is listed with its
body (a JSON :class:`~kaizen.collector.models.ErrorResponse` for every error), path and query parameters carry the
patterns and bounds the service enforces, and a batch request's response is the batch shape. A schemathesis run
against a live collector (tests/collector/test_openapi_fuzz.py) holds it to that.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from kaizen.collector.models import ErrorResponse, Id

_REF = "#/components/schemas/{model}"

#: Why each error status happens; an operation lists those it can answer.
ERRORS = {
    400: "The body is not valid JSON.",
    401: "No bearer token, or an unknown one.",
    403: "The token lacks the scope the route needs.",
    404: "Nothing is stored under this id.",
    409: "An audit entry with this id but different content exists.",
    413: "The body is larger than the collector's limit.",
    414: "The URL is longer than the collector's limit.",
    415: "The body is not application/json.",
    422: "The body, the query or a path parameter is invalid; `fields` says which and why.",
    431: "A request header is longer than the collector's limit.",
    503: "The database is unavailable; nothing was stored. Retry later.",
}


@dataclasses.dataclass(frozen=True)
class Route:
    """One endpoint: how it is reached, who may call it, and the shapes it takes and returns.

    ``response`` holds one model per shape of ``body``, in the same order (a single item answers ``Stored``, a batch
    the batch response), or one for every body; ``statuses`` are the success statuses; ``errors`` the error
    statuses particular to the route, besides those its body, query, path, scope and store imply.
    """

    method: str
    path: str
    handler: str
    summary: str
    scope: str | None
    response: tuple[type[BaseModel], ...]
    statuses: tuple[int, ...] = (200,)
    body: tuple[type[BaseModel], ...] = ()
    query: type[BaseModel] | None = None
    content_type: str = "application/json"
    errors: tuple[int, ...] = ()
    store: bool = True


def document(routes: list[Route], title: str, version: str, description: str = "") -> dict[str, Any]:
    requests: set[type[BaseModel]] = {ErrorResponse}
    responses: set[type[BaseModel]] = {ErrorResponse}
    for r in routes:
        requests.update(r.body)
        responses.update(r.response)
    keyed, schemas = models_json_schema(
        [(m, "validation") for m in sorted(requests, key=lambda m: m.__name__)]
        + [(m, "serialization") for m in sorted(responses, key=lambda m: m.__name__)],
        ref_template=_REF,
    )
    error_schema = keyed[(ErrorResponse, "serialization")]
    path_id = TypeAdapter(Id).json_schema()
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        operation: dict[str, Any] = {"summary": r.summary, "operationId": r.handler, "responses": {}}
        errors = {414, 431, *r.errors}
        if r.store:
            errors.add(503)
        if r.scope is not None:
            operation["security"] = [{"bearer": [r.scope]}]
            errors |= {401, 403}
        if r.body:
            refs = [keyed[(m, "validation")] for m in r.body]
            schema = refs[0] if len(refs) == 1 else {"oneOf": refs}
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
            errors |= {400, 413, 415, 422}
        if r.query is not None:
            operation["parameters"] = _parameters(r.query)
            errors.add(422)
        if "{" in r.path:
            name = r.path.split("{")[1].split("}")[0]
            operation.setdefault("parameters", []).append(
                {"name": name, "in": "path", "required": True, "schema": path_id}
            )
            errors |= {404, 422}
        for status in sorted(errors):
            operation["responses"][str(status)] = {
                "description": ERRORS[status], "content": {"application/json": {"schema": error_schema}},
            }
        success = [keyed[(m, "serialization")] for m in r.response]
        if r.content_type == "application/json" and not success:
            success = [{"type": "object"}]  # this document
        schema = success[0] if len(success) == 1 else {"oneOf": success}
        content = {r.content_type: {"schema": schema}} if success else {r.content_type: {}}
        for status in r.statuses:
            operation["responses"][str(status)] = {"description": "Success", "content": content}
        paths.setdefault(r.path, {})[r.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, **({"description": description} if description else {})},
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(by_alias=True, ref_template=_REF)
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema["properties"].items():
        prop = {k: v for k, v in prop.items() if k not in ("description", "title", "default")}
        # An optional parameter is one left out: a query string cannot say null.
        branches = [b for b in prop.pop("anyOf", []) if b.get("type") != "null"]
        if branches:
            prop = {**branches[0], **prop} if len(branches) == 1 else {**prop, "anyOf": branches}
        parameter = {"name": name, "in": "query", "required": name in required,
                     "description": schema["properties"][name].get("description", ""), "schema": prop}
        if prop.get("type") == "array":
            # Repeated (categories=a&categories=b); the service also takes one comma-separated value.
            parameter.update(style="form", explode=True)
        parameters.append(parameter)
    return parameters
