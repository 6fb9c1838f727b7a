//! Waypoints in the harness (control-plane mode): a waypoint process in its own pod namespace (not captured, as
//! in Istio), its Gateway in the watched config directory, and mesh config applied the way `kubectl apply` would.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::control::CONTROL_IP;
use crate::{bin, http_get, poll, Cluster};

/// The label Istio puts on a waypoint's pods (and on its Service): the Gateway they implement.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

impl Cluster {
    /// Writes `yaml` as `file` in the watched config directory (atomically, as one `kubectl apply`).
    pub fn apply(&self, file: &str, yaml: &str) -> Result<()> {
        let dir = self.config_dir();
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, dir.join(file))?;
        Ok(())
    }

    pub fn delete(&self, file: &str) -> Result<()> {
        Ok(std::fs::remove_file(self.config_dir().join(file))?)
    }

    /// Declares the Gateway (class `istio-waypoint`) of waypoint pod `pod` and starts the waypoint in the pod's
    /// namespace, with certificates and config from the control plane.
    pub fn start_waypoint(&mut self, pod: &str) -> Result<()> {
        let p = self.pod(pod);
        let (ns, netns) = (p.spec.namespace.clone(), p.netns.clone());
        let gateway = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: {pod}\n  namespace: {ns}\n  labels: {{istio.io/waypoint-for: service}}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  - {{name: mesh, port: 15008, protocol: HBONE}}\n"
        );
        self.apply(&format!("gateway-{pod}.yaml"), &gateway)?;
        let config = self.dir.join(format!("waypoint-{pod}.yaml"));
        std::fs::write(
            &config,
            format!(
                "name: {pod}\nnamespace: {ns}\ndrainTimeout: 5s\ncontrolPlane:\n  address: https://{CONTROL_IP}:15012\n  rootCert: {}\n  tokenFile: {}\n",
                self.ca_dir().join("root-cert.pem").display(),
                self.workload_token_file(pod).display()
            ),
        )?;
        let log = std::fs::File::create(self.dir.join(format!("waypoint-{pod}.log")))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &netns])
            .arg(bin("waypoint")?)
            .arg("--config")
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("MESH_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()?;
        self.children.push((pod.to_string(), child));
        poll("waypoint to be ready", Duration::from_secs(20), || {
            http_get(&netns, "127.0.0.1:15021", "/healthz/ready")
                .ok()
                .filter(|(s, _)| *s == 200)
        })
        .with_context(|| self.waypoint_log(pod))?;
        Ok(())
    }

    /// Makes the demo app of `pod` answer 503 to its next `count` requests (-1: all, until 0 resets it), asked
    /// from pod `from` straight at the pod's HTTP port.
    pub fn set_failing(&self, from: &str, pod: &str, count: i64) -> Result<()> {
        let addr = std::net::SocketAddr::new(self.pod(pod).ip, 8090);
        let path = format!("/control/fail?status=503&count={count}");
        let r = crate::http::request(&self.pod(from).netns, addr, crate::http::Req::post(&path))?;
        anyhow::ensure!(r.status == 200, "{pod} answered {} to {path}", r.status);
        Ok(())
    }

    /// The pid of a process the cluster started (`ip netns exec` execs it, so the pid is the program's).
    pub fn child_pid(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
    }

    /// The pid of node `i`'s ztunnel.
    pub fn ztunnel_pid(&self, i: usize) -> Option<u32> {
        self.nodes.get(i)?.ztunnel.as_ref().map(|c| c.id())
    }

    pub fn waypoint_log(&self, pod: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("waypoint-{pod}.log"))).unwrap_or_default()
    }

    /// The waypoint's admin (15000) or metrics (15020) endpoint, from inside its namespace.
    pub fn waypoint_get(&self, pod: &str, addr: &str, path: &str) -> Result<(u16, String)> {
        http_get(&self.pod(pod).netns, addr, path)
    }

    pub fn waypoint_dump(&self, pod: &str) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &self.waypoint_get(pod, "127.0.0.1:15000", "/config_dump")?.1,
        )?)
    }

    pub fn waypoint_metrics(&self, pod: &str) -> Result<String> {
        Ok(self.waypoint_get(pod, "127.0.0.1:15020", "/metrics")?.1)
    }

    /// Waits until waypoint `pod` holds L7 config for `service` (`<ns>/<fqdn>`) that satisfies `ready`.
    pub fn wait_l7(
        &self,
        pod: &str,
        service: &str,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<()> {
        poll(
            &format!("waypoint {pod} to have L7 config for {service}"),
            Duration::from_secs(20),
            || {
                let dump = self.waypoint_dump(pod).ok()?;
                let services = dump["l7"]["services"].as_array()?;
                services
                    .iter()
                    .find(|s| s["service"] == service)
                    .filter(|s| ready(s))
                    .map(|_| ())
            },
        )
        .with_context(|| {
            format!(
                "control: {}\nwaypoint: {}",
                self.control_log(),
                self.waypoint_log(pod)
            )
        })
    }
}
