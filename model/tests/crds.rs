//! The CRDs generated from the model's Spec types: names and versions as the control plane watches them, and
//! schemas that accept what users write (the seed manifests) and reject what the loader rejects.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use mesh_model::crds;
use serde_json::{json, Value};

/// (group, kind, plural, storage version): what `kube.rs` watches.
const EXPECTED: &[(&str, &str, &str, &str)] = &[
    (
        "networking.istio.io",
        "WorkloadEntry",
        "workloadentries",
        "v1",
    ),
    (
        "networking.istio.io",
        "VirtualService",
        "virtualservices",
        "v1",
    ),
    (
        "networking.istio.io",
        "DestinationRule",
        "destinationrules",
        "v1",
    ),
    (
        "security.istio.io",
        "PeerAuthentication",
        "peerauthentications",
        "v1",
    ),
    (
        "security.istio.io",
        "AuthorizationPolicy",
        "authorizationpolicies",
        "v1",
    ),
    (
        "split.smi-spec.io",
        "TrafficSplit",
        "trafficsplits",
        "v1alpha2",
    ),
    ("gateway.networking.k8s.io", "Gateway", "gateways", "v1"),
    ("gateway.networking.k8s.io", "HTTPRoute", "httproutes", "v1"),
    ("gateway.networking.k8s.io", "GRPCRoute", "grpcroutes", "v1"),
];

const SEEDS: &[&str] = &[
    include_str!("seed/destinationrule-order-service.yaml"),
    include_str!("seed/peerauthentication-default.yaml"),
    include_str!("seed/trafficsplit-order-canary.yaml"),
    include_str!("seed/virtualservice-order-service.yaml"),
];

fn crd_for(kind: &str) -> CustomResourceDefinition {
    crds::all()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for kind {kind}"))
}

/// The `openAPIV3Schema` of `kind` at `version`, as JSON.
fn openapi_schema(kind: &str, version: &str) -> Value {
    let crd = crd_for(kind);
    let v = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == version)
        .unwrap_or_else(|| panic!("{kind} does not serve {version}"));
    let schema = v
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .unwrap_or_else(|| panic!("{kind} {version} has no openAPIV3Schema"));
    serde_json::to_value(schema).unwrap()
}

/// OpenAPI v3.0 (Kubernetes dialect) → JSON Schema draft 4, for what these schemas use: `nullable` becomes a
/// `"null"` type, `x-kubernetes-int-or-string` the `anyOf` it stands for, other `x-kubernetes-*` keys go.
fn to_json_schema(node: &mut Value) {
    match node {
        Value::Object(map) => {
            if map.remove("x-kubernetes-int-or-string") == Some(Value::Bool(true)) {
                let mut any_of = vec![json!({"type": "integer"}), json!({"type": "string"})];
                if map.get("nullable") == Some(&Value::Bool(true)) {
                    any_of.push(json!({"type": "null"}));
                }
                map.insert("anyOf".into(), Value::Array(any_of));
            }
            if map.remove("nullable") == Some(Value::Bool(true)) {
                if let Some(Value::String(t)) = map.get("type").cloned() {
                    map.insert("type".into(), json!([t, "null"]));
                }
            }
            map.retain(|k, _| !k.starts_with("x-kubernetes-"));
            map.values_mut().for_each(to_json_schema);
        }
        Value::Array(items) => items.iter_mut().for_each(to_json_schema),
        _ => {}
    }
}

/// Errors of `object` against its kind's CRD schema at the version its `apiVersion` names.
fn schema_errors(object: &Value) -> Vec<String> {
    let kind = object["kind"].as_str().expect("kind");
    let version = object["apiVersion"]
        .as_str()
        .and_then(|v| v.rsplit('/').next())
        .expect("apiVersion");
    let mut schema = openapi_schema(kind, version);
    to_json_schema(&mut schema);
    let validator = jsonschema::draft4::new(&schema).expect("the schema compiles");
    validator
        .iter_errors(object)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn yaml(text: &str) -> Value {
    mesh_primitives::yaml::from_str(text).expect("valid YAML")
}

#[test]
fn every_crd_has_its_group_kind_plural_and_storage_version() {
    let all = crds::all();
    assert_eq!(all.len(), EXPECTED.len());
    for &(group, kind, plural, storage) in EXPECTED {
        let crd = crd_for(kind);
        assert_eq!(crd.spec.group, group, "{kind}");
        assert_eq!(crd.spec.names.plural, plural, "{kind}");
        assert_eq!(crd.spec.scope, "Namespaced", "{kind}");
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some(format!("{plural}.{group}").as_str())
        );
        let stored: Vec<_> = crd.spec.versions.iter().filter(|v| v.storage).collect();
        assert_eq!(stored.len(), 1, "{kind}: exactly one storage version");
        assert_eq!(stored[0].name, storage, "{kind}");
        // Every version the loader accepts is served, so manifests written for older versions apply.
        let kind_model = mesh_model::Kind::from_group_kind(group, kind).expect("a model kind");
        for v in kind_model.versions() {
            assert!(
                crd.spec.versions.iter().any(|s| s.name == *v && s.served),
                "{kind} serves {v}"
            );
            let schema = openapi_schema(kind, v);
            let spec = &schema["properties"]["spec"]["properties"];
            assert!(
                spec.as_object().is_some_and(|p| !p.is_empty()),
                "{kind} {v}: empty spec schema"
            );
        }
    }
}

/// Kubernetes rejects non-structural schemas: every node below the root needs a `type`, unless it is
/// int-or-string or explicitly free-form.
fn assert_structural(path: &str, node: &Value) {
    let map = node.as_object().expect("a schema is an object");
    let exempt = [
        "x-kubernetes-int-or-string",
        "x-kubernetes-preserve-unknown-fields",
    ]
    .iter()
    .any(|k| map.get(*k) == Some(&Value::Bool(true)));
    assert!(
        map.contains_key("type") || exempt,
        "{path}: no type in {node}"
    );
    for (name, child) in map
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        assert_structural(&format!("{path}.{name}"), child);
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = map.get(key).filter(|c| c.is_object()) {
            assert_structural(&format!("{path}.{key}"), child);
        }
    }
}

#[test]
fn schemas_are_structural() {
    for &(_, kind, _, storage) in EXPECTED {
        assert_structural(kind, &openapi_schema(kind, storage));
    }
}

#[test]
fn seed_manifests_validate_against_their_crd() {
    let mut kinds = Vec::new();
    for seed in SEEDS {
        let object = yaml(seed);
        let errors = schema_errors(&object);
        assert!(errors.is_empty(), "{}: {errors:#?}", object["kind"]);
        kinds.push(object["kind"].as_str().unwrap_or_default().to_string());
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "DestinationRule",
            "PeerAuthentication",
            "TrafficSplit",
            "VirtualService"
        ]
    );
}

#[test]
fn a_load_balancer_that_is_a_number_is_rejected() {
    let object = yaml(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: bad }
spec:
  host: order-service
  trafficPolicy:
    loadBalancer: { simple: 5 }
"#,
    );
    let errors = schema_errors(&object);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("/spec/trafficPolicy/loadBalancer/simple")),
        "{errors:#?}"
    );
}

#[test]
fn custom_serde_fields_accept_what_the_loader_accepts() {
    // Ports as numbers or strings, a port-keyed map, a v1alpha1 quantity weight and durations.
    for text in [
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: p }
spec:
  rules:
  - to: [{ operation: { ports: [8080, "9090"], notPorts: ["1"] } }]
    when: [{ key: destination.port, values: [80, "81"] }]
"#,
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: p }
spec:
  selector: { matchLabels: { app: a } }
  portLevelMtls: { "8080": { mode: DISABLE } }
"#,
        r#"
apiVersion: split.smi-spec.io/v1alpha1
kind: TrafficSplit
metadata: { name: s }
spec:
  service: a
  backends: [{ service: b, weight: "500m" }, { service: c, weight: 1 }]
"#,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: v }
spec:
  hosts: [a]
  http:
  - timeout: 1.5s
    retries: { attempts: 3, perTryTimeout: 1h30m }
    route: [{ destination: { host: a } }]
"#,
    ] {
        let object = yaml(text);
        let errors = schema_errors(&object);
        assert!(errors.is_empty(), "{}: {errors:#?}", object["kind"]);
        let (_, diagnostics) = mesh_model::load_str(text, None);
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
    }
}

#[test]
fn what_the_loader_rejects_the_schema_rejects_too() {
    for (text, path) in [
        (
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: v }
spec: { hosts: [a], http: [{ timeout: "30", route: [{ destination: { host: a } }] }] }
"#,
            "/spec/http/0/timeout",
        ),
        (
            r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: p }
spec: { mtls: { mode: SOMETIMES } }
"#,
            "/spec/mtls/mode",
        ),
        (
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: r }
spec: { rules: [{ backendRefs: [{ name: a, port: -1 }] }] }
"#,
            "/spec/rules/0/backendRefs/0/port",
        ),
    ] {
        let object = yaml(text);
        let errors = schema_errors(&object);
        assert!(
            errors.iter().any(|e| e.starts_with(path)),
            "{path}: {errors:#?}"
        );
        let (_, diagnostics) = mesh_model::load_str(text, None);
        assert!(!diagnostics.is_empty(), "the loader accepts {path}");
    }
}
