//! `meshctl proxy-config` and `meshctl logs-level` against the seed's running cluster: meshctl in a node's (and
//! the waypoint's) network namespace reads the real admin ports.

use std::process::Command;
use std::time::Duration;

use mesh_tests::http::{load, Req};
use mesh_tests::{bin, poll, require_netns};

/// `meshctl ARGS` run inside `netns`: exit success, stdout, stderr.
fn meshctl(netns: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(bin("meshctl").unwrap())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn table(netns: &str, args: &[&str]) -> String {
    let (ok, out, err) = meshctl(netns, args);
    assert!(ok, "meshctl {args:?}: {err}");
    out
}

/// The row of a table whose first cells are `first`.
fn row<'a>(table: &'a str, first: &[&str]) -> Option<Vec<&'a str>> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.starts_with(first))
}

#[test]
fn proxy_config_reads_what_each_proxy_holds() {
    require_netns!();
    let c = mesh_tests::seed::start().unwrap();
    let node1 = c.nodes[0].netns.clone();
    let waypoint = c.pod("waypoint").netns.clone();
    let sleep = c.pod("sleep");

    let workloads = table(&node1, &["proxy-config", "workloads"]);
    assert!(workloads.starts_with("NAMESPACE  NAME"), "{workloads}");
    let w = row(&workloads, &["default", "sleep"]).unwrap_or_else(|| panic!("{workloads}"));
    assert_eq!(w[2], sleep.ip.to_string());
    assert_eq!(w[3], "node1");

    let services = table(&node1, &["proxy-config", "services"]);
    let s = row(&services, &["default", "order-service"]).unwrap_or_else(|| panic!("{services}"));
    assert_eq!(s[2], "198.18.255.11");
    assert_eq!(s[3], "80->8090");
    assert!(
        s[4].ends_with(":15008"),
        "the waypoint's HBONE address: {services}"
    );

    let certs = table(&node1, &["proxy-config", "certs"]);
    assert!(
        row(&certs, &["spiffe://cluster.local/ns/default/sa/sleep"]).is_some(),
        "{certs}"
    );

    // JSON is the dump's own section.
    let (ok, json, _) = meshctl(&node1, &["proxy-config", "workloads", "-o", "json"]);
    let items: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        ok && items
            .as_array()
            .is_some_and(|a| a.iter().any(|w| w["name"] == "sleep"))
    );

    // A policy applied to the cluster shows on the node once pushed.
    c.apply(
        "deny.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-legacy, namespace: default}\nspec:\n  action: DENY\n  rules: [{from: [{source: {namespaces: [legacy]}}]}]\n",
    )
    .unwrap();
    poll("the policy on node1", Duration::from_secs(10), || {
        table(&node1, &["proxy-config", "policies"])
            .contains("deny-legacy")
            .then_some(())
    })
    .unwrap();

    // The waypoint: the seed's routes for order-service, and its clusters once traffic went through.
    mesh_tests::seed::wait_for_routes(&c).unwrap();
    let routes = table(&waypoint, &["proxy-config", "routes"]);
    // Route names hold spaces (`VirtualService default/order-service#0`): look at the whole line.
    let line = routes
        .lines()
        .find(|l| l.starts_with("default/order-service.default.svc.cluster.local "))
        .unwrap_or_else(|| panic!("{routes}"));
    assert!(
        line.contains("VirtualService default/order-service#1"),
        "{routes}"
    );
    assert!(line.contains("canary,stable"), "{routes}");
    let vip = mesh_tests::seed::ORDER_VIP.parse().unwrap();
    load(&sleep.netns, vip, 20, 2, |_| Req::get("/")).unwrap();
    let clusters = table(&waypoint, &["proxy-config", "clusters"]);
    assert!(
        row(
            &clusters,
            &["outbound|80|stable|order-service.default.svc.cluster.local"]
        )
        .is_some(),
        "{clusters}"
    );
    // What a process does not have is said, not printed empty.
    let (ok, _, err) = meshctl(&node1, &["proxy-config", "routes"]);
    assert!(!ok && err.contains("a waypoint has them"), "{err}");

    // The log level changes at runtime, and a bad filter is refused.
    let level = table(&node1, &["logs-level", "15000", "info,access=off"]);
    // The filter as the process now reads it (directives reordered by the parser).
    assert_eq!(level.trim(), "log filter: access=off,info");
    let (ok, _, err) = meshctl(&node1, &["logs-level", "15000", "info,[bad"]);
    assert!(!ok && err.contains("HTTP 400"), "{err}");
    table(&node1, &["logs-level", "15000", "info"]);

    // Nothing listening: one line saying so.
    let (ok, _, err) = meshctl(&node1, &["proxy-config", "workloads", "127.0.0.1:1"]);
    assert!(
        !ok && err.starts_with("error: cannot reach the admin port 127.0.0.1:1"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
}
