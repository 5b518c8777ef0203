"""The collector's OpenAPI 3.1 document, generated from the route table and the pydantic models.

Nothing here is written by hand per endpoint: each :class:`Route` names its body, query and response models, and
their JSON schemas (camelCase, with the field descriptions) become the document's components.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from kaizen.collector.models import ErrorResponse

_REF = "#/components/schemas/{model}"


@dataclasses.dataclass(frozen=True)
class Route:
    """One endpoint: how it is reached, who may call it, and the shapes it takes and returns."""

    method: str
    path: str
    handler: str
    summary: str
    scope: str | None
    response: type[BaseModel] | None
    status: int = 200
    body: tuple[type[BaseModel], ...] = ()
    query: type[BaseModel] | None = None
    content_type: str = "application/json"


def document(routes: list[Route], title: str, version: str) -> dict[str, Any]:
    models = {ErrorResponse}
    for r in routes:
        models.update(r.body)
        if r.response is not None:
            models.add(r.response)
    keyed, schemas = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)], ref_template=_REF
    )
    refs = {m: keyed[(m, "validation")] for m in models}
    error = {"description": "Error", "content": {"application/json": {"schema": refs[ErrorResponse]}}}
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        operation: dict[str, Any] = {"summary": r.summary, "operationId": r.handler, "responses": {}}
        if r.scope is not None:
            operation["security"] = [{"bearer": [r.scope]}]
            operation["responses"]["401"] = error
            operation["responses"]["403"] = error
        if r.body:
            schema = refs[r.body[0]] if len(r.body) == 1 else {"oneOf": [refs[m] for m in r.body]}
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
            operation["responses"]["400"] = error
            operation["responses"]["413"] = error
        if r.query is not None:
            operation["parameters"] = _parameters(r.query)
        if r.body or r.query is not None:
            operation["responses"]["422"] = error
        if "{" in r.path:
            name = r.path.split("{")[1].split("}")[0]
            operation.setdefault("parameters", []).append(
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            )
        content = {r.content_type: {"schema": refs[r.response]}} if r.response is not None else {}
        operation["responses"][str(r.status)] = {"description": "Success", **({"content": content} if content else {})}
        paths.setdefault(r.path, {})[r.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(by_alias=True, ref_template=_REF)
    required = set(schema.get("required", ()))
    return [
        {
            "name": name, "in": "query", "required": name in required,
            "description": prop.get("description", ""), "schema": {k: v for k, v in prop.items() if k != "description"},
        }
        for name, prop in schema["properties"].items()
    ]
