#!/usr/bin/env python3
"""Writes model/src/published_fields.json: where each field of the published APIs may appear, per kind.

    scripts/published-fields.py ISTIO_CRDS GATEWAY_API_CRDS > model/src/published_fields.json

ISTIO_CRDS is Istio's manifests/charts/base/files/crd-all.gen.yaml, GATEWAY_API_CRDS the Gateway API's standard
and experimental CRDs (Istio's tests/integration/pilot/testdata/gateway-api-crd.yaml holds both). The mesh uses
the result to tell a field the API has at that position but the mesh does not implement (a warning) from one the
API does not have there (an error, with a suggestion), so `spec: {mode: STRICT}` in a PeerAuthentication is
rejected rather than silently dropped. Only field names and nesting are kept; every version of a kind is merged.

A node is an object of child nodes; "*" stands for any key (a map), "**" for anything below (free-form).
The checked-in file was written from istio/istio 86c9f01f (2026-08), whose Gateway API CRDs are bundle v1.6.0.
"""
import json
import sys

import yaml

KINDS = {
    "networking.istio.io": ["VirtualService", "DestinationRule", "WorkloadEntry"],
    "security.istio.io": ["PeerAuthentication", "AuthorizationPolicy"],
    "gateway.networking.k8s.io": ["Gateway", "HTTPRoute", "GRPCRoute"],
}

# SMI publishes no CRD schema: TrafficSplit v1alpha1..v1alpha4 by hand, from its spec documents.
SMI_TRAFFIC_SPLIT = {
    "spec": {
        "service": {},
        "backends": {"service": {}, "weight": {}},
        "matches": {"kind": {}, "name": {}, "apiGroup": {}},
    }
}


def merge(into, node):
    for key, child in node.items():
        merge(into.setdefault(key, {}), child)
    return into


def tree(schema):
    """The field tree of an OpenAPI schema: arrays are transparent, maps become "*"."""
    out = {}
    if schema.get("x-kubernetes-preserve-unknown-fields") and not schema.get("properties"):
        return {"**": {}}
    for key, sub in (schema.get("properties") or {}).items():
        merge(out.setdefault(key, {}), tree(sub))
    if isinstance(schema.get("items"), dict):
        merge(out, tree(schema["items"]))
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        merge(out.setdefault("*", {}), tree(extra))
    for alt in (schema.get("oneOf") or []) + (schema.get("anyOf") or []) + (schema.get("allOf") or []):
        merge(out, tree(alt))
    return out


def main():
    out = {}
    for path in sys.argv[1:3]:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                kind = spec["names"]["kind"]
                if kind not in KINDS.get(spec["group"], []):
                    continue
                for version in spec["versions"]:
                    schema = version.get("schema", {}).get("openAPIV3Schema", {})
                    spec_schema = schema.get("properties", {}).get("spec")
                    if spec_schema:
                        merge(out.setdefault(kind, {}), {"spec": tree(spec_schema)})
    out["TrafficSplit"] = SMI_TRAFFIC_SPLIT
    missing = [k for ks in KINDS.values() for k in ks if k not in out]
    if missing:
        sys.exit(f"not found in the CRDs: {missing}")
    json.dump(out, sys.stdout, indent=None, sort_keys=True, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
