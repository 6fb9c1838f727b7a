//! The node agent, as a chained CNI plugin (`mesh-cni`): on `ADD` it records the pod for ztunnel and asks ztunnel
//! to open the pod's listeners, then installs the redirection rules inside the pod's namespace; on `DEL` it removes
//! them. If ztunnel answers with an error the pod is not enrolled; if ztunnel is not running at all, the rules are
//! installed anyway and the pod's traffic waits until ztunnel starts and enrolls it from its record (fail closed,
//! as Istio's CNI does). Rules skip sockets carrying the mesh mark, so ztunnel's own traffic is never captured.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mesh_core::netns::NetNs;
use mesh_core::{HBONE_PORT, INBOUND_PLAINTEXT_PORT, MESH_SOCKET_MARK, OUTBOUND_PORT};

use crate::inpod::PodRecord;

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
    #[error("writing pod record {path}: {source}")]
    Record {
        path: String,
        source: std::io::Error,
    },
    #[error("ztunnel refused the pod: {0}")]
    Ztunnel(String),
    #[error("network namespace {path}: {source}")]
    Netns {
        path: String,
        source: std::io::Error,
    },
    #[error("iptables in the pod namespace failed: {0}")]
    Iptables(String),
    #[error("unsupported CNI_COMMAND {0:?}")]
    Command(String),
}

impl CniError {
    /// CNI error codes: 4 invalid config, 7 invalid env, 999 plugin-specific.
    pub fn code(&self) -> u32 {
        match self {
            CniError::Env(_) | CniError::Command(_) => 4,
            CniError::Config(_) | CniError::NoIp => 7,
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
    let record_path = conf
        .ztunnel
        .run_dir
        .join("pods")
        .join(format!("{}.json", sanitize(&env.container_id)));
    match env.command.as_str() {
        "ADD" => add(env, &conf, &record_path),
        "DEL" => {
            if !env.netns.is_empty() && Path::new(&env.netns).exists() {
                in_netns(&env.netns, remove_rules)??;
            }
            let _ = std::fs::remove_file(&record_path);
            let _ = nudge(&conf.ztunnel.run_dir);
            Ok(String::new())
        }
        "CHECK" => Ok(String::new()),
        other => Err(CniError::Command(other.to_string())),
    }
}

fn add(env: &CniEnv, conf: &NetConf, record_path: &Path) -> Result<String, CniError> {
    if env.netns.is_empty() {
        return Err(CniError::Env("CNI_NETNS"));
    }
    let prev = conf.prev_result.clone().unwrap_or(serde_json::Value::Null);
    let ips = pod_ips(&prev);
    if ips.is_empty() {
        return Err(CniError::NoIp);
    }
    let record = PodRecord {
        uid: env.container_id.clone(),
        name: env
            .arg("K8S_POD_NAME")
            .unwrap_or_else(|| env.container_id.clone()),
        namespace: env
            .arg("K8S_POD_NAMESPACE")
            .unwrap_or_else(|| "default".into()),
        netns: PathBuf::from(&env.netns),
        ips,
    };
    write_record(record_path, &record)?;
    if let Err(e) = nudge(&conf.ztunnel.run_dir) {
        if let CniError::Ztunnel(_) = e {
            let _ = std::fs::remove_file(record_path);
            return Err(e);
        }
        // ztunnel not running: it enrolls the pod from its record when it starts.
        eprintln!("mesh-cni: ztunnel not reachable ({e}); the pod is enrolled when it starts");
    }
    in_netns(&env.netns, install_rules)??;
    let mut result = prev;
    if let Some(obj) = result.as_object_mut() {
        obj.insert("cniVersion".into(), conf.cni_version.clone().into());
    }
    Ok(result.to_string())
}

fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn pod_ips(prev: &serde_json::Value) -> Vec<IpAddr> {
    prev.get("ips")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("address")?.as_str()?.split('/').next()?.parse().ok())
        .collect()
}

fn write_record(path: &Path, rec: &PodRecord) -> Result<(), CniError> {
    let err = |source| CniError::Record {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let body = serde_json::to_vec_pretty(rec).expect("a pod record always serializes");
    std::fs::write(&tmp, body).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Asks ztunnel to reconcile and waits for its answer.
fn nudge(run_dir: &Path) -> Result<(), CniError> {
    let unreachable = |e: std::io::Error| CniError::Record {
        path: run_dir.join("ztunnel.sock").display().to_string(),
        source: e,
    };
    let mut s = UnixStream::connect(run_dir.join("ztunnel.sock")).map_err(unreachable)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(unreachable)?;
    s.write_all(b"sync\n").map_err(unreachable)?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(unreachable)?;
    match line.trim() {
        "ok" => Ok(()),
        other => Err(CniError::Ztunnel(
            other.trim_start_matches("error: ").to_string(),
        )),
    }
}

fn in_netns<T>(path: &str, f: impl FnOnce() -> T) -> Result<T, CniError> {
    let ns = NetNs::open(path).map_err(|source| CniError::Netns {
        path: path.into(),
        source,
    })?;
    ns.run(f).map_err(|source| CniError::Netns {
        path: path.into(),
        source,
    })
}

/// The pod's redirection rules (nat table, our own chains so removal is exact).
pub fn rules() -> String {
    let mark = format!("{MESH_SOCKET_MARK:#x}/0xfff");
    format!(
        "*nat
:MESH_PRERT - [0:0]
:MESH_OUTPUT - [0:0]
-A PREROUTING -j MESH_PRERT
-A OUTPUT -j MESH_OUTPUT
-A MESH_PRERT -m mark --mark {mark} -j RETURN
-A MESH_PRERT -p tcp --dport {HBONE_PORT} -j RETURN
-A MESH_PRERT -p tcp ! -d 127.0.0.1/32 -j REDIRECT --to-ports {INBOUND_PLAINTEXT_PORT}
-A MESH_OUTPUT -m mark --mark {mark} -j RETURN
-A MESH_OUTPUT -o lo -j RETURN
-A MESH_OUTPUT -p tcp ! -d 127.0.0.1/32 -j REDIRECT --to-ports {OUTBOUND_PORT}
COMMIT
"
    )
}

fn install_rules() -> Result<(), CniError> {
    remove_rules()?;
    let mut child = Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::Iptables(format!("cannot run iptables-restore: {e}")))?;
    child
        .stdin
        .take()
        .expect("stdin was piped")
        .write_all(rules().as_bytes())
        .map_err(|e| CniError::Iptables(e.to_string()))?;
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::Iptables(e.to_string()))?;
    if !out.status.success() {
        return Err(CniError::Iptables(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(())
}

fn remove_rules() -> Result<(), CniError> {
    let ipt = |args: &[&str]| {
        Command::new("iptables")
            .args(["-w", "-t", "nat"])
            .args(args)
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .map_err(|e| CniError::Iptables(format!("cannot run iptables: {e}")))
    };
    while ipt(&["-D", "PREROUTING", "-j", "MESH_PRERT"])? {}
    while ipt(&["-D", "OUTPUT", "-j", "MESH_OUTPUT"])? {}
    for chain in ["MESH_PRERT", "MESH_OUTPUT"] {
        ipt(&["-F", chain])?;
        ipt(&["-X", chain])?;
    }
    Ok(())
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
    fn rules_skip_marked_and_hbone() {
        let r = rules();
        assert!(r.contains("--mark 0x539/0xfff -j RETURN"));
        assert!(r.contains("--dport 15008 -j RETURN"));
        assert!(r.contains("REDIRECT --to-ports 15006"));
        assert!(r.contains("REDIRECT --to-ports 15001"));
    }

    #[test]
    fn cni_args_parsed() {
        let env = CniEnv {
            command: "ADD".into(),
            container_id: "c".into(),
            netns: String::new(),
            args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-1".into(),
        };
        assert_eq!(env.arg("K8S_POD_NAME").as_deref(), Some("web-1"));
        assert_eq!(env.arg("K8S_POD_NAMESPACE").as_deref(), Some("prod"));
    }
}
