//! `meshctl analyze` as a user runs it: exit code and messages.

use std::process::Command;

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
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/seed");
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
