//! Security policy end to end: the seed's STRICT PeerAuthentication and L4 AuthorizationPolicy enforced by real
//! ztunnels, fed by the real control plane, between pods in network namespaces.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use mesh_tests::http::{request, Req};
use mesh_tests::net::{connect_in, exchange};
use mesh_tests::{poll, require_netns, Cluster, Mode, PodSpec};

const SEED_PA: &str = include_str!("../../model/tests/seed/peerauthentication-default.yaml");

fn metric(text: &str, name: &str, must: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && must.iter().all(|m| l.contains(m)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// True when the echo on `dst` answers from `netns` (a refused connection reads nothing or fails).
fn reaches(netns: &str, dst: SocketAddr) -> bool {
    exchange(netns, dst, b"ping").is_ok_and(|o| o == b"ping")
}

/// Polls until `check` gives the expected outcome: a policy takes a push to arrive, so a test waits for it,
/// and fails if it never comes.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    poll(what, Duration::from_secs(20), || check().then_some(())).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn seed_strict_refuses_plaintext_and_permissive_lets_it_in() {
    require_netns!();
    let c = Cluster::start_with(
        2,
        vec![
            PodSpec::mesh("orders", 1).in_namespace("production"),
            PodSpec::mesh("client", 0),
            PodSpec::plain("legacy", 0),
        ],
        Mode::ControlPlane,
    )
    .unwrap();
    let dst = SocketAddr::new(c.pod("orders").ip, 8080);
    let (client, legacy) = (c.pod("client").netns.clone(), c.pod("legacy").netns.clone());
    eventually("mesh traffic", || reaches(&client, dst));
    assert!(
        reaches(&legacy, dst),
        "PERMISSIVE by default: plaintext gets in"
    );

    c.apply("pa.yaml", SEED_PA).unwrap();
    eventually("STRICT to refuse plaintext", || !reaches(&legacy, dst));
    assert!(
        reaches(&client, dst),
        "mTLS (HBONE) still accepted under STRICT"
    );
    let m = c.metrics(1).unwrap();
    assert!(
        metric(
            &m,
            "mesh_authorization_denied_connections_total",
            &[
                "policy=\"production/converted_peer_authentication_strict\"",
                "transport=\"plaintext\""
            ]
        ) >= 1.0,
        "{m}"
    );

    c.apply("pa.yaml", &SEED_PA.replace("STRICT", "PERMISSIVE"))
        .unwrap();
    eventually("PERMISSIVE to let plaintext in", || reaches(&legacy, dst));
    // Metrics say which kind each accepted connection was.
    let m = c.metrics(1).unwrap();
    assert!(
        metric(
            &m,
            "istio_tcp_connections_opened_total",
            &["connection_security_policy=\"none\""]
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "istio_tcp_connections_opened_total",
            &["connection_security_policy=\"mutual_tls\""]
        ) >= 2.0,
        "{m}"
    );
}

/// server on node2; client-a (default) and client-b (namespace `other`) on node1.
fn authz_cluster() -> Cluster {
    Cluster::start_with(
        2,
        vec![
            PodSpec::mesh("server", 1),
            PodSpec::mesh("client-a", 0),
            PodSpec::mesh("client-b", 0).in_namespace("other"),
        ],
        Mode::ControlPlane,
    )
    .unwrap()
}

fn policy(action: &str, rules: &str) -> String {
    named_policy("server-policy", action, rules)
}

fn named_policy(name: &str, action: &str, rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: server}}}}\n  action: {action}\n{rules}"
    )
}

/// Polls until the server's ztunnel (node 2) holds exactly `key` of the server's policies: a row of a table
/// is judged only on its own policy, never on the previous row's.
fn wait_policy(c: &Cluster, key: &str) {
    poll(key, Duration::from_secs(20), || {
        let dump = c.config_dump(1).ok()?;
        let servers: Vec<&str> = dump["authorizationPolicies"]
            .as_array()?
            .iter()
            .filter_map(|v| v.as_str())
            .filter(|k| k.starts_with("default/server-policy"))
            .collect();
        (servers == [key]).then_some(())
    })
    .unwrap_or_else(|e| panic!("ztunnel never held only {key}: {e}"));
}

#[test]
fn l4_authorization_policy_table() {
    require_netns!();
    let c = authz_cluster();
    let server = c.pod("server").ip;
    let a_ip = c.pod("client-a").ip;
    let (a, b) = (
        c.pod("client-a").netns.clone(),
        c.pod("client-b").netns.clone(),
    );
    let (echo, whoami) = (SocketAddr::new(server, 8080), SocketAddr::new(server, 8081));
    let whoami_ok = |ns: &str| exchange(ns, whoami, b"").is_ok_and(|o| !o.is_empty());
    eventually("traffic without policy", || {
        reaches(&a, echo) && reaches(&b, echo)
    });

    // (name, action, rules, [client-a echo, client-b echo, client-a 8081])
    let table: Vec<(&str, &str, String, [bool; 3])> = vec![
        ("ALLOW principal", "ALLOW", "  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/client-a]}}]}]\n".into(), [true, false, true]),
        ("ALLOW principal by prefix", "ALLOW", "  rules: [{from: [{source: {principals: [\"cluster.local/ns/other/*\"]}}]}]\n".into(), [false, true, false]),
        ("ALLOW namespace", "ALLOW", "  rules: [{from: [{source: {namespaces: [other]}}]}]\n".into(), [false, true, false]),
        ("ALLOW port", "ALLOW", "  rules: [{to: [{operation: {ports: [\"8081\"]}}]}]\n".into(), [false, false, true]),
        ("DENY ipBlock", "DENY", format!("  rules: [{{from: [{{source: {{ipBlocks: [\"{a_ip}/32\"]}}}}]}}]\n"), [false, true, false]),
        ("DENY notNamespaces", "DENY", "  rules: [{from: [{source: {notNamespaces: [default]}}]}]\n".into(), [true, false, true]),
        ("DENY when destination.port", "DENY", "  rules: [{when: [{key: destination.port, values: [\"8081\"]}]}]\n".into(), [true, true, false]),
        // L7 attributes at L4 fail closed: the DENY applies regardless of the method, the ALLOW never matches.
        ("DENY with L7 method", "DENY", "  rules: [{from: [{source: {namespaces: [other]}}], to: [{operation: {methods: [GET]}}]}]\n".into(), [true, false, true]),
        ("ALLOW with L7 path", "ALLOW", "  rules: [{to: [{operation: {paths: [/public]}}]}]\n".into(), [false, false, false]),
        ("ALLOW with no rules denies all", "ALLOW", String::new(), [false, false, false]),
        ("ALLOW rules: [{}] allows all", "ALLOW", "  rules: [{}]\n".into(), [true, true, true]),
    ];
    for (i, (name, action, rules, [want_a, want_b, want_a_8081])) in table.into_iter().enumerate() {
        // A new name per row replaces the previous row's policy (same file), and says when this one arrived.
        let policy_name = format!("server-policy-{i}");
        c.apply("authz.yaml", &named_policy(&policy_name, action, &rules))
            .unwrap();
        wait_policy(&c, &format!("default/{policy_name}"));
        // The policy is in force: every new connection is judged by it, no polling needed.
        assert_eq!(
            [reaches(&a, echo), reaches(&b, echo), whoami_ok(&a)],
            [want_a, want_b, want_a_8081],
            "{name}: [client-a echo, client-b echo, client-a 8081]"
        );
    }
    let m = c.metrics(1).unwrap();
    assert!(
        metric(
            &m,
            "mesh_authorization_denied_connections_total",
            &[
                "policy=\"default/server-policy-",
                "reason=\"denied_by_policy\""
            ]
        ) >= 1.0
            && metric(
                &m,
                "mesh_authorization_denied_connections_total",
                &[
                    "policy=\"default/server-policy-",
                    "reason=\"no_allow_policy_matched\""
                ]
            ) >= 1.0,
        "{m}"
    );
}

#[test]
fn a_policy_change_closes_established_connections_it_denies() {
    require_netns!();
    let c = authz_cluster();
    let echo = SocketAddr::new(c.pod("server").ip, 8080);
    let a = c.pod("client-a").netns.clone();
    eventually("traffic", || reaches(&a, echo));
    let mut s = connect_in(&a, echo, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"before").unwrap();
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"before");
    c.apply(
        "authz.yaml",
        &policy(
            "DENY",
            "  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/client-a]}}]}]\n",
        ),
    )
    .unwrap();
    // The open connection is closed by ztunnel once the policy arrives: the read ends.
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(0) => {}
        Err(e)
            if !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("the connection must be closed by the new policy, got {other:?} {rest:?}"),
    }
    let m = c.metrics(1).unwrap();
    assert!(
        metric(
            &m,
            "mesh_authorization_denied_connections_total",
            &["established=\"true\""]
        ) >= 1.0,
        "{m}"
    );
    assert!(!reaches(&a, echo), "and new ones are refused");
}

const SHOP_VIP: &str = "198.18.255.50";

/// `shop` (HTTP on 80, echo on 81) in a namespace whose waypoint is `waypoint`; `client` in it, `intruder` in
/// namespace `other`.
fn shop_behind_a_waypoint() -> Cluster {
    let mut c = Cluster::start_with(
        2,
        vec![
            PodSpec::mesh("client", 0),
            PodSpec::mesh("intruder", 0).in_namespace("other"),
            PodSpec::mesh("shop", 1).with_labels(&[("app", "shop")]),
            PodSpec::waypoint("waypoint", 1),
        ],
        Mode::ControlPlane,
    )
    .unwrap();
    c.namespace_labels
        .push(("istio.io/use-waypoint".into(), "waypoint".into()));
    c.start_waypoint("waypoint").unwrap();
    c.add_service_spec(serde_json::json!({
        "name": "shop", "namespace": "default", "vip": SHOP_VIP, "selector": {"app": "shop"},
        "ports": [{"port": 80, "targetPort": 8090}, {"port": 81, "targetPort": 8080}],
    }))
    .unwrap();
    c
}

#[test]
fn a_waypoint_bypass_is_refused_when_policy_requires_the_waypoint() {
    require_netns!();
    let c = shop_behind_a_waypoint();
    let client = c.pod("client").netns.clone();
    let via_waypoint: SocketAddr = format!("{SHOP_VIP}:81").parse().unwrap();
    let direct = SocketAddr::new(c.pod("shop").ip, 8080);
    eventually("traffic both ways", || {
        reaches(&client, via_waypoint) && reaches(&client, direct)
    });
    // Istio's pattern: the pods accept only their waypoint.
    c.apply(
        "authz.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: only-waypoint, namespace: default}\nspec:\n  selector: {matchLabels: {app: shop}}\n  action: ALLOW\n  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/waypoint]}}]}]\n",
    )
    .unwrap();
    eventually("the direct path refused", || !reaches(&client, direct));
    assert!(
        reaches(&client, via_waypoint),
        "through the waypoint still works"
    );
}

fn waypoint_policy(target: &str, action: &str, rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: l7, namespace: default}}\nspec:\n  targetRefs: [{target}]\n  action: {action}\n{rules}"
    )
}

#[test]
fn l7_authorization_policy_table_at_the_waypoint() {
    require_netns!();
    let c = shop_behind_a_waypoint();
    let vip: SocketAddr = format!("{SHOP_VIP}:80").parse().unwrap();
    let (client, intruder) = (
        c.pod("client").netns.clone(),
        c.pod("intruder").netns.clone(),
    );
    let status = |ns: &str, req: Req| request(ns, vip, req).map(|r| r.status).unwrap_or(0);
    eventually("routed", || status(&client, Req::get("/")) == 200);

    let gateway = "{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}";
    let service = "{kind: Service, group: \"\", name: shop}";
    // (name, target, action, rules, [(from intruder?, request, expected status)])
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        Vec<(bool, Req, u16)>,
    );
    let table: Vec<Case> = vec![
        ("ALLOW GET on /public*", gateway, "ALLOW", "  rules: [{to: [{operation: {methods: [GET], paths: [\"/public*\"]}}]}]\n",
            vec![(false, Req::get("/public/a"), 200), (false, Req::get("/private"), 403), (false, Req::post("/public/a"), 403)]),
        ("DENY a header value", service, "DENY", "  rules: [{when: [{key: \"request.headers[x-user]\", values: [mallory]}]}]\n",
            vec![(false, Req::get("/").header("x-user", "mallory"), 403), (false, Req::get("/").header("x-user", "alice"), 200), (false, Req::get("/"), 200)]),
        ("ALLOW a principal", gateway, "ALLOW", "  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]}]\n",
            vec![(false, Req::get("/"), 200), (true, Req::get("/"), 403)]),
        ("DENY a namespace on a path", service, "DENY", "  rules: [{from: [{source: {namespaces: [other]}}], to: [{operation: {notPaths: [/health]}}]}]\n",
            vec![(true, Req::get("/orders"), 403), (true, Req::get("/health"), 200), (false, Req::get("/orders"), 200)]),
    ];
    for (name, target, action, rules, cases) in table {
        c.apply("l7-authz.yaml", &waypoint_policy(target, action, rules))
            .unwrap();
        eventually(name, || {
            cases.iter().all(|(from_intruder, req, want)| {
                let ns = if *from_intruder { &intruder } else { &client };
                status(ns, req.clone()) == *want
            })
        });
    }
    let r = request(&intruder, vip, Req::get("/orders")).unwrap();
    assert_eq!((r.status, r.body.as_str()), (403, "RBAC: access denied"));
    let m = c.waypoint_metrics("waypoint").unwrap();
    assert!(
        metric(
            &m,
            "mesh_authorization_denied_requests_total",
            &["policy=\"default/l7\"", "reason=\"denied_by_policy\""]
        ) >= 1.0,
        "{m}"
    );
}
