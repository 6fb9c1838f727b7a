//! The node agent in Kubernetes mode, as the cni chart runs it: the real `mesh-cni-agent` process with kube-rs'
//! client pointed at a mock API server (real HTTP), real pods (network namespaces with a running app), a real
//! ztunnel fed over ZDS. Labelling the namespace enrolls a pod that is already running; `none` on the pod and
//! removing the namespace label release it; a restarted agent changes nothing and enrolls nothing twice; the CNI
//! plugin agrees with the labels at pod creation.
//!
//! One test in this binary on purpose: the agent finds a running pod's namespace by its IP among all the host's
//! namespaces, and clusters of other tests running beside it would reuse the same test addresses.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mesh_tests::kube_api::MockApi;
use mesh_tests::net::{connect_in, contains, exchange};
use mesh_tests::{bin, poll, require_netns, Cluster, PodSpec};
use serde_json::json;

const MARKER: &[u8] = b"MARKER-node-agent-5d1e-plaintext";

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(c: &Cluster, kubeconfig: &Path) -> Agent {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(c.dir.join("kube-agent.log"))
        .unwrap();
    let run_dir = &c.nodes[0].run_dir;
    let child = Command::new(bin("mesh-cni-agent").unwrap())
        .args(["--mode", "kubernetes", "--node-name", "node1", "--run-dir"])
        .arg(run_dir)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let sock = run_dir.join("mesh-cni.sock");
    poll("kube agent to listen", Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(&sock).ok()
    })
    .unwrap();
    Agent(child)
}

fn namespace(labels: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default", "labels": labels}})
}

fn pod(c: &Cluster, name: &str, labels: serde_json::Value) -> serde_json::Value {
    let p = c.pod(name);
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": p.spec.namespace, "uid": p.uid(), "labels": labels},
        "spec": {"nodeName": format!("node{}", p.spec.node + 1), "serviceAccountName": name, "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running", "podIP": p.ip.to_string()}})
}

fn enrolled_in_ztunnel(c: &Cluster, name: &str) -> bool {
    c.config_dump(0).ok().is_some_and(|d| {
        d["pods"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["name"] == name))
    })
}

fn has_rules(c: &Cluster, name: &str) -> bool {
    let rules = mesh_tests::sh(
        "ip",
        &[
            "netns",
            "exec",
            &c.pod(name).netns,
            "iptables",
            "-t",
            "nat",
            "-S",
        ],
    )
    .unwrap();
    rules.contains("MESH_OUTPUT")
}

/// Sends the marker from the client to the server; whether it crossed the node link in plaintext.
fn plaintext(c: &Cluster) -> bool {
    let cap = c.capture().unwrap();
    let dst = SocketAddr::new(c.pod("server").ip, 8080);
    assert_eq!(
        exchange(&c.pod("client").netns, dst, MARKER).unwrap(),
        MARKER
    );
    contains(&cap.finish().unwrap(), MARKER)
}

fn mtls_from_client(c: &Cluster) -> f64 {
    let m = c.metrics(1).unwrap();
    m.lines()
        .filter(|l| {
            l.starts_with("istio_tcp_connections_opened_total")
                && l.contains("source_workload=\"client\"")
                && l.contains("connection_security_policy=\"mutual_tls\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn labels_enroll_and_release_running_pods() {
    require_netns!();
    // The neighbour, in another (labelled) namespace on the same node, keeps one connection open throughout.
    let neighbour = PodSpec {
        namespace: "other".into(),
        ..PodSpec::mesh("neighbour", 0)
    };
    let mut c = Cluster::start(
        2,
        vec![
            PodSpec::mesh("client", 0),
            neighbour,
            PodSpec::mesh("server", 1),
        ],
    )
    .unwrap();
    let mut held = connect_in(
        &c.pod("neighbour").netns,
        SocketAddr::new(c.pod("server").ip, 8080),
        Duration::from_secs(5),
    )
    .unwrap();
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let echo = |s: &mut std::net::TcpStream, msg: &[u8]| {
        s.write_all(msg).unwrap();
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(buf, msg);
    };
    echo(&mut held, b"first");
    // The client runs outside the mesh, and node1's local agent makes way for one in Kubernetes mode.
    c.unenroll(c.pod_index("client")).unwrap();
    c.signal_agent(0, nix::sys::signal::Signal::SIGTERM)
        .unwrap()
        .wait()
        .unwrap();
    let api = MockApi::start().unwrap();
    api.apply(namespace(json!({})));
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "other", "labels": {"istio.io/dataplane-mode": "ambient"}}}));
    api.apply(pod(&c, "client", json!({"app": "client"})));
    api.apply(pod(&c, "neighbour", json!({"app": "neighbour"})));
    let kubeconfig = api.kubeconfig(&c.dir).unwrap();
    let mut agent = start_agent(&c, &kubeconfig);

    // Unlabelled namespace: the running pod stays out, and the CNI plugin agrees at (re)creation.
    c.enroll(c.pod_index("client")).unwrap();
    assert!(
        !has_rules(&c, "client"),
        "a pod of an unlabelled namespace is not captured at ADD"
    );
    assert!(plaintext(&c));
    assert!(!enrolled_in_ztunnel(&c, "client"));

    // Label the namespace: the running pod is enrolled without a restart; its next connection is mTLS HBONE.
    api.apply(namespace(json!({"istio.io/dataplane-mode": "ambient"})));
    poll(
        "running pod enrolled by label",
        Duration::from_secs(20),
        || enrolled_in_ztunnel(&c, "client").then_some(()),
    )
    .unwrap();
    assert!(has_rules(&c, "client"));
    let before = mtls_from_client(&c);
    assert!(
        !plaintext(&c),
        "the labelled pod's traffic must be tunnelled"
    );
    poll("mutual_tls metric", Duration::from_secs(5), || {
        (mtls_from_client(&c) > before).then_some(())
    })
    .unwrap();

    // Restart the agent: same state, nothing enrolled twice (ztunnel keeps the pod; the agent keeps its record).
    let zt_before = c.ztunnel_log(0).len();
    drop(agent);
    agent = start_agent(&c, &kubeconfig);
    poll(
        "ztunnel to reconnect to the new agent",
        Duration::from_secs(20),
        || (count(&c.ztunnel_log(0), "connected to the node agent") >= 3).then_some(()),
    )
    .unwrap();
    assert!(!plaintext(&c));
    let agent_log = std::fs::read_to_string(c.dir.join("kube-agent.log")).unwrap();
    // The client only: the neighbour was enrolled by the plugin before, and kept from the agent's records.
    assert_eq!(count(&agent_log, "pod enrolled"), 1, "{agent_log}");
    let zt_log = c.ztunnel_log(0);
    assert_eq!(
        count(&zt_log[zt_before..], "pod enrolled"),
        0,
        "ztunnel enrolled a pod again after the agent restarted:\n{zt_log}"
    );

    // `none` on the pod: released, plaintext again.
    api.apply(pod(
        &c,
        "client",
        json!({"app": "client", "istio.io/dataplane-mode": "none"}),
    ));
    poll(
        "pod released by its none label",
        Duration::from_secs(20),
        || (!enrolled_in_ztunnel(&c, "client")).then_some(()),
    )
    .unwrap();
    assert!(!has_rules(&c, "client"));
    assert!(plaintext(&c));

    // Back in; then unlabel the namespace: released again.
    api.apply(pod(&c, "client", json!({"app": "client"})));
    poll("pod enrolled again", Duration::from_secs(20), || {
        enrolled_in_ztunnel(&c, "client").then_some(())
    })
    .unwrap();
    assert!(!plaintext(&c));
    api.apply(namespace(json!({})));
    poll(
        "pod released with its namespace's label",
        Duration::from_secs(20),
        || (!enrolled_in_ztunnel(&c, "client")).then_some(()),
    )
    .unwrap();
    assert!(!has_rules(&c, "client"));
    assert!(plaintext(&c));
    // Through all of it, the neighbour's connection was never reset, and ztunnel still serves it.
    echo(&mut held, b"still-open");
    assert!(enrolled_in_ztunnel(&c, "neighbour"));
    drop(agent);
}
