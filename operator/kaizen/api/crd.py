"""Generates the CustomResourceDefinitions in ``crds/`` (and the chart's copy) from the pydantic models.

Kubernetes wants *structural* schemas: no ``$ref``, no type-varying ``anyOf``/``oneOf``, every node typed. So the
pydantic JSON schema is rewritten: references are inlined, ``Optional[X]`` becomes an omittable ``X``, draft-2020
numeric keywords become OpenAPI v3.0 ones, and free-form maps become ``x-kubernetes-preserve-unknown-fields``.
A field without a description is an error: ``kubectl explain`` is documentation users rely on.

Run ``python -m kaizen.api.crd`` (``make crds``); a test fails when the committed files drift from the models.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from kaizen.api import KINDS, ResourceKind
from kaizen.api.common import API_GROUP, API_VERSION

REPO_ROOT = Path(__file__).resolve().parents[3]
OUTPUT_DIRS = (REPO_ROOT / "crds", REPO_ROOT / "charts" / "kaizen" / "crds")
HEADER = "# Generated from operator/kaizen/api by `make crds`. Do not edit.\n"

# Keywords that carry over unchanged into an OpenAPI v3.0 structural schema.
_KEPT = {
    "description", "type", "enum", "default", "minimum", "maximum", "minLength", "maxLength", "pattern", "minItems",
    "maxItems", "maxProperties", "format", "nullable",
    "x-kubernetes-validations", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields",
}
_DROPPED = {"title", "$defs"}


class SchemaError(ValueError):
    """The models cannot be expressed as a structural schema."""


def structural(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    """Rewrite one pydantic JSON-schema node (and its children) as a structural OpenAPI v3.0 schema."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        # Siblings of $ref (the field's description, default, rules) override the referenced model's.
        node = {**target, **node, "x-kubernetes-validations": _rules(target) + _rules(node)}
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise SchemaError(f"{path}: a union of {len(branches)} types is not structural; use optional members")
        if node.get("default", ...) is None:
            del node["default"]  # Optional[X] = None means "may be omitted", not "null".
        branch = structural(branches[0], defs, path)
        node = {**branch, **node, "x-kubernetes-validations": _rules(branch) + _rules(node)}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    # JSON Schema's numeric exclusive bounds become OpenAPI v3.0's boolean flags; a node already rewritten (an
    # optional model's members come through here twice) keeps its flags.
    if not isinstance(node.get("exclusiveMinimum", True), bool):
        node["minimum"], node["exclusiveMinimum"] = node.pop("exclusiveMinimum"), True
    if not isinstance(node.get("exclusiveMaximum", True), bool):
        node["maximum"], node["exclusiveMaximum"] = node.pop("exclusiveMaximum"), True

    if "propertyNames" in node:
        # A structural schema cannot constrain map keys; a CEL rule on the map (self.all(k, ...)) must say the same.
        if not node.get("x-kubernetes-validations"):
            raise SchemaError(f"{path}: map keys are constrained, so the map needs a CEL rule that checks them")
        del node["propertyNames"]
    out: dict[str, Any] = {k: v for k, v in node.items() if k in _KEPT | {"exclusiveMinimum", "exclusiveMaximum"}}
    unknown = set(node) - _KEPT - _DROPPED - {"properties", "required", "items", "additionalProperties",
                                              "exclusiveMinimum", "exclusiveMaximum"}
    if unknown:
        raise SchemaError(f"{path}: unsupported JSON-schema keywords {sorted(unknown)}")
    if not out.get("x-kubernetes-validations"):
        out.pop("x-kubernetes-validations", None)

    if node.get("type") == "object":
        if "properties" in node:
            out["properties"] = {}
            for name, prop in node["properties"].items():
                child = structural(prop, defs, f"{path}.{name}")
                if not child.get("description"):
                    raise SchemaError(
                        f"{path}.{name}: every field needs a description (it is what kubectl explain shows)"
                    )
                out["properties"][name] = child
            if node.get("required"):
                out["required"] = list(node["required"])
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = structural(extra, defs, f"{path}[*]")
        elif (extra is True or extra == {}) or "properties" not in node:
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif node.get("type") == "array":
        out["items"] = structural(node["items"], defs, f"{path}[]")
    elif "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        raise SchemaError(f"{path}: no type (Any is not structural; use a typed field or dict[str, Any])")
    return out


def _rules(node: dict[str, Any]) -> list[dict[str, Any]]:
    return list(node.get("x-kubernetes-validations", []))


def model_schema(model: type[BaseModel], path: str) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}), path)


def custom_resource_definition(resource: ResourceKind) -> dict[str, Any]:
    """The CRD of one resource kind."""
    spec = model_schema(resource.spec, "spec")
    spec["description"] = (resource.spec.__doc__ or "").strip()
    status = model_schema(resource.status, "status")
    status["description"] = (resource.status.__doc__ or "").strip()
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": resource.crd_name, "labels": {"app.kubernetes.io/part-of": "kaizen"}},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": resource.kind,
                "listKind": f"{resource.kind}List",
                "plural": resource.plural,
                "singular": resource.singular,
                "shortNames": list(resource.short_names),
                "categories": ["kaizen"],
            },
            "versions": [{
                "name": API_VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": c.name, "type": c.type, "jsonPath": c.json_path,
                     **({"description": c.description} if c.description else {}),
                     **({"priority": c.priority} if c.priority else {})}
                    for c in resource.columns
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": resource.description,
                    "required": ["spec"],
                    # At the root, CEL may read metadata.name (and nothing else of metadata).
                    "x-kubernetes-validations": [{
                        "rule": f"self.metadata.name.size() <= {resource.max_name_length}",
                        # No fieldPath: it may only name fields of the schema, and metadata has none.
                        "message": f"metadata.name: {resource.name_message}",
                    }],
                    "properties": {
                        "apiVersion": {
                            "type": "string", "description": "APIVersion of this object: kaizen.dev/v1alpha1.",
                        },
                        "kind": {"type": "string", "description": f"Kind of this object: {resource.kind}."},
                        # The API server allows nothing but the type here.
                        "metadata": {"type": "object"},
                        "spec": spec,
                        "status": status,
                    },
                }},
            }],
        },
    }


def render(resource: ResourceKind) -> str:
    return HEADER + yaml.safe_dump(custom_resource_definition(resource), sort_keys=False, width=120)


def file_name(resource: ResourceKind) -> str:
    return f"{resource.crd_name}.yaml"


def main(argv: list[str] | None = None) -> int:
    """Write every CRD into each output directory."""
    for directory in OUTPUT_DIRS:
        directory.mkdir(parents=True, exist_ok=True)
        for resource in KINDS:
            (directory / file_name(resource)).write_text(render(resource))
    print(f"Wrote {len(KINDS)} CRDs to {', '.join(str(d.relative_to(REPO_ROOT)) for d in OUTPUT_DIRS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
