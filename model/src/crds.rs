//! The mesh's CustomResourceDefinitions, generated from the same Spec types the loader reads, so the schema the
//! apiserver enforces cannot drift from what the control plane understands. `meshctl crds` prints them for the
//! Helm chart to vendor.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

use crate::destination_rule::DestinationRuleResource;
use crate::gateway::{GatewayResource, GrpcRouteResource, HttpRouteResource};
use crate::istio::{VirtualServiceResource, WorkloadEntryResource};
use crate::security::{AuthorizationPolicyResource, PeerAuthenticationResource};
use crate::smi::TrafficSplitResource;
use crate::Kind;

/// Every mesh CRD, in a stable order (the order of [`Kind::ALL`] for the kinds that are CRDs).
pub fn all() -> Vec<CustomResourceDefinition> {
    [
        WorkloadEntryResource::crd(),
        VirtualServiceResource::crd(),
        DestinationRuleResource::crd(),
        PeerAuthenticationResource::crd(),
        AuthorizationPolicyResource::crd(),
        TrafficSplitResource::crd(),
        GatewayResource::crd(),
        HttpRouteResource::crd(),
        GrpcRouteResource::crd(),
    ]
    .into_iter()
    .map(drop_empty_defaults)
    .map(serve_older_versions)
    .collect()
}

/// schemars turns the Spec types' `#[serde(default)]` into a `default` on every field. The apiserver applies
/// CRD defaults to stored objects, so `name: ""`, `hosts: []` or a whole default sub-object would be written
/// into objects whose authors never wrote them (and show up in `kubectl get -o yaml` and diffs). Only defaults
/// that mean something are kept: non-empty scalars such as a backendRef's `kind: Service`, `weight: 1`, a path
/// match's `PathPrefix` and `/`, which are the Gateway API's and Istio's own defaults.
fn drop_empty_defaults(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            strip_defaults(schema);
        }
    }
    crd
}

fn strip_defaults(schema: &mut JSONSchemaProps) {
    if schema
        .default
        .as_ref()
        .is_some_and(|d| is_empty_default(&d.0))
    {
        schema.default = None;
    }
    let children = schema.properties.iter_mut().flat_map(|p| p.values_mut());
    let items = match &mut schema.items {
        Some(JSONSchemaPropsOrArray::Schema(s)) => std::slice::from_mut(s.as_mut()),
        Some(JSONSchemaPropsOrArray::Schemas(v)) => v.as_mut_slice(),
        None => &mut [],
    };
    let additional = match &mut schema.additional_properties {
        Some(JSONSchemaPropsOrBool::Schema(s)) => Some(s.as_mut()),
        _ => None,
    };
    let combinators = [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of]
        .into_iter()
        .flat_map(|c| c.iter_mut().flatten());
    children
        .chain(items.iter_mut())
        .chain(additional)
        .chain(combinators)
        .for_each(strip_defaults);
}

/// Whether a default is one the apiserver should not write: null, empty, zero, false, or an object (a
/// sub-object's own fields carry whatever defaults matter).
fn is_empty_default(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Null | Value::Object(_) => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
    }
}

/// The derived CRD has one version, the storage one. Users (and our own seed manifests) still write the older
/// `apiVersion`s the loader accepts (`Kind::versions`, e.g. Istio's `v1beta1`), so each is served too, with the
/// same schema; as the schemas are identical the apiserver converts between them without a webhook, as Istio's
/// own CRDs do.
fn serve_older_versions(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let kind = Kind::from_group_kind(&crd.spec.group, &crd.spec.names.kind);
    let Some(storage) = crd.spec.versions.first().cloned() else {
        return crd;
    };
    for version in kind.map(Kind::versions).unwrap_or_default() {
        if crd.spec.versions.iter().any(|v| v.name == *version) {
            continue;
        }
        let mut served = storage.clone();
        served.name = (*version).to_string();
        served.storage = false;
        crd.spec.versions.push(served);
    }
    crd
}

/// All CRDs as one multi-document YAML stream (`---` between documents), ready for a chart's `crds/` folder.
pub fn to_yaml() -> Result<String, mesh_primitives::yaml::SerializeError> {
    let mut out = String::new();
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&mesh_primitives::yaml::to_string(&crd)?);
    }
    Ok(out)
}
