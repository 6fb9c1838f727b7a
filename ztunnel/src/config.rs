//! ztunnel's typed config: defaults, then an optional YAML file, then environment variables; validated at start
//! and served at `/config_dump`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_core::config::{env_override, load_yaml, ConfigError};
use mesh_core::control::ControlPlane;
use mesh_core::hbone::{H2Settings, PoolSettings};
use mesh_primitives::duration;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Config {
    /// The Kubernetes node this ztunnel serves (env `NODE_NAME`).
    pub node_name: String,
    /// SPIFFE trust domain (env `TRUST_DOMAIN`).
    pub trust_domain: String,
    /// Local file of workloads and services, used instead of the control plane (env `LOCAL_STATE_FILE`).
    pub local_state_file: Option<PathBuf>,
    /// Directory holding the development CA's root (created on first start) (env `DEV_CA_DIR`).
    pub dev_ca_dir: Option<PathBuf>,
    /// The control plane: certificates from its CA and workloads over delta xDS (instead of the two above).
    pub control_plane: Option<ControlPlane>,
    /// Where the node agent's ZDS socket `ztunnel.sock` is (env `ZTUNNEL_RUN_DIR`).
    pub run_dir: PathBuf,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub readiness_addr: SocketAddr,
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
    #[serde(with = "duration")]
    pub certificate_ttl: Duration,
    #[serde(with = "duration")]
    pub state_poll_interval: Duration,
    pub h2: H2Settings,
    pub pool: PoolSettings,
    /// The most one read of a proxied connection's direction moves. Reads start at 16 KiB and double while they
    /// fill their buffer; buffers are lent per read, so an idle connection holds none.
    pub copy_buffer_bytes: usize,
    /// Threads carrying connections (env `ZTUNNEL_WORKER_THREADS`, Istio's name); 0: one per core.
    pub worker_threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            trust_domain: "cluster.local".into(),
            local_state_file: None,
            dev_ca_dir: None,
            control_plane: None,
            run_dir: PathBuf::from("/var/run/ztunnel"),
            admin_addr: "127.0.0.1:15000".parse().expect("static address"),
            metrics_addr: "0.0.0.0:15020".parse().expect("static address"),
            readiness_addr: "0.0.0.0:15021".parse().expect("static address"),
            drain_timeout: Duration::from_secs(30),
            certificate_ttl: Duration::from_secs(24 * 3600),
            state_poll_interval: Duration::from_secs(1),
            h2: H2Settings::default(),
            pool: PoolSettings::default(),
            copy_buffer_bytes: 1024 * 1024,
            worker_threads: 0,
        }
    }
}

impl Config {
    /// Loads and validates the config: `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut cfg: Config = match file {
            Some(p) => load_yaml("config file", p)?,
            None => Config::default(),
        };
        env_override("NODE_NAME", &mut cfg.node_name)?;
        env_override("TRUST_DOMAIN", &mut cfg.trust_domain)?;
        env_override("ZTUNNEL_RUN_DIR", &mut cfg.run_dir)?;
        env_override("ADMIN_ADDR", &mut cfg.admin_addr)?;
        env_override("METRICS_ADDR", &mut cfg.metrics_addr)?;
        env_override("READINESS_ADDR", &mut cfg.readiness_addr)?;
        env_override("ZTUNNEL_WORKER_THREADS", &mut cfg.worker_threads)?;
        if let Ok(p) = std::env::var("LOCAL_STATE_FILE") {
            cfg.local_state_file = Some(p.into());
        }
        if let Ok(p) = std::env::var("DEV_CA_DIR") {
            cfg.dev_ca_dir = Some(p.into());
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
        if self.node_name.is_empty() {
            return invalid(
                "nodeName",
                "must be set (env NODE_NAME): ztunnel serves the pods of one node",
            );
        }
        if self.trust_domain.is_empty() || self.trust_domain.contains('/') {
            return invalid("trustDomain", "must be a non-empty name without '/'");
        }
        if self.local_state_file.is_none() && self.control_plane.is_none() {
            return invalid(
                "localStateFile",
                "set it (env LOCAL_STATE_FILE) or controlPlane: workloads come from one of them",
            );
        }
        if self.dev_ca_dir.is_none() && self.control_plane.is_none() {
            return invalid(
                "devCaDir",
                "set it (env DEV_CA_DIR) or controlPlane: certificates come from one of them",
            );
        }
        if self.pool.max_streams_per_connection == 0 {
            return invalid("pool.maxStreamsPerConnection", "must be at least 1");
        }
        if self.copy_buffer_bytes < 1024 {
            return invalid("copyBufferBytes", "must be at least 1024");
        }
        Ok(())
    }

    /// The node agent's ZDS socket (Istio's path under its default run directory).
    pub fn socket_path(&self) -> PathBuf {
        self.run_dir.join("ztunnel.sock")
    }
}

/// Environment variables the config reads, with what each sets (listed by `--help`).
pub const ENV: &[(&str, &str)] = &[
    ("NODE_NAME", "nodeName"),
    ("TRUST_DOMAIN", "trustDomain"),
    ("ZTUNNEL_RUN_DIR", "runDir (the node agent's ZDS socket)"),
    ("ADMIN_ADDR", "adminAddr"),
    ("METRICS_ADDR", "metricsAddr"),
    ("READINESS_ADDR", "readinessAddr"),
    ("LOCAL_STATE_FILE", "localStateFile"),
    ("DEV_CA_DIR", "devCaDir"),
    ("ZTUNNEL_WORKER_THREADS", "workerThreads"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_every_environment_variable_read() {
        mesh_core::config::check_env_listed(include_str!("config.rs"), ENV).unwrap();
    }

    #[test]
    fn validation_names_the_field() {
        let cfg = Config::default();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("nodeName"), "{e}");
        let cfg = Config {
            node_name: "n1".into(),
            local_state_file: Some("s.yaml".into()),
            dev_ca_dir: Some("ca".into()),
            copy_buffer_bytes: 10,
            ..Config::default()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("copyBufferBytes"), "{e}");
    }

    #[test]
    fn unknown_fields_in_the_file_are_rejected() {
        let path = std::env::temp_dir().join(format!("zt-cfg-{}.yaml", std::process::id()));
        std::fs::write(&path, "nodeName: n1\nnodeNmae: typo\n").unwrap();
        let e = Config::load(Some(&path)).unwrap_err().to_string();
        let _ = std::fs::remove_file(&path);
        assert!(e.contains("nodeNmae"), "{e}");
    }

    #[test]
    fn durations_round_trip_through_config_dump() {
        let cfg = Config::default();
        let yaml = mesh_primitives::yaml::to_string(&cfg).unwrap();
        assert!(yaml.contains("drainTimeout: 30s"), "{yaml}");
        let back: Config = mesh_primitives::yaml::from_str(&yaml).unwrap();
        assert_eq!(back.drain_timeout, cfg.drain_timeout);
    }
}
