//! The control plane's typed config: defaults, an optional YAML file, environment variables; validated at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_core::config::{env_override, load_yaml, ConfigError};
use mesh_primitives::duration;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeToken {
    pub node: String,
    /// File holding the node's bootstrap token (the same file the node's ztunnel reads).
    pub token_file: PathBuf,
}

/// File mode credentials of a workload that talks to the control plane itself, such as a waypoint: it may obtain
/// a certificate for its own identity only, `spiffe://<trust domain>/ns/<namespace>/sa/<serviceAccount>`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadToken {
    pub namespace: String,
    pub service_account: String,
    /// File holding the workload's bearer token (the same file the workload reads).
    pub token_file: PathBuf,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginCa {
    /// The CA certificate followed by its parents up to the root (PEM).
    pub cert_chain: PathBuf,
    pub key: PathBuf,
}

/// Where objects come from: a watched directory (the embedded default) or the Kubernetes API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigSource {
    #[default]
    Files,
    Kubernetes,
}

impl std::str::FromStr for ConfigSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "files" => Ok(Self::Files),
            "kubernetes" => Ok(Self::Kubernetes),
            other => Err(format!("{other:?} is not files or kubernetes")),
        }
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Config {
    /// `files` (watch `configDir`) or `kubernetes` (watch the API server) (env `CONFIG_SOURCE`).
    pub config_source: ConfigSource,
    /// SPIFFE trust domain (env `TRUST_DOMAIN`).
    pub trust_domain: String,
    /// Istio's root namespace: policies there without a selector apply mesh-wide (env `ROOT_NAMESPACE`).
    pub root_namespace: String,
    /// Kubernetes mode: how each waypoint Gateway's Deployment and Service are made.
    pub waypoint_deployment: crate::deploy::WaypointDeployment,
    /// The watched directory of Kubernetes-style YAML (env `CONFIG_DIR`).
    pub config_dir: PathBuf,
    /// Where the self-signed root is generated on first start and kept (env `CA_DIR`).
    pub ca_dir: PathBuf,
    /// A user-supplied CA (root or intermediate) instead of the generated root.
    pub plugin_ca: Option<PluginCa>,
    /// Extra roots to trust (PEM files): during a root rotation, the other root, so workloads certified under
    /// either keep talking to each other until the old root is retired.
    pub trusted_roots: Vec<PathBuf>,
    /// gRPC over TLS: CA and xDS (env `GRPC_ADDR`).
    pub grpc_addr: SocketAddr,
    /// `/metrics`, `/ready`, `/debug/config_dump`, `/debug/analyze` (env `MONITORING_ADDR`).
    pub monitoring_addr: SocketAddr,
    /// Lifetime of the certificates the CA issues to proxies.
    #[serde(with = "duration")]
    pub certificate_ttl: Duration,
    /// Open connections on the gRPC port (handshaking or established) beyond which new ones are closed at once.
    pub max_connections: usize,
    /// Lifetime of the control plane's own serving certificate on 15012, renewed at half-life.
    #[serde(with = "duration")]
    pub serving_certificate_ttl: Duration,
    #[serde(with = "duration")]
    pub poll_interval: Duration,
    /// Quiet time after a change before pushing, so a burst of edits makes one push.
    #[serde(with = "duration")]
    pub debounce: Duration,
    /// Per-node bootstrap credentials (file mode authentication of ztunnels).
    pub node_tokens: Vec<NodeToken>,
    /// Per-workload credentials (file mode authentication of waypoints), each bound to one identity.
    pub workload_tokens: Vec<WorkloadToken>,
    /// Kubernetes mode: `namespace/serviceaccount` of node proxies, which may impersonate their node's pods.
    pub node_proxy_service_accounts: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            config_source: ConfigSource::Files,
            trust_domain: "cluster.local".into(),
            root_namespace: mesh_translate::DEFAULT_ROOT_NAMESPACE.into(),
            waypoint_deployment: Default::default(),
            config_dir: PathBuf::from("/etc/mesh/config"),
            ca_dir: PathBuf::from("/var/lib/mesh/ca"),
            plugin_ca: None,
            trusted_roots: Vec::new(),
            grpc_addr: "0.0.0.0:15012".parse().expect("static address"),
            monitoring_addr: "0.0.0.0:15014".parse().expect("static address"),
            certificate_ttl: Duration::from_secs(24 * 3600),
            serving_certificate_ttl: Duration::from_secs(24 * 3600),
            max_connections: 16384,
            poll_interval: Duration::from_secs(1),
            debounce: Duration::from_millis(100),
            node_tokens: Vec::new(),
            workload_tokens: Vec::new(),
            node_proxy_service_accounts: vec!["istio-system/ztunnel".into()],
        }
    }
}

impl Config {
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut cfg: Config = match file {
            Some(p) => load_yaml("config file", p)?,
            None => Config::default(),
        };
        env_override("CONFIG_SOURCE", &mut cfg.config_source)?;
        env_override("TRUST_DOMAIN", &mut cfg.trust_domain)?;
        env_override("ROOT_NAMESPACE", &mut cfg.root_namespace)?;
        env_override("CONFIG_DIR", &mut cfg.config_dir)?;
        env_override("CA_DIR", &mut cfg.ca_dir)?;
        env_override("GRPC_ADDR", &mut cfg.grpc_addr)?;
        env_override("MONITORING_ADDR", &mut cfg.monitoring_addr)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| {
            Err(ConfigError::Invalid {
                field: field.into(),
                reason,
            })
        };
        if self.trust_domain.is_empty() || self.trust_domain.contains('/') {
            return invalid("trustDomain", "must be a non-empty name without '/'".into());
        }
        if self.config_source == ConfigSource::Files && !self.config_dir.is_dir() {
            return invalid(
                "configDir",
                format!("{} is not a directory", self.config_dir.display()),
            );
        }
        if self.certificate_ttl < Duration::from_secs(60) {
            return invalid("certificateTtl", "must be at least 1m".into());
        }
        if self.max_connections == 0 {
            return invalid("maxConnections", "must be at least 1".into());
        }
        if self.serving_certificate_ttl < Duration::from_secs(2) {
            return invalid("servingCertificateTtl", "must be at least 2s".into());
        }
        for (i, t) in self.node_tokens.iter().enumerate() {
            if t.node.is_empty() {
                return invalid(&format!("nodeTokens[{i}].node"), "must name a node".into());
            }
        }
        for (i, t) in self.workload_tokens.iter().enumerate() {
            let fields = [
                ("namespace", &t.namespace),
                ("serviceAccount", &t.service_account),
            ];
            for (field, value) in fields {
                // The two become segments of a SPIFFE ID: Kubernetes names, never empty or with a '/'.
                if let Err(e) = mesh_model::validate::check_subdomain(value) {
                    return invalid(&format!("workloadTokens[{i}].{field}"), e.to_string());
                }
            }
            if t.token_file.as_os_str().is_empty() {
                return invalid(
                    &format!("workloadTokens[{i}].tokenFile"),
                    "must name a file".into(),
                );
            }
        }
        Ok(())
    }
}

/// Environment variables the config reads, with what each sets (listed by `--help`).
pub const ENV: &[(&str, &str)] = &[
    ("CONFIG_SOURCE", "configSource (files or kubernetes)"),
    ("TRUST_DOMAIN", "trustDomain"),
    ("ROOT_NAMESPACE", "rootNamespace"),
    ("CONFIG_DIR", "configDir"),
    ("CA_DIR", "caDir"),
    ("GRPC_ADDR", "grpcAddr"),
    ("MONITORING_ADDR", "monitoringAddr"),
];

#[cfg(test)]
mod help_tests {
    use super::*;

    #[test]
    fn help_lists_every_environment_variable_read() {
        mesh_core::config::check_env_listed(include_str!("config.rs"), ENV).unwrap();
    }
}
