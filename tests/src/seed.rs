//! The seed's cluster, as `mesh-local` runs it and the tests that need the user's own manifests at work: the
//! control plane in file mode, two nodes, mesh pods `sleep`, `echo-v1`, `echo-v2` behind `echo`
//! (198.18.255.10:80), a non-mesh pod `legacy`, and `order-service` (v1, v2; 198.18.255.11:80) behind a waypoint
//! that applies the seed's VirtualService and DestinationRule, unchanged.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::http::{request, Reply, Req};
use crate::net::exchange;
use crate::{poll, Cluster, Mode, PodSpec};

pub const ECHO_VIP: &str = "198.18.255.10:80";
pub const ORDER_VIP: &str = "198.18.255.11:80";

fn pod(name: &str, node: usize, app: &str, version: &str) -> PodSpec {
    PodSpec {
        labels: vec![
            ("app".into(), app.into()),
            ("version".into(), version.into()),
        ],
        ..PodSpec::mesh(name, node)
    }
}

/// Starts the cluster and waits until the echo service answers and the control plane holds the seed.
pub fn start() -> Result<Cluster> {
    let mut c = Cluster::start_with(
        2,
        vec![
            pod("sleep", 0, "sleep", "v1"),
            pod("echo-v1", 0, "echo", "v1"),
            pod("echo-v2", 1, "echo", "v2"),
            pod("order-v1", 0, "order-service", "v1"),
            pod("order-v2", 1, "order-service", "v2"),
            PodSpec::plain("legacy", 1),
            PodSpec::waypoint("waypoint", 1),
        ],
        Mode::ControlPlane,
    )?;
    c.start_waypoint("waypoint")?;
    c.add_service("echo", "198.18.255.10", 80, 8081, "echo")?;
    // `istio.io/use-waypoint` on the Service: its traffic goes through the waypoint, which speaks HTTP (8090).
    c.add_service_spec(serde_json::json!({
        "name": "order-service", "namespace": "default", "vip": "198.18.255.11",
        "labels": {"istio.io/use-waypoint": "waypoint"},
        "ports": [{"port": 80, "targetPort": 8090}], "selector": {"app": "order-service"},
    }))?;
    manifests(&c)?;
    let vip: SocketAddr = ECHO_VIP.parse()?;
    let sleep = c.pod("sleep").netns.clone();
    poll("the echo service", Duration::from_secs(10), || {
        exchange(&sleep, vip, b"").ok().filter(|o| !o.is_empty())
    })?;
    poll(
        "the control plane to load the seed",
        Duration::from_secs(10),
        || {
            let (_, dump) = c.control_get("/debug/config_dump").ok()?;
            (dump.contains("\"TrafficSplit\"") && dump.contains("order-service-canary"))
                .then_some(())
        },
    )?;
    Ok(c)
}

/// A reply the waypoint routed to a version (which answers with `x-version`).
pub fn routed(r: &Reply) -> bool {
    r.status == 200 && !r.header("x-version").is_empty()
}

/// Waits until the waypoint routes order-service.
pub fn wait_for_routes(c: &Cluster) -> Result<()> {
    let sleep = c.pod("sleep").netns.clone();
    let vip: SocketAddr = ORDER_VIP.parse()?;
    poll(
        "the waypoint to route order-service",
        Duration::from_secs(20),
        || request(&sleep, vip, Req::get("/")).ok().filter(routed),
    )?;
    Ok(())
}

/// The user's own manifests (the seed), unchanged, plus the two Services its TrafficSplit names.
fn manifests(c: &Cluster) -> Result<()> {
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/seed");
    for entry in std::fs::read_dir(&seed).with_context(|| format!("reading {}", seed.display()))? {
        let path = entry?.path();
        let name = path.file_name().context("seed file name")?;
        std::fs::copy(&path, c.config_dir().join(name))?;
    }
    let svc = |name: &str, vip: &str, version: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{clusterIP: {vip}, selector: {{app: order-service, version: {version}}}, ports: [{{port: 80, targetPort: 8090}}]}}\n"
        )
    };
    let body = [
        svc("order-service-stable", "198.18.255.12", "v1"),
        svc("order-service-canary", "198.18.255.13", "v2"),
    ]
    .join("---\n");
    std::fs::write(c.config_dir().join("order-backends.yaml"), body)?;
    Ok(())
}
