//! The harness in control-plane mode: the `control` process on the underlay, its watched config directory
//! (the same YAML a user would `kubectl apply`), and per-node bootstrap tokens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::{bin, http_get, poll, sh, Cluster, Pod};

/// The control plane's address on the underlay.
pub const CONTROL_IP: &str = "198.19.0.254";

impl Cluster {
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// A workload's (waypoint's) bootstrap token, by pod name.
    pub fn workload_token_file(&self, pod: &str) -> PathBuf {
        self.dir.join(format!("token-{pod}"))
    }

    /// Node `node` (1-based, as in its name)'s bootstrap token.
    pub fn token_file(&self, node: usize) -> PathBuf {
        self.dir.join(format!("token-node{node}"))
    }

    /// ztunnel's `controlPlane` block for node `i` (1-based), writing the node's bootstrap token.
    pub(crate) fn control_plane_ref(&self, i: usize) -> Result<String> {
        let token: u128 = rand::random();
        write_secret(&self.token_file(i), &format!("{token:032x}\n"))?;
        Ok(format!(
            "controlPlane:\n  address: https://{CONTROL_IP}:15012\n  rootCert: {}\n  tokenFile: {}\n",
            self.ca_dir().join("root-cert.pem").display(),
            self.token_file(i).display()
        ))
    }

    /// Writes the cluster as Kubernetes objects: an ambient namespace, one Pod per pod, the Services.
    pub(crate) fn write_config_dir(&self) -> Result<()> {
        let dir = self.config_dir();
        std::fs::create_dir_all(&dir)?;
        let mut ns_labels = serde_json::json!({"istio.io/dataplane-mode": "ambient"});
        for (k, v) in &self.namespace_labels {
            ns_labels[k] = v.clone().into();
        }
        let mut docs = vec![serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "default", "labels": ns_labels},
        })];
        // Every other namespace the pods use is ambient too.
        let others: std::collections::BTreeSet<&str> = self
            .pods
            .iter()
            .map(|p| p.spec.namespace.as_str())
            .filter(|ns| *ns != "default")
            .collect();
        for ns in others {
            docs.push(serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"istio.io/dataplane-mode": "ambient"}},
            }));
        }
        for p in &self.pods {
            let mut labels: serde_json::Map<String, serde_json::Value> = p
                .spec
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            if !p.spec.mesh && !p.spec.is_waypoint() {
                labels.insert("istio.io/dataplane-mode".into(), "none".into());
            }
            docs.push(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": p.spec.name, "namespace": p.spec.namespace, "labels": labels},
                "spec": {"nodeName": self.nodes[p.spec.node].name, "serviceAccountName": p.spec.service_account},
                "status": {"podIP": p.ip},
            }));
        }
        for s in &self.services {
            docs.push(serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": s["name"], "namespace": s["namespace"], "labels": s.get("labels").cloned().unwrap_or_else(|| serde_json::json!({}))},
                "spec": {
                    "clusterIP": s["vip"],
                    "selector": s["selector"],
                    "ports": s["ports"].as_array().into_iter().flatten().map(|p| serde_json::json!({
                        "name": p.get("name").cloned().unwrap_or_else(|| format!("port-{}", p["port"]).into()),
                        "port": p["port"], "targetPort": p["targetPort"],
                    })).collect::<Vec<_>>(),
                },
            }));
        }
        let body: Vec<String> = docs
            .iter()
            .map(mesh_primitives::yaml::to_string)
            .collect::<Result<_, _>>()?;
        let tmp = self.dir.join("cluster.yaml.tmp");
        std::fs::write(&tmp, body.join("---\n"))?;
        std::fs::rename(&tmp, dir.join("cluster.yaml"))?;
        Ok(())
    }

    /// Starts (or restarts) the control plane and waits until it serves.
    pub fn start_control(&mut self) -> Result<()> {
        let first = self.control.is_none() && !self.dir.join("control.yaml").exists();
        if first {
            sh(
                "ip",
                &[
                    "-n",
                    &self.underlay,
                    "addr",
                    "add",
                    &format!("{CONTROL_IP}/24"),
                    "dev",
                    "br0",
                ],
            )?;
            // Pods (a waypoint) talk to the control plane too: the underlay routes their subnets via their node.
            for i in 1..=self.nodes.len() {
                sh(
                    "ip",
                    &[
                        "-n",
                        &self.underlay,
                        "route",
                        "add",
                        &format!("198.18.{i}.0/24"),
                        "via",
                        &format!("198.19.0.{i}"),
                    ],
                )?;
            }
            let tokens: String = (0..self.nodes.len())
                .map(|i| {
                    format!(
                        "- {{node: node{}, tokenFile: {}}}\n",
                        i + 1,
                        self.token_file(i + 1).display()
                    )
                })
                .collect();
            let mut cfg = format!(
                "configDir: {}\ncaDir: {}\npollInterval: 200ms\ndebounce: 50ms\nnodeTokens:\n{tokens}",
                self.config_dir().display(),
                self.ca_dir().display()
            );
            let waypoints: Vec<&Pod> = self.pods.iter().filter(|p| p.spec.is_waypoint()).collect();
            if !waypoints.is_empty() {
                cfg.push_str("workloadTokens:\n");
            }
            for p in waypoints {
                let token: u128 = rand::random();
                let file = self.workload_token_file(&p.spec.name);
                write_secret(&file, &format!("{token:032x}\n"))?;
                cfg.push_str(&format!(
                    "- {{namespace: {}, serviceAccount: {}, tokenFile: {}}}\n",
                    p.spec.namespace,
                    p.spec.service_account,
                    file.display()
                ));
            }
            std::fs::write(self.dir.join("control.yaml"), cfg)?;
        }
        let log = std::fs::File::create(self.dir.join("control.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.underlay])
            .arg(bin("control")?)
            .arg("--config")
            .arg(self.dir.join("control.yaml"))
            .env(
                "RUST_LOG",
                std::env::var("MESH_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()?;
        self.control = Some(child);
        let ns = self.underlay.clone();
        poll("control plane to be ready", Duration::from_secs(20), || {
            http_get(&ns, &format!("{CONTROL_IP}:15014"), "/ready")
                .ok()
                .filter(|(s, _)| *s == 200)
        })
        .with_context(|| format!("control log: {}", self.control_log()))?;
        Ok(())
    }

    /// Kills the control plane (SIGKILL).
    pub fn kill_control(&mut self) -> Result<()> {
        let mut c = self.control.take().context("control plane not running")?;
        c.kill()?;
        c.wait()?;
        Ok(())
    }

    pub fn control_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("control.log")).unwrap_or_default()
    }

    /// GET on the control plane's monitoring port.
    pub fn control_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(
            &self.underlay,
            &SocketAddr::from(([198, 19, 0, 254], 15014)).to_string(),
            path,
        )
    }
}

/// A bootstrap token: readable by its owner only, as a credential should be.
fn write_secret(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}
