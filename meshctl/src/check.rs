//! `meshctl check`: pre-flight on a node before installing the mesh there (Linkerd's `linkerd check --pre`, for
//! what ztunnel and the CNI plugin need). Each check prints one line: what was checked and, when it fails, what
//! to do. Exit code 0 when all pass, 1 when any fails.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;

/// ztunnel's and the waypoint's ports (Istio's): captured outbound, inbound plaintext, HBONE, admin, metrics,
/// readiness.
pub const PORTS: [u16; 6] = [15001, 15006, 15008, 15000, 15020, 15021];

/// The oldest kernel whose netfilter and network namespaces ztunnel's in-pod mode relies on (Istio's ambient
/// minimum).
const MIN_KERNEL: (u32, u32) = (5, 4);

#[derive(Debug, PartialEq, Eq)]
pub struct Finding {
    pub check: &'static str,
    /// None when it passed; else what is wrong and what to do.
    pub problem: Option<String>,
    pub detail: String,
}

/// Where to look: the host's CNI directories.
pub struct Node {
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
}

pub fn run(node: &Node) -> Vec<Finding> {
    vec![
        kernel(&read_release()),
        iptables(),
        cni_config(&node.cni_conf_dir),
        cni_bin(&node.cni_bin_dir),
        ports(&PORTS),
    ]
}

fn read_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

pub fn kernel(release: &str) -> Finding {
    let version: Vec<u32> = release
        .split(|c: char| !c.is_ascii_digit())
        .take(2)
        .filter_map(|p| p.parse().ok())
        .collect();
    let problem = match version.as_slice() {
        [major, minor] if (*major, *minor) >= MIN_KERNEL => None,
        [_, _] => Some(format!(
            "kernel {release} is older than {}.{}: upgrade the node's kernel",
            MIN_KERNEL.0, MIN_KERNEL.1
        )),
        _ => Some(format!(
            "cannot read the kernel version ({release:?}): is /proc mounted?"
        )),
    };
    Finding {
        check: "kernel",
        problem,
        detail: release.to_string(),
    }
}

fn iptables() -> Finding {
    let out = Command::new("iptables").arg("--version").output();
    let (problem, detail) = match out {
        Ok(o) if o.status.success() => (None, String::from_utf8_lossy(&o.stdout).trim().to_string()),
        Ok(o) => (
            Some(format!(
                "iptables --version failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            String::new(),
        ),
        Err(e) => (
            Some(format!(
                "iptables not found ({e}): install it (Debian: apt-get install iptables); mesh-cni runs it in each pod"
            )),
            String::new(),
        ),
    };
    Finding {
        check: "iptables",
        problem,
        detail,
    }
}

pub fn cni_config(dir: &Path) -> Finding {
    let configs: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            let mut v: Vec<String> = rd
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| {
                    !n.starts_with('.')
                        && (n.ends_with(".conflist")
                            || n.ends_with(".conf")
                            || n.ends_with(".json"))
                })
                .collect();
            v.sort();
            v
        })
        .unwrap_or_default();
    let problem = if !dir.is_dir() {
        Some(format!(
            "{} does not exist: install the cluster's network plugin first, or pass --cni-conf-dir",
            dir.display()
        ))
    } else if configs.is_empty() {
        Some(format!(
            "no CNI network config in {}: mesh-cni chains onto the cluster's network plugin, which has none here yet",
            dir.display()
        ))
    } else {
        None
    };
    Finding {
        check: "CNI config",
        problem,
        detail: configs.first().cloned().unwrap_or_default(),
    }
}

pub fn cni_bin(dir: &Path) -> Finding {
    let writable =
        dir.is_dir() && std::fs::metadata(dir).is_ok_and(|m| !m.permissions().readonly());
    Finding {
        check: "CNI bin dir",
        problem: (!writable).then(|| {
            format!(
                "{} is missing or read-only: the cni chart installs mesh-cni there (pass --cni-bin-dir if it is elsewhere)",
                dir.display()
            )
        }),
        detail: dir.display().to_string(),
    }
}

pub fn ports(ports: &[u16]) -> Finding {
    let busy: Vec<String> = ports
        .iter()
        .filter(|p| TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, **p))).is_err())
        .map(ToString::to_string)
        .collect();
    Finding {
        check: "ports",
        problem: (!busy.is_empty()).then(|| {
            format!(
                "in use: {}: another mesh (Istio's ztunnel?) or process holds them; stop it first (`ss -ltnp` shows which)",
                busy.join(", ")
            )
        }),
        detail: ports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert!(kernel("6.1.0-18-amd64").problem.is_none());
        assert!(kernel("5.4.0").problem.is_none());
        let old = kernel("4.19.0-25-amd64");
        assert!(
            old.problem
                .as_deref()
                .is_some_and(|p| p.contains("upgrade")),
            "{old:?}"
        );
        assert!(kernel("").problem.is_some());
    }

    #[test]
    fn a_busy_port_is_named() {
        let held = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = held.local_addr().unwrap().port();
        let f = ports(&[port]);
        assert!(
            f.problem
                .as_deref()
                .is_some_and(|p| p.contains(&port.to_string())),
            "{f:?}"
        );
        drop(held);
        assert!(ports(&[port]).problem.is_none());
    }

    #[test]
    fn cni_config_needs_a_network_config() {
        let dir = std::env::temp_dir().join(format!("meshctl-check-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(cni_config(&dir).problem.unwrap().contains("does not exist"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(".hidden.conflist"), "{}").unwrap();
        assert!(cni_config(&dir)
            .problem
            .unwrap()
            .contains("no CNI network config"));
        std::fs::write(dir.join("10-bridge.conflist"), "{}").unwrap();
        let ok = cni_config(&dir);
        assert_eq!(
            (ok.problem, ok.detail.as_str()),
            (None, "10-bridge.conflist")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
