//! The mesh page of the control plane (`/dashboard`, `/api/mesh` on 15014) against the seed's running cluster:
//! the proxies it serves with their acknowledged config versions, the workloads, services, waypoints and
//! policies, and the live service graph it reads from the proxies' own metrics (no Prometheus); then the page in
//! Debian's headless Chromium: it loads with no console message and shows the services and edges the traffic
//! made. Its screenshot is kept at `target/artifacts/mesh-page.png`.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh_tests::control::CONTROL_IP;
use mesh_tests::net::{exchange, whoami};
use mesh_tests::{http_get, poll, require_netns, seed};
use serde_json::Value;

fn api(c: &mesh_tests::Cluster) -> Value {
    let (status, body) =
        http_get(&c.underlay, &format!("{CONTROL_IP}:15014"), "/api/mesh").unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn edge<'a>(mesh: &'a Value, src: &str, dst: &str, protocol: &str) -> Option<&'a Value> {
    mesh["edges"].as_array()?.iter().find(|e| {
        e["source"] == format!("default/{src}")
            && e["destination"] == format!("default/{dst}")
            && e["protocol"] == protocol
    })
}

#[test]
fn the_mesh_page_shows_the_cluster_and_its_live_graph() {
    require_netns!();
    let c = seed::start().unwrap();
    seed::wait_for_routes(&c).unwrap();
    let sleep = c.pod("sleep").netns.clone();
    // L4 edges: mTLS to echo, plaintext to the pod outside the mesh.
    exchange(&sleep, seed::ECHO_VIP.parse().unwrap(), b"").unwrap();
    whoami(&sleep, c.pod("legacy").ip).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = mesh_tests::live::traffic(&c, stop.clone()).unwrap();

    api(&c); // looking at the page starts the scraping
    let mesh = poll(
        "a live http edge on the page",
        Duration::from_secs(30),
        || {
            let mesh = api(&c);
            let rate = edge(&mesh, "sleep", "order-service", "http")?["rate"].as_f64()?;
            (rate > 0.0).then_some(mesh)
        },
    )
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();

    let http = edge(&mesh, "sleep", "order-service", "http").unwrap();
    assert_eq!(http["mtls"], true);
    assert!(http["p99Ms"].as_u64().is_some(), "{http}");
    assert_eq!(
        edge(&mesh, "sleep", "echo-v1", "tcp")
            .or(edge(&mesh, "sleep", "echo-v2", "tcp"))
            .unwrap()["mtls"],
        true
    );
    assert_eq!(
        edge(&mesh, "sleep", "legacy", "tcp").unwrap()["mtls"],
        false,
        "{mesh}"
    );
    let proxies = mesh["proxies"].as_array().unwrap();
    let kinds: Vec<&str> = proxies.iter().filter_map(|p| p["kind"].as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "ztunnel").count(),
        2,
        "{proxies:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "waypoint").count(),
        1,
        "{proxies:?}"
    );
    assert!(
        proxies
            .iter()
            .all(|p| p["ackedVersion"] == mesh["configVersion"]),
        "{proxies:?}"
    );
    let sleep_w = mesh["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "sleep")
        .unwrap();
    assert_eq!(
        sleep_w["identity"],
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
    assert_eq!(sleep_w["node"], "node1");
    let order = mesh["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "order-service")
        .unwrap();
    assert_eq!(order["waypoint"], "default/waypoint");
    assert!(mesh["policies"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["kind"] == "PeerAuthentication"));

    // The page in a real browser, run where the control plane is reachable.
    if Command::new("chromium").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the browser test: chromium is missing"
        );
        eprintln!("SKIPPED (browser part): chromium not installed (scripts/deps.sh installs it)");
        return;
    }
    let url = format!("http://{CONTROL_IP}:15014/dashboard");
    let chromium = |extra: &[&str]| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &c.underlay,
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
            ])
            .args([
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .args(["--virtual-time-budget=6000", "--window-size=1300,1400"])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap()
    };
    let out = chromium(&["--dump-dom"]);
    let dom = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    for shown in [
        "<td>default/order-service</td>",
        "<td>http</td>",
        "<td>plaintext</td>",
        "<td>spiffe://cluster.local/ns/default/sa/sleep</td>",
        "3 proxies connected",
    ] {
        assert!(
            dom.contains(shown),
            "the page does not show {shown:?}:\n{dom}"
        );
    }
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("mesh-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = chromium(&[&format!("--screenshot={}", shot.display())]);
    assert!(
        out.status.success() && shot.exists(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("mesh page screenshot: {}", shot.display());
}
