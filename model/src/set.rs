//! [`ConfigSet`]: every accepted object, keyed by (kind, namespace, name), with the file it came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

use super::meta::labels_match;
use super::{
    AuthorizationPolicy, DestinationRule, EndpointSlice, Gateway, GrpcRoute, HttpRoute, Kind,
    Namespace, Object, ObjectKey, PeerAuthentication, Pod, Service, TrafficSplit, VirtualService,
    WorkloadEntry,
};

/// One stored object and the file it was read from (`None` for objects built in code).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub object: Object,
    pub source: Option<PathBuf>,
}

impl Serialize for Entry {
    /// Written like a Kubernetes object (`apiVersion`, `kind`, `metadata`, `spec`) plus `source`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Dump<'a> {
            api_version: String,
            kind: Kind,
            #[serde(flatten)]
            object: &'a Object,
            #[serde(skip_serializing_if = "Option::is_none")]
            source: Option<&'a Path>,
        }
        let kind = self.object.kind();
        Dump {
            api_version: kind.api_version(),
            kind,
            object: &self.object,
            source: self.source.as_deref(),
        }
        .serialize(s)
    }
}

/// The whole accepted configuration. Cheap to compare (the server pushes only when it changed) and
/// serializable as a list of objects for config dumps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigSet {
    objects: BTreeMap<ObjectKey, Entry>,
}

impl Serialize for ConfigSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.objects.values())
    }
}

/// Typed iterators over one kind, in (namespace, name) order.
macro_rules! accessors {
    ($($(#[$doc:meta])* $fn:ident: $variant:ident => $ty:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $fn(&self) -> impl Iterator<Item = &$ty> + '_ {
                self.of_kind(Kind::$variant).filter_map(|o| match o {
                    Object::$variant(x) => Some(x),
                    _ => None,
                })
            }
        )*
    };
}

impl ConfigSet {
    pub fn new() -> Self {
        ConfigSet::default()
    }

    /// Add or replace an object; returns the entry it replaced.
    pub fn insert(&mut self, object: Object, source: Option<PathBuf>) -> Option<Entry> {
        self.objects.insert(object.key(), Entry { object, source })
    }

    pub fn remove(&mut self, key: &ObjectKey) -> Option<Entry> {
        self.objects.remove(key)
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Object> {
        self.objects.get(key).map(|e| &e.object)
    }

    pub fn entry(&self, key: &ObjectKey) -> Option<&Entry> {
        self.objects.get(key)
    }

    /// The file the object was read from.
    pub fn source(&self, key: &ObjectKey) -> Option<&Path> {
        self.objects.get(key).and_then(|e| e.source.as_deref())
    }

    pub fn contains(&self, key: &ObjectKey) -> bool {
        self.objects.contains_key(key)
    }

    /// Every entry, ordered by kind, namespace, name.
    pub fn iter(&self) -> impl Iterator<Item = (&ObjectKey, &Entry)> + '_ {
        self.objects.iter()
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Every object of one kind.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Object> + '_ {
        let start = ObjectKey {
            kind,
            namespace: String::new(),
            name: String::new(),
        };
        self.objects
            .range(start..)
            .take_while(move |(k, _)| k.kind == kind)
            .map(|(_, e)| &e.object)
    }

    accessors! {
        namespaces: Namespace => Namespace;
        pods: Pod => Pod;
        services: Service => Service;
        endpoint_slices: EndpointSlice => EndpointSlice;
        workload_entries: WorkloadEntry => WorkloadEntry;
        virtual_services: VirtualService => VirtualService;
        destination_rules: DestinationRule => DestinationRule;
        peer_authentications: PeerAuthentication => PeerAuthentication;
        authorization_policies: AuthorizationPolicy => AuthorizationPolicy;
        traffic_splits: TrafficSplit => TrafficSplit;
        gateways: Gateway => Gateway;
        http_routes: HttpRoute => HttpRoute;
        grpc_routes: GrpcRoute => GrpcRoute;
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        match self.get(&ObjectKey::new(Kind::Namespace, "", name)) {
            Some(Object::Namespace(n)) => Some(n),
            _ => None,
        }
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        match self.get(&ObjectKey::new(Kind::Service, namespace, name)) {
            Some(Object::Service(s)) => Some(s),
            _ => None,
        }
    }

    pub fn gateway(&self, namespace: &str, name: &str) -> Option<&Gateway> {
        match self.get(&ObjectKey::new(Kind::Gateway, namespace, name)) {
            Some(Object::Gateway(g)) => Some(g),
            _ => None,
        }
    }

    /// Pods (by `metadata.labels`) and WorkloadEntries (by `spec.labels`) in `namespace` that `selector`
    /// picks. An empty selector picks nothing, as for a Service without one.
    pub fn selected_workloads<'a>(
        &'a self,
        namespace: &'a str,
        selector: &'a BTreeMap<String, String>,
    ) -> (Vec<&'a Pod>, Vec<&'a WorkloadEntry>) {
        if selector.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let pods = self
            .pods()
            .filter(|p| {
                p.metadata.namespace == namespace && labels_match(selector, &p.metadata.labels)
            })
            .collect();
        let entries = self
            .workload_entries()
            .filter(|w| w.metadata.namespace == namespace && labels_match(selector, &w.spec.labels))
            .collect();
        (pods, entries)
    }
}
