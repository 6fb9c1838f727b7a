//! Core Kubernetes kinds (`v1`): Namespace, Pod and Service — only the fields the mesh reads.
//! Manifests straight from `kubectl get -o yaml` load: everything else in them is ignored.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::meta::{IntOrString, ObjectMeta, LABEL_DATAPLANE_MODE, LABEL_USE_WAYPOINT};
use super::validate::{check_ip, check_port_name, check_subdomain, Findings};

/// A Namespace; its labels enroll it in ambient mode and pick its waypoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Namespace {
    pub metadata: ObjectMeta,
    pub spec: NamespaceSpec,
}

/// Nothing in a Namespace's spec matters to the mesh; kept so every kind has `metadata` and `spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceSpec {}

impl Namespace {
    /// `istio.io/dataplane-mode: ambient`.
    pub fn is_ambient(&self) -> bool {
        self.metadata.label(LABEL_DATAPLANE_MODE) == Some("ambient")
    }

    /// The waypoint named by `istio.io/use-waypoint`, unless it is `none`.
    pub fn use_waypoint(&self) -> Option<&str> {
        self.metadata
            .label(LABEL_USE_WAYPOINT)
            .filter(|w| *w != "none")
    }

    pub(crate) fn validate(&self, f: &mut Findings) {
        if let Some(mode) = self.metadata.label(LABEL_DATAPLANE_MODE) {
            if mode != "ambient" && mode != "none" {
                f.warn(
                    format!("metadata.labels.{LABEL_DATAPLANE_MODE}"),
                    format!(
                        "unknown dataplane mode {mode:?}: only \"ambient\" enrolls the namespace"
                    ),
                );
            }
        }
    }
}

/// L4 protocol of a port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

/// A Pod: its labels, node, service account and addresses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pod {
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
    pub status: PodStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodSpec {
    pub node_name: Option<String>,
    /// Defaults to `default`, as the API server sets it.
    pub service_account_name: String,
    /// Deprecated alias of `serviceAccountName`, still written by old manifests.
    pub service_account: Option<String>,
    /// Only the ports matter: a Service's named `targetPort` resolves through them.
    pub containers: Vec<Container>,
}

impl Default for PodSpec {
    fn default() -> Self {
        PodSpec {
            node_name: None,
            service_account_name: "default".to_string(),
            service_account: None,
            containers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub ports: Vec<ContainerPort>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerPort {
    pub name: Option<String>,
    pub container_port: u32,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodStatus {
    #[serde(rename = "podIP")]
    pub pod_ip: Option<IpAddr>,
    #[serde(rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodIp {
    pub ip: IpAddr,
}

impl Pod {
    /// `status.podIP` followed by any other `status.podIPs`, without duplicates.
    pub fn ips(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self.status.pod_ip.into_iter().collect();
        for p in &self.status.pod_ips {
            if !out.contains(&p.ip) {
                out.push(p.ip);
            }
        }
        out
    }

    /// The primary address (`status.podIP`, else the first of `status.podIPs`).
    pub fn ip(&self) -> Option<IpAddr> {
        self.status
            .pod_ip
            .or_else(|| self.status.pod_ips.first().map(|p| p.ip))
    }

    /// `spec.nodeName`, or `""` for a pod not scheduled yet.
    pub fn node_name(&self) -> &str {
        self.spec.node_name.as_deref().unwrap_or_default()
    }

    /// The service account the pod runs as (its SPIFFE identity's `sa`).
    pub fn service_account(&self) -> &str {
        match &self.spec.service_account {
            Some(old) if self.spec.service_account_name == "default" && !old.is_empty() => old,
            _ => &self.spec.service_account_name,
        }
    }

    /// The number of the container port called `name`.
    pub fn named_port(&self, name: &str) -> Option<u32> {
        self.spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
    }

    pub(crate) fn validate(&self, f: &mut Findings) {
        if !self.spec.service_account_name.is_empty() {
            f.check(
                "spec.serviceAccountName",
                check_subdomain(&self.spec.service_account_name),
            );
        }
        for (i, c) in self.spec.containers.iter().enumerate() {
            for (j, p) in c.ports.iter().enumerate() {
                let path = format!("spec.containers[{i}].ports[{j}]");
                f.port(format!("{path}.containerPort"), p.container_port);
                if let Some(name) = &p.name {
                    f.check(format!("{path}.name"), check_port_name(name));
                }
            }
        }
    }
}

/// A Service: the VIP, the selector choosing its workloads, and its ports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Service {
    pub metadata: ObjectMeta,
    pub spec: ServiceSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServiceSpec {
    /// An address, `None` (headless) or absent.
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    /// Empty: the Service selects nothing by itself (endpoints managed elsewhere).
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
    #[serde(rename = "type")]
    pub type_: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u32,
    /// Absent means the same as `port`.
    pub target_port: Option<IntOrString>,
    pub protocol: Protocol,
    pub app_protocol: Option<String>,
}

impl ServicePort {
    /// The port on `pod` that this service port forwards to; `None` if a named target port is not
    /// declared by the pod (or no pod is given for a named port).
    pub fn target_port_on(&self, pod: Option<&Pod>) -> Option<u32> {
        match &self.target_port {
            None => Some(self.port),
            Some(IntOrString::Int(n)) => u32::try_from(*n).ok(),
            Some(IntOrString::String(name)) => match name.parse::<u32>() {
                Ok(n) => Some(n),
                Err(_) => pod.and_then(|p| p.named_port(name)),
            },
        }
    }
}

impl Service {
    /// Every cluster IP (`clusterIP` then `clusterIPs`); empty for headless Services.
    pub fn cluster_ips(&self) -> Vec<IpAddr> {
        let mut out = Vec::new();
        for text in self.spec.cluster_ip.iter().chain(&self.spec.cluster_ips) {
            if let Ok(ip) = text.parse::<IpAddr>() {
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
        out
    }

    /// The first cluster IP; `None` for headless Services or when unset.
    pub fn cluster_ip(&self) -> Option<IpAddr> {
        self.cluster_ips().first().copied()
    }

    pub fn selector(&self) -> &BTreeMap<String, String> {
        &self.spec.selector
    }

    /// `(port, targetPort)` pairs of a validated Service. The target is `None` for a named targetPort, which
    /// only a pod can resolve ([`ServicePort::target_port_on`]).
    pub fn ports(&self) -> Vec<(u16, Option<u16>)> {
        self.spec
            .ports
            .iter()
            .filter_map(|p| {
                let port = u16::try_from(p.port).ok()?;
                let target = match &p.target_port {
                    None => Some(port),
                    Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
                    Some(IntOrString::String(_)) => None,
                };
                Some((port, target))
            })
            .collect()
    }

    /// The waypoint named by the Service's `istio.io/use-waypoint` label, unless it is `none`.
    pub fn use_waypoint(&self) -> Option<&str> {
        self.metadata
            .label(LABEL_USE_WAYPOINT)
            .filter(|w| *w != "none")
    }

    pub(crate) fn validate(&self, f: &mut Findings) {
        let s = &self.spec;
        let ips = s
            .cluster_ip
            .iter()
            .map(|ip| ("spec.clusterIP".to_string(), ip));
        let ips = ips.chain(
            s.cluster_ips
                .iter()
                .enumerate()
                .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip)),
        );
        for (path, ip) in ips {
            if !ip.is_empty() && ip != "None" {
                f.check(path, check_ip(ip));
            }
        }
        f.labels("spec.selector", &s.selector);
        let mut names = BTreeMap::new();
        for (i, p) in s.ports.iter().enumerate() {
            let path = format!("spec.ports[{i}]");
            f.port(format!("{path}.port"), p.port);
            match &p.name {
                Some(name) => {
                    f.check(format!("{path}.name"), check_port_name(name));
                    if let Some(first) = names.insert(name.clone(), i) {
                        f.error(
                            format!("{path}.name"),
                            format!("duplicate of spec.ports[{first}].name"),
                        );
                    }
                }
                // Kubernetes needs names to tell ports apart once there is more than one.
                None if s.ports.len() > 1 => f.error(
                    format!("{path}.name"),
                    "required when there is more than one port",
                ),
                None => {}
            }
            match &p.target_port {
                Some(IntOrString::Int(n)) => {
                    f.port(format!("{path}.targetPort"), u32::try_from(*n).unwrap_or(0))
                }
                Some(IntOrString::String(name)) => {
                    f.check(format!("{path}.targetPort"), check_port_name(name))
                }
                None => {}
            }
        }
    }
}

/// The label tying an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// `discovery.k8s.io/v1` EndpointSlice: the endpoints of a Service without a selector (its endpoints are
/// managed by hand or by another controller). Services with a selector get theirs from Pods.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EndpointSlice {
    pub metadata: ObjectMeta,
    pub address_type: String,
    pub endpoints: Vec<SliceEndpoint>,
    pub ports: Vec<SlicePort>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SliceEndpoint {
    pub addresses: Vec<String>,
    pub conditions: SliceConditions,
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SliceConditions {
    /// Absent means ready, as Kubernetes defines it.
    pub ready: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SlicePort {
    pub name: Option<String>,
    pub port: Option<u32>,
}

impl EndpointSlice {
    /// The Service this slice belongs to.
    pub fn service_name(&self) -> Option<&str> {
        self.metadata.label(LABEL_SERVICE_NAME)
    }

    /// Addresses of the ready endpoints.
    pub fn ready_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.endpoints
            .iter()
            .filter(|e| e.conditions.ready != Some(false))
            .flat_map(|e| e.addresses.iter().filter_map(|a| a.parse().ok()))
    }

    /// The port named `name` (a Service port's name; unnamed for single-port Services).
    pub fn port_named(&self, name: &str) -> Option<u32> {
        self.ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or("") == name)
            .and_then(|p| p.port)
    }

    pub(crate) fn validate(&self, f: &mut Findings) {
        if self.service_name().is_none() {
            f.error(
                format!("metadata.labels.{LABEL_SERVICE_NAME}"),
                "an EndpointSlice must name its Service",
            );
        }
        if !matches!(self.address_type.as_str(), "IPv4" | "IPv6" | "FQDN" | "") {
            f.error("addressType", "must be IPv4, IPv6 or FQDN");
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            for (j, a) in e.addresses.iter().enumerate() {
                if self.address_type != "FQDN" && a.parse::<IpAddr>().is_err() {
                    f.error(
                        format!("endpoints[{i}].addresses[{j}]"),
                        format!("{a:?} is not an IP address"),
                    );
                }
            }
        }
        for (i, p) in self.ports.iter().enumerate() {
            if let Some(port) = p.port {
                f.port(format!("ports[{i}].port"), port);
            }
        }
    }
}
