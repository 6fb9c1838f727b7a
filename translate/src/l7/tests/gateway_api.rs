//! HTTPRoute and GRPCRoute translation: precedence, path encoding, filters, gRPC methods.

use std::collections::BTreeMap;

use mesh_proto::mesh::l7::v1 as pb;

use super::{exact, prefix, regex, service, set_of, uris, API, SHOP, WEB};
use crate::l7::translate;

fn route_yaml(name: &str, ns: &str, parent: &str, rules: &str) -> String {
    format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  parentRefs: [{parent}]\n  rules:\n{rules}---\n")
}

#[test]
fn http_route_matches_ranked_by_gateway_api_precedence() {
    let web = "{group: \"\", kind: Service, name: web}";
    let to = |backend: &str| format!("    backendRefs: [{{name: {backend}, port: 80}}]\n");
    let set = set_of(&format!(
        "{SHOP}{}{}{}",
        route_yaml(
            "b",
            "shop",
            web,
            &format!(
                "  - matches:\n    - path: {{type: PathPrefix, value: /}}\n    - path: {{type: PathPrefix, value: /a}}\n      headers: [{{name: x-1, value: \"1\"}}, {{name: x-2, value: \"2\"}}]\n{}  - matches:\n    - path: {{type: PathPrefix, value: /abc/}}\n{}  - matches:\n    - path: {{type: PathPrefix, value: /a}}\n      method: GET\n{}  - matches:\n    - path: {{type: Exact, value: /x}}\n{}",
                to("b0"), to("b1"), to("b2"), to("b3")
            ),
        ),
        route_yaml(
            "a",
            "shop",
            web,
            &format!(
                "  - matches:\n    - path: {{type: PathPrefix, value: /a}}\n      queryParams: [{{name: q, value: \"1\"}}]\n{}  - matches:\n    - path: {{type: PathPrefix, value: /a}}\n      method: GET\n{}  - matches:\n    - path: {{type: RegularExpression, value: \"/a.*/b\"}}\n{}",
                to("a0"), to("a1"), to("a2")
            ),
        ),
        // A consumer route: from namespace `other`, for `other`'s clients; it ranks first.
        route_yaml("c", "other", "{kind: Service, group: \"\", name: web, namespace: shop}", &format!("  - matches: [{{path: {{type: PathPrefix, value: /}}}}]\n{}", to("c0"))),
    ));
    let svc = service(&translate(&set), WEB);
    assert_eq!(
        svc.sources,
        ["HTTPRoute other/c", "HTTPRoute shop/a", "HTTPRoute shop/b"]
    );
    let order: Vec<(String, String)> = svc
        .routes
        .iter()
        .map(|r| {
            let backend = r.destinations[0]
                .destination
                .as_ref()
                .expect("destination")
                .service
                .clone();
            (
                r.name.clone(),
                backend.split('.').next().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let expected = [
        ("HTTPRoute other/c#0", "other/c0"),
        ("HTTPRoute shop/b#3", "shop/b3"), // Exact
        ("HTTPRoute shop/b#1", "shop/b1"), // longest prefix (/abc)
        ("HTTPRoute shop/a#1", "shop/a1"), // /a with a method; route a is older than b
        ("HTTPRoute shop/b#2", "shop/b2"), // /a with a method, route b
        ("HTTPRoute shop/b#0", "shop/b0"), // /a with two headers
        ("HTTPRoute shop/a#0", "shop/a0"), // /a with a query parameter
        ("HTTPRoute shop/b#0", "shop/b0"), // prefix /
        ("HTTPRoute shop/a#2", "shop/a2"), // regex ranks below every prefix
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(order, expected);
    let consumer = &svc.routes[0].matches[0];
    assert_eq!(consumer.source_namespace, "other");
    assert_eq!(
        svc.routes[1].matches[0].source_namespace, "",
        "a producer route applies to every client"
    );
    // PathPrefix /abc/ matches /abc and /abc/...: exact OR prefix with the slash.
    assert_eq!(uris(&svc.routes[2]), [exact("/abc"), prefix("/abc/")]);
    assert_eq!(uris(&svc.routes[7]), [prefix("/")]);
    assert_eq!(uris(&svc.routes[8]), [regex("/a.*/b")]);
    assert_eq!(svc.routes[3].matches[0].method, exact("GET"));
}

#[test]
fn http_route_filters_backends_and_timeouts() {
    let web = "{group: core, kind: Service, name: web, port: 80}";
    let set = set_of(&format!(
        "{SHOP}{}",
        route_yaml(
            "r",
            "shop",
            web,
            "  - name: rewrite
    matches: [{path: {type: PathPrefix, value: /old}, headers: [{name: X-Env, type: RegularExpression, value: \"pro.*\"}]}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: api.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-A, value: a}], add: [{name: x-b, value: b}], remove: [X-C]}
    - type: RequestMirror
      requestMirror: {backendRef: {name: api, port: 9000}, percent: 10}
    backendRefs:
    - {name: api, port: 80, weight: 3, filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-backend, value: api}]}}]}
    - {name: web, port: 80}
    timeouts: {request: 10s, backendRequest: 2s}
  - matches: [{path: {type: Exact, value: /moved}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, hostname: example.com}}]
  - matches: [{path: {type: Exact, value: /full}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /index.html}}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: Exact, value: /nothing}}]
  - matches: [{path: {type: Exact, value: /zero}}]
    backendRefs: [{name: web, port: 80, weight: 0}]
",
        ),
    ));
    let svc = service(&translate(&set), WEB);
    let name = |i: usize| svc.routes[i].name.as_str();
    let exact_first: Vec<&str> = (0..svc.routes.len()).map(name).collect();
    assert_eq!(
        exact_first,
        [
            "HTTPRoute shop/r#3", // /nothing
            "HTTPRoute shop/r#1", // /moved
            "HTTPRoute shop/r#2", // /full, ties with /zero: rule order
            "HTTPRoute shop/r#4", // /zero
            "HTTPRoute shop/r#rewrite",
            "HTTPRoute shop/r#rewrite"
        ],
        "exact paths, longest first; then the prefix, split in two for its prefix rewrite"
    );
    let (exact_old, under_old) = (&svc.routes[4], &svc.routes[5]);
    assert_eq!(
        (uris(exact_old), uris(under_old)),
        (vec![exact("/old")], vec![prefix("/old/")])
    );
    let rewrite = |uri: &str| {
        Some(pb::Rewrite {
            uri: uri.into(),
            replace_full_path: false,
            authority: "api.internal".into(),
        })
    };
    assert_eq!(
        (exact_old.rewrite.clone(), under_old.rewrite.clone()),
        (rewrite("/new"), rewrite("/new/"))
    );
    let m = &exact_old.matches[0];
    assert_eq!(m.port, 80, "the parentRef's port");
    assert_eq!(
        m.headers,
        [pb::HeaderMatch {
            name: "x-env".into(),
            value: regex("pro.*"),
            invert: false
        }]
    );
    let ops = exact_old.request_headers.clone().expect("request headers");
    assert_eq!(ops.set, BTreeMap::from([("x-a".into(), "a".into())]));
    assert_eq!(ops.add, BTreeMap::from([("x-b".into(), "b".into())]));
    assert_eq!(ops.remove, ["x-c"]);
    assert_eq!(exact_old.mirrors.len(), 1);
    assert_eq!(exact_old.mirrors[0].percent, 10.0);
    assert_eq!(
        exact_old.mirrors[0]
            .destination
            .as_ref()
            .map(|d| (d.service.as_str(), d.port)),
        Some((API, 9000))
    );
    let weights: Vec<_> = exact_old
        .destinations
        .iter()
        .map(|d| (d.destination.as_ref().map(|d| d.service.as_str()), d.weight))
        .collect();
    assert_eq!(
        weights,
        [(Some(API), 3), (Some(WEB), 1)],
        "weight defaults to 1"
    );
    assert_eq!(
        exact_old.destinations[0]
            .response_headers
            .as_ref()
            .map(|h| h.set.clone()),
        Some(BTreeMap::from([("x-backend".into(), "api".into())]))
    );
    assert_eq!(exact_old.timeout_ms, 10_000);
    assert_eq!(
        exact_old
            .retry
            .as_ref()
            .map(|r| (r.attempts, r.per_try_timeout_ms)),
        Some((2, 2000))
    );

    let full = &svc.routes[2];
    assert_eq!(
        full.rewrite,
        Some(pb::Rewrite {
            uri: "/index.html".into(),
            replace_full_path: true,
            authority: String::new()
        })
    );
    let moved = &svc.routes[1];
    assert_eq!(
        moved.redirect,
        Some(pb::Redirect {
            uri: String::new(),
            authority: "example.com".into(),
            scheme: "https".into(),
            port: 443,
            status: 302
        })
    );
    assert!(moved.destinations.is_empty() && moved.direct_response.is_none());
    for (i, why) in [(3, "all backends weigh 0"), (0, "no backendRefs")] {
        let r = &svc.routes[i];
        assert_eq!(
            r.direct_response,
            Some(pb::DirectResponse {
                status: 500,
                body: Vec::new()
            }),
            "{why}"
        );
        assert!(r.destinations.is_empty(), "{why}");
    }
}

#[test]
fn grpc_route_methods_become_paths() {
    let set = set_of(&format!(
        "{SHOP}apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: g, namespace: shop}}
spec:
  parentRefs: [{{kind: Service, group: \"\", name: api, sectionName: grpc}}]
  rules:
  - matches: [{{method: {{service: shop.Cart}}}}]
    backendRefs: [{{name: api, port: 9000}}]
  - matches: [{{method: {{service: shop.Cart, method: Add}}, headers: [{{name: X-User, value: vip}}]}}]
    backendRefs: [{{name: api, port: 9000}}]
  - matches: [{{method: {{method: Get.All}}}}, {{method: {{type: RegularExpression, service: \"shop\\\\..*\", method: \"Del.*\"}}}}]
    backendRefs: [{{name: api, port: 9000}}]
  - backendRefs: [{{name: api, port: 9000}}]
"
    ));
    let svc = service(&translate(&set), API);
    let got: Vec<(&str, Vec<Option<pb::StringMatch>>)> = svc
        .routes
        .iter()
        .map(|r| (r.name.as_str(), uris(r)))
        .collect();
    assert_eq!(
        got,
        [
            ("GRPCRoute shop/g#1", vec![exact("/shop.Cart/Add")]),
            ("GRPCRoute shop/g#0", vec![prefix("/shop.Cart/")]),
            ("GRPCRoute shop/g#3", vec![prefix("/")]),
            (
                "GRPCRoute shop/g#2",
                vec![regex("/(?:shop\\..*)/(?:Del.*)")]
            ),
            ("GRPCRoute shop/g#2", vec![regex("/[^/]+/Get\\.All")]),
        ]
    );
    let add = &svc.routes[0].matches[0];
    assert_eq!(add.port, 9000, "sectionName names the Service port");
    assert_eq!(add.headers[0].name, "x-user");
    assert!(svc
        .routes
        .iter()
        .all(|r| r.retry.as_ref().is_some_and(|r| r.attempts == 2)));
}

#[test]
fn http_routes_win_over_virtual_services() {
    let set = set_of(&format!(
        "{SHOP}apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web, namespace: shop}}\nspec: {{hosts: [web], http: [{{route: [{{destination: {{host: api}}}}]}}]}}\n---\n{}",
        route_yaml("r", "shop", "{group: \"\", kind: Service, name: web}", "  - backendRefs: [{name: web, port: 80}]\n"),
    ));
    let svc = service(&translate(&set), WEB);
    assert_eq!(svc.sources, ["HTTPRoute shop/r"]);
    assert_eq!(
        svc.routes[0].destinations[0]
            .destination
            .as_ref()
            .map(|d| d.service.as_str()),
        Some(WEB)
    );
}
