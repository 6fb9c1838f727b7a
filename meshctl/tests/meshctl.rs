//! `meshctl analyze` as a user runs it: exit code and messages.

use std::process::Command;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

fn analyze(dir: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("analyze")
        .arg(dir)
        .output()
        .expect("meshctl runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn temp_dir(name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("meshctl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (f, body) in files {
        std::fs::write(dir.join(f), body).unwrap();
    }
    dir
}

#[test]
fn the_seed_manifests_have_no_errors() {
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/seed");
    let (code, out) = analyze(&seed);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 error(s)"), "{out}");
    // Cross-object warnings: the seed names services that the directory does not define.
    assert!(
        out.contains("warning: VirtualService default/order-service"),
        "{out}"
    );
}

#[test]
fn an_invalid_object_fails_with_kind_name_field_and_reason() {
    let dir = temp_dir(
        "invalid",
        &[(
            "vs.yaml",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web}\nspec:\n  hosts: [web]\n  http:\n  - route:\n    - destination: {host: web}\n      weight: 250\n",
        )],
    );
    let (code, out) = analyze(&dir);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error: VirtualService default/web: spec.http[0].route[0].weight"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_typo_is_an_error_with_a_suggestion_not_a_silent_drop() {
    // The three typos: STRICT would be dropped, the weights would sum to 10, the kind would be skipped.
    let dir = temp_dir(
        "typos",
        &[
            ("pa.yaml", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default}\nspec: {mtls: {mod: STRICT}}\n"),
            ("vs.yaml", "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web}\nspec:\n  hosts: [web]\n  http:\n  - route:\n    - destination: {host: web}\n      weigth: 90\n    - destination: {host: web}\n      weight: 10\n"),
            ("kind.yaml", "apiVersion: networking.istio.io/v1\nkind: VirtualServce\nmetadata: {name: web2}\nspec: {hosts: [web]}\n"),
        ],
    );
    let (code, out) = analyze(&dir);
    assert_eq!(code, 1, "{out}");
    for expected in [
        "error: PeerAuthentication default/default: spec.mtls.mod: unknown field mod (did you mean mode?)",
        "spec.http[0].route[0].weigth: unknown field weigth (did you mean weight?)",
        "unknown kind VirtualServce in networking.istio.io (did you mean VirtualService?)",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_subset_without_a_destination_rule_is_an_error_and_weights_not_summing_warn() {
    let dir = temp_dir(
        "subset",
        &[
            ("svc.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 198.18.255.1, selector: {app: web}, ports: [{port: 80}]}\n"),
            (
                "vs.yaml",
                "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: web}\nspec:\n  hosts: [web]\n  http:\n  - route:\n    - destination: {host: web, subset: v1}\n      weight: 50\n    - destination: {host: web, subset: v2}\n      weight: 20\n",
            ),
        ],
    );
    let (code, out) = analyze(&dir);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("subset"), "{out}");
    assert!(
        out.contains("warning") && out.contains("100"),
        "weights summing to 70 should warn: {out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `meshctl waypoint apply <args>`: exit code, stdout, stderr.
fn waypoint_apply(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["waypoint", "apply"])
        .args(args)
        .output()
        .expect("meshctl runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn waypoint_apply_writes_a_gateway_the_control_plane_loads() {
    use mesh_model::{load_dir, Kind, ObjectKey, LABEL_USE_WAYPOINT};

    let dir = temp_dir("waypoint", &[]);
    let d = dir.to_str().expect("utf-8 temp path");
    let (code, out, err) = waypoint_apply(&[
        "-n",
        "shop",
        "--for",
        "all",
        "--enroll-namespace",
        "--dir",
        d,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let gateway_file = dir.join("waypoint-shop-waypoint.yaml");
    let namespace_file = dir.join("namespace-shop-waypoint.yaml");
    assert!(out.contains(&gateway_file.display().to_string()), "{out}");

    let (set, diags) = load_dir(&dir, None);
    assert!(diags.is_empty(), "{diags:#?}");
    let gw = set.gateway("shop", "waypoint").expect("the Gateway");
    assert!(gw.is_waypoint());
    assert_eq!(gw.waypoint_for(), "all");
    let l = &gw.spec.listeners[0];
    assert_eq!(
        (l.name.as_str(), l.port, l.protocol.as_str()),
        ("mesh", 15008, "HBONE")
    );
    assert_eq!(
        set.source(&ObjectKey::new(Kind::Gateway, "shop", "waypoint")),
        Some(gateway_file.as_path())
    );
    let ns = set.namespace("shop").expect("the Namespace");
    assert_eq!(ns.metadata.label(LABEL_USE_WAYPOINT), Some("waypoint"));

    // Run again with another name: our own Namespace file is updated, keeping labels added to it since.
    let text = std::fs::read_to_string(&namespace_file).unwrap();
    std::fs::write(
        &namespace_file,
        text.replace("labels:", "labels:\n    istio.io/dataplane-mode: ambient"),
    )
    .unwrap();
    let (code, out, err) = waypoint_apply(&[
        "-n",
        "shop",
        "--name",
        "wp2",
        "--enroll-namespace",
        "--dir",
        d,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (set, diags) = load_dir(&dir, None);
    assert!(diags.is_empty(), "{diags:#?}");
    let ns = set.namespace("shop").expect("the Namespace");
    assert_eq!(ns.metadata.label(LABEL_USE_WAYPOINT), Some("wp2"));
    assert!(ns.is_ambient());
    assert_eq!(
        set.gateway("shop", "wp2").map(|g| g.waypoint_for()),
        Some("service")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn waypoint_apply_never_rewrites_a_users_namespace_file() {
    let user_ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: {istio.io/dataplane-mode: ambient}\n";
    let dir = temp_dir("waypoint-user-ns", &[("namespaces.yaml", user_ns)]);
    let d = dir.to_str().expect("utf-8 temp path");
    let (code, out, err) = waypoint_apply(&["-n", "shop", "--enroll-namespace", "--dir", d]);
    assert_eq!(code, 1, "{out}{err}");
    let file = dir.join("namespaces.yaml");
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("istio.io/use-waypoint: waypoint"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        user_ns,
        "untouched"
    );
    assert!(!dir.join("namespace-shop-waypoint.yaml").exists());
    // Once the user has added the label, the same command succeeds.
    std::fs::write(
        &file,
        user_ns.replace("ambient}", "ambient, istio.io/use-waypoint: waypoint}"),
    )
    .unwrap();
    let (code, out, err) = waypoint_apply(&["-n", "shop", "--enroll-namespace", "--dir", d]);
    assert_eq!(code, 0, "{out}{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn waypoint_apply_without_a_dir_prints_the_yaml() {
    let (code, out, err) = waypoint_apply(&["-n", "shop", "--name", "edge"]);
    assert_eq!(code, 0, "{err}");
    let (objects, diags) = mesh_model::load_str(&out, None);
    assert!(diags.is_empty(), "{diags:#?}\n{out}");
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0].key().to_string(), "Gateway shop/edge");
    assert!(out.contains("istio.io/waypoint-for: service"), "{out}");
    let (code, _, err) = waypoint_apply(&["-n", "shop", "--for", "everything"]);
    assert_eq!(code, 2, "clap rejects an unknown traffic type: {err}");
}

#[test]
fn meshctl_crds_prints_every_crd_as_yaml() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("crds")
        .output()
        .expect("meshctl runs");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let docs: Vec<CustomResourceDefinition> =
        mesh_primitives::yaml::from_multiple(&text).expect("CRDs");
    let kinds: Vec<_> = docs.iter().map(|c| c.spec.names.kind.as_str()).collect();
    let expected: Vec<_> = mesh_model::crds::all()
        .iter()
        .map(|c| c.spec.names.kind.clone())
        .collect();
    assert_eq!(kinds, expected);
    // What the chart vendors is exactly what the library generates.
    assert_eq!(
        serde_json::to_value(&docs).unwrap(),
        serde_json::to_value(mesh_model::crds::all()).unwrap()
    );
}

#[test]
fn version_names_the_tool_its_version_and_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("version")
        .output()
        .expect("meshctl runs");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(
        text.starts_with(&format!("meshctl {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(!text.contains("mesh-control"), "{text}");
    let flag = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(flag.stdout).unwrap(),
        text,
        "--version says the same"
    );
}

/// `meshctl inject` with `input` on stdin.
fn inject(input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("inject")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn inject_reads_stdin_and_writes_labelled_manifests() {
    let out = inject(b"apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n# keep me\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let (objects, diags) = mesh_model::load_str(&text, None);
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
    assert!(text.contains("istio.io/dataplane-mode: ambient"), "{text}");
    assert!(
        text.contains("# keep me\napiVersion: v1\nkind: ConfigMap"),
        "{text}"
    );
    assert!(objects
        .iter()
        .any(|o| o.key().to_string() == "Namespace shop"));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("Namespace shop: labelled"));
    // Bad input: an error naming the document, nothing on stdout, exit 1.
    let out = inject(b"kind: [oops\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("document 0: invalid YAML"));
}

#[test]
fn check_fails_with_what_to_do_and_exit_1() {
    let missing = std::env::temp_dir().join(format!("meshctl-no-cni-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["check", "--cni-conf-dir"])
        .arg(&missing)
        .args(["--cni-bin-dir"])
        .arg(&missing)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL  CNI config"), "{text}");
    assert!(
        text.contains("install the cluster's network plugin first"),
        "{text}"
    );
    assert!(text.contains("ok    kernel"), "{text}");
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l.ends_with("checks failed")),
        "{text}"
    );
}
