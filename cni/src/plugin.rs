//! The chained CNI plugin (`mesh-cni`), run by the container runtime for each pod: on `ADD` it asks the node
//! agent to enroll the pod (the agent decides whether the pod is in the mesh, installs its redirection rules and
//! hands it to ztunnel) and passes the previous plugin's result on; on `DEL` it tells the agent the pod is gone.
//! An `ADD` the agent cannot answer fails, so the runtime retries the pod instead of starting it outside the mesh
//! (as Istio's plugin does).

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::event::{self, Command, PluginEvent, Reply};

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("missing environment variable {0} (is this being run by a container runtime?)")]
    Env(&'static str),
    #[error("invalid network config on stdin: {0}")]
    Config(String),
    #[error(
        "prevResult has no IP address for the pod; chain mesh-cni after an IPAM-assigning plugin"
    )]
    NoIp,
    #[error("node agent at {path} not reachable ({source}); is the mesh-cni-node DaemonSet running on this node?")]
    Agent {
        path: String,
        source: std::io::Error,
    },
    #[error("node agent refused the pod: {0}")]
    Refused(String),
    #[error("unsupported CNI_COMMAND {0:?}")]
    Command(String),
}

impl CniError {
    /// CNI error codes: 4 invalid config, 7 invalid env, 11 try again later, 999 plugin-specific.
    pub fn code(&self) -> u32 {
        match self {
            CniError::Env(_) | CniError::Command(_) => 4,
            CniError::Config(_) | CniError::NoIp => 7,
            CniError::Agent { .. } => 11,
            _ => 999,
        }
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetConf {
    cni_version: String,
    #[serde(default)]
    prev_result: Option<serde_json::Value>,
    #[serde(default)]
    ztunnel: ZtunnelRef,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ZtunnelRef {
    #[serde(default = "default_run_dir")]
    run_dir: PathBuf,
}

impl Default for ZtunnelRef {
    fn default() -> Self {
        Self {
            run_dir: default_run_dir(),
        }
    }
}

fn default_run_dir() -> PathBuf {
    PathBuf::from("/var/run/ztunnel")
}

/// The CNI environment a runtime sets.
pub struct CniEnv {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub args: String,
}

impl CniEnv {
    pub fn from_env() -> Result<Self, CniError> {
        let var = |n: &'static str| std::env::var(n).map_err(|_| CniError::Env(n));
        Ok(Self {
            command: var("CNI_COMMAND")?,
            container_id: std::env::var("CNI_CONTAINERID").unwrap_or_default(),
            netns: std::env::var("CNI_NETNS").unwrap_or_default(),
            args: std::env::var("CNI_ARGS").unwrap_or_default(),
        })
    }

    fn arg(&self, key: &str) -> Option<String> {
        self.args
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    }

    fn event(&self, command: Command, ips: Vec<IpAddr>) -> PluginEvent {
        PluginEvent {
            command,
            uid: self
                .arg("K8S_POD_UID")
                .unwrap_or_else(|| self.container_id.clone()),
            name: self
                .arg("K8S_POD_NAME")
                .unwrap_or_else(|| self.container_id.clone()),
            namespace: self
                .arg("K8S_POD_NAMESPACE")
                .unwrap_or_else(|| "default".into()),
            netns: PathBuf::from(&self.netns),
            ips,
        }
    }
}

/// Runs one CNI command; the returned string goes to stdout.
pub fn run(env: &CniEnv, stdin: &str) -> Result<String, CniError> {
    if env.command == "VERSION" {
        return Ok(
            r#"{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}"#
                .into(),
        );
    }
    let conf: NetConf = serde_json::from_str(stdin).map_err(|e| CniError::Config(e.to_string()))?;
    if env.container_id.is_empty() {
        return Err(CniError::Env("CNI_CONTAINERID"));
    }
    match env.command.as_str() {
        "ADD" => add(env, &conf),
        "DEL" => {
            // Best effort, as CNI asks of DEL: the namespace is going away with its rules.
            if let Err(e) = ask(&conf.ztunnel.run_dir, &env.event(Command::Del, Vec::new())) {
                eprintln!("mesh-cni: {e}");
            }
            Ok(String::new())
        }
        "CHECK" => Ok(String::new()),
        other => Err(CniError::Command(other.to_string())),
    }
}

fn add(env: &CniEnv, conf: &NetConf) -> Result<String, CniError> {
    if env.netns.is_empty() {
        return Err(CniError::Env("CNI_NETNS"));
    }
    let prev = conf.prev_result.clone().unwrap_or(serde_json::Value::Null);
    let ips = pod_ips(&prev);
    if ips.is_empty() {
        return Err(CniError::NoIp);
    }
    match ask(&conf.ztunnel.run_dir, &env.event(Command::Add, ips))? {
        Reply::Enrolled | Reply::Skipped { .. } | Reply::Removed => {}
        Reply::Error { message } => return Err(CniError::Refused(message)),
    }
    let mut result = prev;
    if let Some(obj) = result.as_object_mut() {
        obj.insert("cniVersion".into(), conf.cni_version.clone().into());
    }
    Ok(result.to_string())
}

fn pod_ips(prev: &serde_json::Value) -> Vec<IpAddr> {
    prev.get("ips")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("address")?.as_str()?.split('/').next()?.parse().ok())
        .collect()
}

/// Sends one event to the agent and waits for its answer.
fn ask(run_dir: &std::path::Path, ev: &PluginEvent) -> Result<Reply, CniError> {
    let path = event::socket_path(run_dir);
    let fail = |source: std::io::Error| CniError::Agent {
        path: path.display().to_string(),
        source,
    };
    let mut s = UnixStream::connect(&path).map_err(fail)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(fail)?;
    let mut line = serde_json::to_string(ev).expect("an event always serializes");
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(fail)?;
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer).map_err(fail)?;
    serde_json::from_str(&answer).map_err(|e| {
        fail(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unreadable answer {answer:?}: {e}"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ips_from_prev_result() {
        let prev =
            serde_json::json!({"ips": [{"address": "198.18.1.5/24", "gateway": "198.18.1.1"}]});
        assert_eq!(
            pod_ips(&prev),
            vec!["198.18.1.5".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn cni_args_name_the_pod() {
        let env = CniEnv {
            command: "ADD".into(),
            container_id: "c".into(),
            netns: "/var/run/netns/x".into(),
            args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-1;K8S_POD_UID=u-1"
                .into(),
        };
        let ev = env.event(Command::Add, vec![]);
        assert_eq!(
            (ev.uid.as_str(), ev.name.as_str(), ev.namespace.as_str()),
            ("u-1", "web-1", "prod")
        );
    }

    #[test]
    fn unreachable_agent_fails_the_add_with_try_again() {
        let env = CniEnv {
            command: "ADD".into(),
            container_id: "c".into(),
            netns: "/var/run/netns/x".into(),
            args: String::new(),
        };
        let stdin = serde_json::json!({"cniVersion": "1.0.0", "ztunnel": {"runDir": "/nonexistent-mesh-run"},
            "prevResult": {"ips": [{"address": "198.18.1.5/24"}]}});
        let e = run(&env, &stdin.to_string()).unwrap_err();
        assert_eq!(e.code(), 11, "{e}");
        assert!(e.to_string().contains("mesh-cni.sock"), "{e}");
    }
}
