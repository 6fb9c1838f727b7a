//! `mesh-model`: the config model: the objects a user would `kubectl apply` (core Kubernetes, Istio networking and
//! security, Gateway API, SMI), read from a directory of multi-document YAML, typed, validated and kept in a
//! [`ConfigSet`].
//!
//! - [`load_dir`] reads a directory and returns the new set plus [`Diagnostic`]s. An invalid object is
//!   rejected, and if the previous set held a good version of it, that version stays: one bad edit never
//!   takes down working config.
//! - [`analyze`] runs cross-object checks over a set, like `istioctl analyze`.
//! - [`attach`] says which routing objects apply to which Service (and which one wins), [`waypoint`] which
//!   waypoint a Service uses and where it is reached; the translation and `analyze` share both.
//! - Every type mirrors its Kubernetes/Istio schema in camelCase; fields the mesh does not model are ignored
//!   (and reported as warnings for mesh kinds, so a typo or an unsupported feature does not go unnoticed).
//!
//! Mesh extension: a WorkloadEntry names the node whose ztunnel serves it with the annotation
//! `mesh.io/node` ([`ANNOTATION_NODE`]); Istio's API has no such field.

use std::fmt;
use std::path::PathBuf;

use serde::{Serialize, Serializer};

mod analyze;
pub mod attach;
pub mod crds;
pub mod destination_rule;
pub mod fields;
pub mod gateway;
pub mod istio;
pub mod k8s;
mod load;
pub mod meta;
pub mod schema;
pub mod security;
mod set;
pub mod smi;
pub mod validate;
pub mod waypoint;

#[cfg(test)]
mod tests;

pub use analyze::analyze;
pub use destination_rule::*;
pub use gateway::*;
pub use istio::*;
pub use k8s::*;
pub use load::{load_dir, load_str, load_value, DirCache, LoadError};
pub use meta::*;
pub use security::*;
pub use set::{ConfigSet, Entry};
pub use smi::*;

/// Every kind the model understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    WorkloadEntry,
    VirtualService,
    DestinationRule,
    PeerAuthentication,
    AuthorizationPolicy,
    TrafficSplit,
    Gateway,
    HttpRoute,
    GrpcRoute,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::WorkloadEntry,
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::TrafficSplit,
        Kind::Gateway,
        Kind::HttpRoute,
        Kind::GrpcRoute,
    ];

    /// The `kind:` as written in YAML.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::TrafficSplit => "TrafficSplit",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
        }
    }

    /// The API group (`""` for core).
    pub fn group(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Service => "",
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::WorkloadEntry | Kind::VirtualService | Kind::DestinationRule => {
                "networking.istio.io"
            }
            Kind::PeerAuthentication | Kind::AuthorizationPolicy => "security.istio.io",
            Kind::TrafficSplit => "split.smi-spec.io",
            Kind::Gateway | Kind::HttpRoute | Kind::GrpcRoute => gateway::GATEWAY_GROUP,
        }
    }

    /// Versions accepted in `apiVersion`; the first is the one written in config dumps.
    pub fn versions(self) -> &'static [&'static str] {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Service | Kind::EndpointSlice => &["v1"],
            Kind::WorkloadEntry
            | Kind::VirtualService
            | Kind::DestinationRule
            | Kind::PeerAuthentication
            | Kind::AuthorizationPolicy => &["v1", "v1beta1", "v1alpha3"],
            Kind::TrafficSplit => &["v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1"],
            Kind::Gateway | Kind::HttpRoute => &["v1", "v1beta1"],
            Kind::GrpcRoute => &["v1", "v1alpha2"],
        }
    }

    /// `group/version` (or just `version` for core) as written in config dumps.
    pub fn api_version(self) -> String {
        match self.group() {
            "" => self.versions()[0].to_string(),
            g => format!("{g}/{}", self.versions()[0]),
        }
    }

    /// Namespace is the only cluster-scoped kind here.
    pub fn namespaced(self) -> bool {
        self != Kind::Namespace
    }

    /// The kind for a `(group, kind)` pair, whatever the version.
    pub fn from_group_kind(group: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group() == group && k.name() == kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Kind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Identity of an object in a [`ConfigSet`]. `namespace` is empty for Namespaces.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Self {
        ObjectKey {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Any one object; serialized as the inner object (`metadata`, `spec`, ...) without `kind`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    EndpointSlice(EndpointSlice),
    WorkloadEntry(WorkloadEntry),
    VirtualService(VirtualService),
    DestinationRule(DestinationRule),
    PeerAuthentication(PeerAuthentication),
    AuthorizationPolicy(AuthorizationPolicy),
    TrafficSplit(TrafficSplit),
    Gateway(Gateway),
    HttpRoute(HttpRoute),
    GrpcRoute(GrpcRoute),
}

/// Apply `$body` to the object inside whichever variant `$obj` is.
macro_rules! each_object {
    ($obj:expr, $o:ident => $body:expr) => {
        match $obj {
            Object::Namespace($o) => $body,
            Object::Pod($o) => $body,
            Object::Service($o) => $body,
            Object::EndpointSlice($o) => $body,
            Object::WorkloadEntry($o) => $body,
            Object::VirtualService($o) => $body,
            Object::DestinationRule($o) => $body,
            Object::PeerAuthentication($o) => $body,
            Object::AuthorizationPolicy($o) => $body,
            Object::TrafficSplit($o) => $body,
            Object::Gateway($o) => $body,
            Object::HttpRoute($o) => $body,
            Object::GrpcRoute($o) => $body,
        }
    };
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::WorkloadEntry(_) => Kind::WorkloadEntry,
            Object::VirtualService(_) => Kind::VirtualService,
            Object::DestinationRule(_) => Kind::DestinationRule,
            Object::PeerAuthentication(_) => Kind::PeerAuthentication,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Object::TrafficSplit(_) => Kind::TrafficSplit,
            Object::Gateway(_) => Kind::Gateway,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::GrpcRoute(_) => Kind::GrpcRoute,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        each_object!(self, o => &o.metadata)
    }

    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        each_object!(self, o => &mut o.metadata)
    }

    pub fn key(&self) -> ObjectKey {
        let m = self.metadata();
        ObjectKey::new(self.kind(), &m.namespace, &m.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem with the config: which object (kind, namespace, name), which field (`path`, like
/// `spec.http[1].route[0].weight`), why, and the file it came from. `kind` and `name` are empty when the
/// problem is with a whole file (unreadable, bad YAML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub path: String,
    pub reason: String,
    pub file: Option<PathBuf>,
}

impl Diagnostic {
    pub fn new(
        severity: Severity,
        key: &ObjectKey,
        path: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity,
            kind: key.kind.name().to_string(),
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            path: path.into(),
            reason: reason.into(),
            file: None,
        }
    }

    pub fn error(key: &ObjectKey, path: impl Into<String>, reason: impl Into<String>) -> Self {
        Diagnostic::new(Severity::Error, key, path, reason)
    }

    pub fn warning(key: &ObjectKey, path: impl Into<String>, reason: impl Into<String>) -> Self {
        Diagnostic::new(Severity::Warning, key, path, reason)
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    pub(crate) fn in_file(mut self, file: Option<PathBuf>) -> Self {
        self.file = file;
        self
    }
}

impl fmt::Display for Diagnostic {
    /// `error: VirtualService default/order-service: spec.http[0].route[1].weight: must be between 0 and 100`.
    /// The alternate form (`{:#}`) adds ` (in <file>)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.severity)?;
        if self.kind.is_empty() && self.name.is_empty() {
            if let Some(file) = &self.file {
                write!(f, "{}: ", file.display())?;
            }
        } else if self.namespace.is_empty() {
            write!(f, "{} {}: ", self.kind, self.name)?;
        } else {
            write!(f, "{} {}/{}: ", self.kind, self.namespace, self.name)?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.reason)?;
        if f.alternate() && !(self.kind.is_empty() && self.name.is_empty()) {
            if let Some(file) = &self.file {
                write!(f, " (in {})", file.display())?;
            }
        }
        Ok(())
    }
}

pub use mesh_primitives::names::{hostname, service_key, CLUSTER_DOMAIN};

/// Turn a host as written in Istio/SMI config into the Service it names: `(name, namespace)`.
///
/// - `reviews` (no dot) → `("reviews", ns)`: short names resolve in the namespace of the object using them.
/// - `reviews.prod.svc.cluster.local` or `reviews.prod.svc` → `("reviews", "prod")`.
/// - Anything else (`api.example.com`, `*.example.com`, `reviews.prod`) is not a cluster Service name in
///   Istio's eyes: returned unchanged with an empty namespace.
pub fn resolve_host(host: &str, ns: &str) -> (String, String) {
    if !host.contains('.') && !host.contains('*') {
        return (host.to_string(), ns.to_string());
    }
    let rest = host
        .strip_suffix(&format!(".{CLUSTER_DOMAIN}"))
        .unwrap_or(host);
    if let Some(name_ns) = rest.strip_suffix(".svc") {
        if let Some((name, namespace)) = name_ns.split_once('.') {
            if !name.is_empty()
                && !namespace.is_empty()
                && !namespace.contains('.')
                && !name.contains('*')
            {
                return (name.to_string(), namespace.to_string());
            }
        }
    }
    (host.to_string(), String::new())
}
