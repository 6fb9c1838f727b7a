//! JSON schemas (for the CRDs' `openAPIV3Schema`) of the fields whose serde form is custom, so a CRD describes
//! what users actually write rather than the Rust type the loader turns it into.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use super::meta::MeshDuration;

/// Go `time.ParseDuration` syntax without a sign, as [`mesh_primitives::duration::parse`] accepts it: one or more
/// number+unit pairs (`30s`, `1.5s`, `1h30m`), or a bare `0`. Kubernetes checks `pattern` with RE2, so this
/// stays within the common subset of RE2 and ECMA-262.
pub const DURATION_PATTERN: &str = r"^(0|(([0-9]+(\.[0-9]*)?|\.[0-9]+)(h|m|s|ms|us|µs|ns))+)$";

impl JsonSchema for MeshDuration {
    /// Inlined: kube inlines every subschema anyway, and a duration has no structure worth a name.
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "MeshDuration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration such as \"30s\", \"1.5s\", \"500ms\" or \"1h30m\".",
        })
    }
}

/// A value the loader accepts as an integer or a string (a port written `8080` or `"8080"`, a quantity
/// `"500m"`). Kubernetes' structural schemas spell that `x-kubernetes-int-or-string` with no `type`; the
/// apiserver then checks int-or-string itself, as for `IntOrString` in core types.
pub fn int_or_string(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "x-kubernetes-int-or-string": true })
}

/// A list whose items are [`int_or_string`] (`ports: [8080, "9090"]`); the loader turns them all into strings.
pub fn int_or_string_list(generator: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "array", "items": int_or_string(generator) })
}
