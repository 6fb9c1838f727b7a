//! The waypoint's typed config: defaults, then an optional YAML file, then environment variables; validated at
//! start and served at `/config_dump`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use mesh_core::config::{env_override, load_yaml, ConfigError};
use mesh_core::control::ControlPlane;
use mesh_core::hbone::{H2Settings, PoolSettings};
use mesh_primitives::duration;
use mesh_primitives::identity::Identity;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Config {
    /// The Gateway this waypoint implements (env `WAYPOINT_NAME`).
    pub name: String,
    /// Its namespace (env `POD_NAMESPACE`).
    pub namespace: String,
    /// The service account it runs as; Istio names it after the Gateway (env `SERVICE_ACCOUNT`).
    pub service_account: String,
    /// SPIFFE trust domain (env `TRUST_DOMAIN`).
    pub trust_domain: String,
    /// Certificates from the control plane's CA, workloads and L7 config over delta xDS.
    pub control_plane: Option<ControlPlane>,
    /// HBONE listener (Istio's 15008).
    pub hbone_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub readiness_addr: SocketAddr,
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
    #[serde(with = "duration")]
    pub certificate_ttl: Duration,
    /// How long to wait for a client's first bytes before treating a connection as opaque TCP (server-first
    /// protocols send nothing until the server speaks).
    #[serde(with = "duration")]
    pub protocol_detection_timeout: Duration,
    /// Request bodies up to this size are buffered so they can be retried and mirrored; larger ones stream.
    pub max_buffered_body_bytes: usize,
    pub h2: H2Settings,
    pub pool: PoolSettings,
    /// Distributed tracing: spans exported over OTLP/gRPC. Unset: no spans, no cost.
    pub tracing: Option<crate::trace::TracingConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "waypoint".into(),
            namespace: "default".into(),
            service_account: String::new(),
            trust_domain: "cluster.local".into(),
            control_plane: None,
            hbone_addr: "0.0.0.0:15008".parse().expect("static address"),
            admin_addr: "127.0.0.1:15000".parse().expect("static address"),
            metrics_addr: "0.0.0.0:15020".parse().expect("static address"),
            readiness_addr: "0.0.0.0:15021".parse().expect("static address"),
            drain_timeout: Duration::from_secs(30),
            certificate_ttl: Duration::from_secs(24 * 3600),
            protocol_detection_timeout: Duration::from_secs(5),
            max_buffered_body_bytes: 64 * 1024,
            h2: H2Settings::default(),
            pool: PoolSettings::default(),
            tracing: None,
        }
    }
}

impl Config {
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut cfg: Config = match file {
            Some(p) => load_yaml("config file", p)?,
            None => Config::default(),
        };
        env_override("WAYPOINT_NAME", &mut cfg.name)?;
        env_override("POD_NAMESPACE", &mut cfg.namespace)?;
        env_override("SERVICE_ACCOUNT", &mut cfg.service_account)?;
        env_override("TRUST_DOMAIN", &mut cfg.trust_domain)?;
        env_override("ADMIN_ADDR", &mut cfg.admin_addr)?;
        env_override("METRICS_ADDR", &mut cfg.metrics_addr)?;
        env_override("READINESS_ADDR", &mut cfg.readiness_addr)?;
        // Empty means unset, as OpenTelemetry's SDKs read it.
        if let Some(address) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .filter(|a| !a.is_empty())
        {
            match &mut cfg.tracing {
                Some(t) => t.address = address,
                None => {
                    cfg.tracing = Some(crate::trace::TracingConfig {
                        address,
                        sampling_percentage: crate::trace::default_sampling(),
                    })
                }
            }
        }
        // In Kubernetes the control plane's Deployment of the waypoint passes these (Istio's `CA_ADDR`).
        if let Ok(address) = std::env::var("CA_ADDR") {
            let var =
                |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
            cfg.control_plane = Some(ControlPlane {
                address,
                root_cert: var("CA_ROOT_CERT", "/var/run/secrets/istio/root-cert.pem").into(),
                tls_name: var("CA_TLS_NAME", "istiod.istio-system.svc"),
                token_file: var("CA_TOKEN_FILE", "/var/run/secrets/tokens/istio-token").into(),
            });
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: &str| {
            Err(ConfigError::Invalid {
                field: field.into(),
                reason: reason.into(),
            })
        };
        if self.name.is_empty() || self.namespace.is_empty() {
            return invalid("name", "the waypoint's name and namespace must be set");
        }
        if self.control_plane.is_none() {
            return invalid(
                "controlPlane",
                "a waypoint needs the control plane (certificates and L7 config)",
            );
        }
        if self.trust_domain.is_empty() || self.trust_domain.contains('/') {
            return invalid("trustDomain", "must be a non-empty name without '/'");
        }
        if let Some(t) = &self.tracing {
            if !(t.address.starts_with("http://") || t.address.starts_with("https://")) {
                return invalid(
                    "tracing.address",
                    "must be http://host:port or https://host:port (OTLP/gRPC)",
                );
            }
            if !(0.0..=100.0).contains(&t.sampling_percentage) {
                return invalid("tracing.samplingPercentage", "must be between 0 and 100");
            }
        }
        Ok(())
    }

    /// The waypoint's own SPIFFE identity (its service account defaults to the Gateway's name, as in Istio).
    pub fn identity(&self) -> Identity {
        let sa = if self.service_account.is_empty() {
            &self.name
        } else {
            &self.service_account
        };
        Identity::new(&self.trust_domain, &self.namespace, sa)
    }
}

/// Environment variables the config reads, with what each sets (listed by `--help`).
pub const ENV: &[(&str, &str)] = &[
    ("WAYPOINT_NAME", "name"),
    ("POD_NAMESPACE", "namespace"),
    ("SERVICE_ACCOUNT", "serviceAccount"),
    ("TRUST_DOMAIN", "trustDomain"),
    ("ADMIN_ADDR", "adminAddr"),
    ("METRICS_ADDR", "metricsAddr"),
    ("READINESS_ADDR", "readinessAddr"),
    ("CA_ADDR", "controlPlane.address (with the three below)"),
    ("CA_ROOT_CERT", "controlPlane.rootCert"),
    ("CA_TLS_NAME", "controlPlane.tlsName"),
    ("CA_TOKEN_FILE", "controlPlane.tokenFile"),
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "tracing.address (OTLP/gRPC collector)",
    ),
];

#[cfg(test)]
mod help_tests {
    use super::*;

    #[test]
    fn help_lists_every_environment_variable_read() {
        mesh_core::config::check_env_listed(include_str!("config.rs"), ENV).unwrap();
    }
}
