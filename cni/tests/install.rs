//! `mesh-cni-agent --install` as the cni chart's DaemonSet runs it: installs and chains the plugin, chains it again when
//! another agent rewrites the node's CNI config, and on SIGTERM leaves the config byte-identical and exits 0.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CONFLIST: &str = "{\"cniVersion\": \"1.0.0\", \"name\": \"k8s-pod-network\", \"plugins\": [{\"type\": \"bridge\", \"bridge\": \"cni0\"}]}\n";

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn chained(conf: &Path) -> bool {
    std::fs::read_to_string(conf).is_ok_and(|s| s.contains("\"mesh-cni\""))
}

#[test]
fn installs_keeps_chained_and_removes_itself_on_sigterm() {
    let root = std::env::temp_dir().join(format!("mesh-cni-install-bin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (bin, net) = (root.join("bin"), root.join("net.d"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&net).unwrap();
    let conf = net.join("10-bridge.conflist");
    std::fs::write(&conf, CONFLIST).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-cni-agent"))
        .env("MESH_CNI_INSTALL", "true")
        .env("ZTUNNEL_RUN_DIR", root.join("run"))
        .env("MESH_CNI_PLUGIN", env!("CARGO_BIN_EXE_mesh-cni"))
        .env("MESH_CNI_BIN_DIR", &bin)
        .env("MESH_CNI_CONF_DIR", &net)
        .env("MESH_CNI_CHECK_INTERVAL", "100ms")
        .stderr(Stdio::null())
        .spawn()
        .expect("the installer starts");
    wait_for("the plugin to be chained", || chained(&conf));
    assert!(bin.join("mesh-cni").exists());
    // The cluster's network plugin rewrites its config (an upgrade): chained again.
    std::fs::write(&conf, CONFLIST).unwrap();
    wait_for("the plugin to be chained again", || chained(&conf));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        CONFLIST,
        "byte-identical"
    );
    assert!(!bin.join("mesh-cni").exists());
    let left: Vec<_> = std::fs::read_dir(&net)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    let _ = std::fs::remove_dir_all(&root);
}
