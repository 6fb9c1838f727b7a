//! Config → xDS resources. ztunnel's view is Istio's workload API: every Pod and WorkloadEntry becomes an
//! `istio.workload.Workload` (HBONE when its namespace, or the pod itself, is in ambient mode, and always for a
//! waypoint's pods), every Service with a cluster IP an `istio.workload.Service` (with its waypoint's address when
//! it uses one), and each workload names the services it backs with its own ports. The waypoint's view is
//! [`crate::l7`]'s `mesh.l7.v1.L7Service`, one per Service with routing config.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use mesh_primitives::identity::Identity;
use mesh_proto::istio::workload::{
    address, gateway_address, Address, GatewayAddress, NetworkAddress, Port, PortList, Service,
    TunnelProtocol, Workload,
};
use mesh_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, L7_SERVICE_TYPE_URL};

use crate::{octets, NodeIdentities, Resource};
use mesh_model::waypoint::{is_waypoint_pod, service_waypoint, waypoint_address, waypoint_gateway};
use mesh_model::{
    hostname, labels_match, service_key, ConfigSet, Pod, Service as K8sService,
    LABEL_DATAPLANE_MODE,
};

/// The port a waypoint accepts HBONE on.
pub const HBONE_PORT: u32 = 15008;

/// The outcome of one translation.
#[derive(Default)]
pub struct Translated {
    pub resources: BTreeMap<String, BTreeMap<String, Resource>>,
    pub nodes: NodeIdentities,
}

impl Translated {
    pub fn resource_count(&self) -> usize {
        self.resources.values().map(BTreeMap::len).sum()
    }
}

/// A workload as the translation needs it, from a Pod or a WorkloadEntry.
struct Endpoint<'a> {
    uid: String,
    name: &'a str,
    namespace: &'a str,
    ip: IpAddr,
    node: String,
    service_account: String,
    labels: &'a BTreeMap<String, String>,
    /// Resolves named target ports.
    pod: Option<&'a Pod>,
    /// A waypoint's pod: speaks HBONE itself and gets its own certificate (never through a ztunnel).
    waypoint: bool,
}

fn endpoints(set: &ConfigSet) -> Vec<Endpoint<'_>> {
    let mut out = Vec::new();
    for p in set.pods() {
        // A pod without an IP is not running yet: nothing can reach it.
        let Some(ip) = p.ip() else { continue };
        out.push(Endpoint {
            uid: format!(
                "Kubernetes//Pod/{}/{}",
                p.metadata.namespace, p.metadata.name
            ),
            name: &p.metadata.name,
            namespace: &p.metadata.namespace,
            ip,
            node: p.node_name().to_string(),
            service_account: p.service_account().to_string(),
            labels: &p.metadata.labels,
            pod: Some(p),
            waypoint: is_waypoint_pod(set, p),
        });
    }
    for w in set.workload_entries() {
        // DNS-named entries are not resolved by this mesh.
        let Some(ip) = w.ip() else { continue };
        out.push(Endpoint {
            uid: format!(
                "Kubernetes/networking.istio.io/WorkloadEntry/{}/{}",
                w.metadata.namespace, w.metadata.name
            ),
            name: &w.metadata.name,
            namespace: &w.metadata.namespace,
            ip,
            node: w.node().unwrap_or_default().to_string(),
            service_account: w.service_account().to_string(),
            labels: w.labels(),
            pod: None,
            waypoint: false,
        });
    }
    out
}

/// Ambient when the pod says so, else when its namespace does; any other value on the pod opts it out.
fn in_ambient(set: &ConfigSet, e: &Endpoint<'_>) -> bool {
    match e.labels.get(LABEL_DATAPLANE_MODE) {
        Some(mode) => mode == "ambient",
        None => set.namespace(e.namespace).is_some_and(|ns| ns.is_ambient()),
    }
}

/// A Service's ports with each target resolved on `pod` (a named targetPort only a pod can resolve; 0 = unknown).
fn ports(s: &K8sService, pod: Option<&Pod>) -> Vec<Port> {
    s.spec
        .ports
        .iter()
        .map(|p| Port {
            service_port: p.port,
            target_port: p.target_port_on(pod).unwrap_or(0),
        })
        .collect()
}

/// The waypoint a Service's traffic goes through, when it names one that exists, serves Services and has an
/// address; `analyze` reports the other cases. Until then, traffic goes straight to the Service's workloads.
fn waypoint(set: &ConfigSet, s: &K8sService) -> Option<GatewayAddress> {
    let named = service_waypoint(set, s)?;
    waypoint_gateway(set, named).filter(|g| g.serves_services())?;
    let ip = waypoint_address(set, named.namespace, named.name)?;
    Some(GatewayAddress {
        destination: Some(gateway_address::Destination::Address(NetworkAddress {
            network: String::new(),
            address: octets(&ip),
        })),
        hbone_mtls_port: HBONE_PORT,
    })
}

fn service_address(set: &ConfigSet, s: &K8sService) -> Option<Resource> {
    let vip = s.cluster_ip()?;
    let svc = Service {
        name: s.metadata.name.clone(),
        namespace: s.metadata.namespace.clone(),
        hostname: hostname(&s.metadata.name, &s.metadata.namespace),
        addresses: vec![NetworkAddress {
            network: String::new(),
            address: octets(&vip),
        }],
        // Numeric target ports here; named ones resolve per workload (in its `services` map).
        ports: ports(s, None),
        waypoint: waypoint(set, s),
        ..Default::default()
    };
    Some(Resource::new(&Address {
        r#type: Some(address::Type::Service(svc)),
    }))
}

/// Istio's default root namespace: policies there apply mesh-wide.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// One Service an EndpointSlice address backs.
struct SliceBack {
    service: String,
    ports: PortList,
    slice: String,
}

/// (namespace, address) → the Services it backs through EndpointSlices.
type Sliced = BTreeMap<(String, IpAddr), Vec<SliceBack>>;

/// Services without a selector take their endpoints from EndpointSlices (labelled with the Service's name); a
/// Service port maps to the slice port of the same name.
fn slice_backs(set: &ConfigSet) -> Sliced {
    let mut out = Sliced::new();
    for slice in set.endpoint_slices() {
        let ns = slice.metadata.namespace.as_str();
        let Some(svc) = slice.service_name().and_then(|name| set.service(ns, name)) else {
            continue;
        };
        if !svc.spec.selector.is_empty() {
            continue;
        }
        let ports: Vec<Port> = svc
            .spec
            .ports
            .iter()
            .filter_map(|p| {
                let target = slice.port_named(p.name.as_deref().unwrap_or(""))?;
                Some(Port {
                    service_port: p.port,
                    target_port: target,
                })
            })
            .collect();
        let key = service_key(&svc.metadata.name, ns);
        for ip in slice.ready_addresses() {
            out.entry((ns.to_string(), ip))
                .or_default()
                .push(SliceBack {
                    service: key.clone(),
                    ports: PortList {
                        ports: ports.clone(),
                    },
                    slice: slice.metadata.name.clone(),
                });
        }
    }
    out
}

pub fn translate(set: &ConfigSet, trust_domain: &str) -> Translated {
    translate_with(set, trust_domain, DEFAULT_ROOT_NAMESPACE)
}

pub fn translate_with(set: &ConfigSet, trust_domain: &str, root_namespace: &str) -> Translated {
    let mut authz = crate::authz::Translator::new(set, root_namespace);
    let mut addresses = BTreeMap::new();
    let mut nodes: BTreeMap<String, BTreeSet<Identity>> = BTreeMap::new();
    // Selection happens per namespace: index Services by it once.
    let mut by_ns: BTreeMap<&str, Vec<&K8sService>> = BTreeMap::new();
    for s in set.services() {
        by_ns
            .entry(s.metadata.namespace.as_str())
            .or_default()
            .push(s);
    }
    let mut sliced = slice_backs(set);
    for e in endpoints(set) {
        let mut backs: BTreeMap<String, PortList> = by_ns
            .get(e.namespace)
            .into_iter()
            .flatten()
            // An empty selector selects nothing (its endpoints are managed by hand in Kubernetes).
            .filter(|s| !s.spec.selector.is_empty() && labels_match(&s.spec.selector, e.labels))
            .map(|s| {
                let key = service_key(&s.metadata.name, &s.metadata.namespace);
                (
                    key,
                    PortList {
                        ports: ports(s, e.pod),
                    },
                )
            })
            .collect();
        if let Some(extra) = sliced.remove(&(e.namespace.to_string(), e.ip)) {
            backs.extend(extra.into_iter().map(|b| (b.service, b.ports)));
        }
        // A waypoint terminates HBONE itself wherever it runs (Istio labels its pods out of ambient capture), and
        // its identity is not one its node's ztunnel may ask for.
        let hbone = e.waypoint || in_ambient(set, &e);
        if hbone && !e.waypoint && !e.node.is_empty() {
            nodes
                .entry(e.node.clone())
                .or_default()
                .insert(Identity::new(trust_domain, e.namespace, &e.service_account));
        }
        let canonical = e
            .labels
            .get("app.kubernetes.io/name")
            .or_else(|| e.labels.get("app"))
            .cloned()
            .unwrap_or_else(|| e.name.to_string());
        let w = Workload {
            uid: e.uid.clone(),
            name: e.name.to_string(),
            namespace: e.namespace.to_string(),
            addresses: vec![octets(&e.ip)],
            tunnel_protocol: if hbone {
                TunnelProtocol::Hbone as i32
            } else {
                TunnelProtocol::None as i32
            },
            trust_domain: trust_domain.to_string(),
            service_account: e.service_account.clone(),
            node: e.node.clone(),
            canonical_name: canonical,
            canonical_revision: e
                .labels
                .get("version")
                .cloned()
                .unwrap_or_else(|| "latest".into()),
            workload_name: e.name.to_string(),
            services: backs,
            authorization_policies: authz.bind(&crate::authz::WorkloadRef {
                namespace: e.namespace,
                labels: e.labels,
            }),
            ..Default::default()
        };
        let addr = Address {
            r#type: Some(address::Type::Workload(w)),
        };
        addresses.insert(e.uid, Resource::new(&addr));
    }
    // Slice addresses that are no Pod or WorkloadEntry: endpoints outside the mesh, reached as plain TCP.
    for ((ns, ip), backs) in sliced {
        let slice = backs.first().map(|b| b.slice.clone()).unwrap_or_default();
        let uid = format!("Kubernetes/discovery.k8s.io/EndpointSlice/{ns}/{slice}/{ip}");
        let w = Workload {
            uid: uid.clone(),
            name: slice.clone(),
            namespace: ns.clone(),
            addresses: vec![octets(&ip)],
            tunnel_protocol: TunnelProtocol::None as i32,
            trust_domain: trust_domain.to_string(),
            canonical_name: slice.clone(),
            workload_name: slice,
            services: backs.into_iter().map(|b| (b.service, b.ports)).collect(),
            ..Default::default()
        };
        let addr = Address {
            r#type: Some(address::Type::Workload(w)),
        };
        addresses.insert(uid, Resource::new(&addr));
    }
    for s in set.services() {
        // A Service without a cluster IP (headless, or not allocated yet) has no address of its own.
        if let Some(addr) = service_address(set, s) {
            addresses.insert(service_key(&s.metadata.name, &s.metadata.namespace), addr);
        }
    }
    let l7 = crate::l7::translate(set)
        .into_iter()
        .map(|(name, svc)| (name, Resource::new(&svc)))
        .collect();
    let mut resources = BTreeMap::new();
    resources.insert(ADDRESS_TYPE_URL.to_string(), addresses);
    let policies = authz
        .out
        .policies
        .into_iter()
        .map(|(name, p)| (name, Resource::new(&p)))
        .collect();
    resources.insert(AUTHORIZATION_TYPE_URL.to_string(), policies);
    resources.insert(L7_SERVICE_TYPE_URL.to_string(), l7);
    Translated {
        resources,
        nodes: NodeIdentities(nodes),
    }
}
