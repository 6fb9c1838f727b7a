//! Loading a directory: last-good retention, per-file syntax errors, duplicates, and the set's dump form.

use super::{errors, TempDir};
use crate::{load_dir, load_str, ConfigSet, DirCache, Kind, Object, ObjectKey, Severity};

fn vs(name: &str, weight: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{name}]\n  http:\n  - route:\n    - destination: {{host: {name}}}\n      weight: {weight}\n"
    )
}

fn svc(name: &str, port: u32) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{port: {port}}}]\n")
}

fn vs_weight(set: &ConfigSet, name: &str) -> Option<u32> {
    match set.get(&ObjectKey::new(Kind::VirtualService, "default", name)) {
        Some(Object::VirtualService(v)) => v.spec.http[0].route[0].weight,
        _ => None,
    }
}

fn svc_port(set: &ConfigSet, name: &str) -> Option<u32> {
    set.service("default", name).map(|s| s.spec.ports[0].port)
}

#[test]
fn invalid_object_keeps_last_good_version_and_the_rest_applies() {
    let dir = TempDir::new("retain");
    dir.write("vs.yaml", &vs("x", "100"));
    dir.write("svc.yaml", &svc("s", 80));
    let (first, diags) = load_dir(dir.path(), None);
    assert!(errors(&diags).is_empty(), "{diags:#?}");
    assert_eq!(
        (vs_weight(&first, "x"), svc_port(&first, "s")),
        (Some(100), Some(80))
    );

    dir.write("vs.yaml", &vs("x", "250"));
    dir.write("svc.yaml", &svc("s", 81));
    let (second, diags) = load_dir(dir.path(), Some(&first));
    assert_eq!(
        vs_weight(&second, "x"),
        Some(100),
        "the last good VirtualService stays"
    );
    assert_eq!(
        svc_port(&second, "s"),
        Some(81),
        "the valid change is applied"
    );
    let errs = errors(&diags);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].starts_with("error: VirtualService default/x: spec.http[0].route[0].weight"),
        "{}",
        errs[0]
    );
    assert_eq!(
        diags[0].file.as_deref(),
        Some(dir.path().join("vs.yaml").as_path())
    );

    // A type error is retained the same way; with no previous set, the object is simply absent.
    dir.write("vs.yaml", &vs("x", "abc"));
    let (third, diags) = load_dir(dir.path(), Some(&second));
    assert_eq!(vs_weight(&third, "x"), Some(100));
    assert!(errors(&diags)[0].contains("spec.http[0].route[0].weight: invalid type"));
    let (fresh, _) = load_dir(dir.path(), None);
    assert_eq!(vs_weight(&fresh, "x"), None);
    assert_eq!(svc_port(&fresh, "s"), Some(81));
}

#[test]
fn yaml_syntax_error_rejects_only_that_file() {
    let dir = TempDir::new("syntax");
    dir.write(
        "a.yaml",
        &format!("{}---\n{}", vs("x", "100"), svc("s", 80)),
    );
    dir.write("b.yaml", &svc("t", 90));
    let (first, _) = load_dir(dir.path(), None);
    assert_eq!(first.len(), 3);

    dir.write(
        "a.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: s\n  oops: [\n",
    );
    dir.write("b.yaml", &svc("t", 91));
    let (second, diags) = load_dir(dir.path(), Some(&first));
    let errs = errors(&diags);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].contains("a.yaml: invalid YAML, the whole file is rejected"),
        "{}",
        errs[0]
    );
    assert_eq!(
        (vs_weight(&second, "x"), svc_port(&second, "s")),
        (Some(100), Some(80)),
        "a.yaml's objects are kept"
    );
    assert_eq!(svc_port(&second, "t"), Some(91), "b.yaml still applies");

    // Fixed, with one object removed: the removal takes effect.
    dir.write("a.yaml", &svc("s", 82));
    let (third, diags) = load_dir(dir.path(), Some(&second));
    assert!(diags.is_empty(), "{diags:#?}");
    assert_eq!(
        (vs_weight(&third, "x"), svc_port(&third, "s")),
        (None, Some(82))
    );
}

#[test]
fn duplicates_error_on_the_second_and_the_first_stands() {
    let dir = TempDir::new("dup");
    dir.write("a.yaml", &svc("s", 80));
    dir.write("b.yaml", &svc("s", 81));
    let (set, diags) = load_dir(dir.path(), None);
    assert_eq!(svc_port(&set, "s"), Some(80));
    let errs = errors(&diags);
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].contains("Service default/s: metadata.name: duplicate: already defined in"),
        "{}",
        errs[0]
    );
    assert_eq!(
        diags[0].file.as_deref(),
        Some(dir.path().join("b.yaml").as_path())
    );
    assert_eq!(
        set.source(&ObjectKey::new(Kind::Service, "default", "s")),
        Some(dir.path().join("a.yaml").as_path())
    );
}

#[test]
fn walks_subdirectories_and_skips_hidden_and_other_files() {
    let dir = TempDir::new("walk");
    dir.write("top.yml", &svc("a", 80));
    dir.write("nested/deeper/b.YAML", &svc("b", 80));
    dir.write(".hidden/c.yaml", &svc("c", 80));
    dir.write("..data/d.yaml", &svc("d", 80));
    dir.write("README.md", "not config");
    let (set, diags) = load_dir(dir.path(), None);
    assert!(diags.is_empty(), "{diags:#?}");
    assert_eq!(
        set.services()
            .map(|s| s.metadata.name.as_str())
            .collect::<Vec<_>>(),
        vec!["a", "b"]
    );
}

#[test]
fn missing_directory_keeps_everything() {
    let dir = TempDir::new("missing");
    dir.write("a.yaml", &svc("s", 80));
    let (first, _) = load_dir(dir.path(), None);
    let gone = dir.path().join("nope");
    let (second, diags) = load_dir(&gone, Some(&first));
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].severity, Severity::Error);
    assert!(diags[0].to_string().contains("cannot read"), "{}", diags[0]);
    // The previous objects came from another path, so nothing under `gone` is retained...
    assert!(second.is_empty());
    // ...but the same directory vanishing keeps all it held.
    let (third, _) = load_dir(dir.path(), Some(&first));
    std::fs::remove_dir_all(dir.path()).expect("remove dir");
    let (fourth, diags) = load_dir(dir.path(), Some(&third));
    assert_eq!(errors(&diags).len(), 1);
    assert_eq!(fourth, third);
}

#[test]
fn unidentifiable_document_keeps_the_files_previous_objects() {
    let dir = TempDir::new("unident");
    dir.write("a.yaml", &svc("s", 80));
    let (first, _) = load_dir(dir.path(), None);
    dir.write("a.yaml", "apiVersion: v1\nkind: Service\nmetadata: {namespace: default}\nspec: {ports: [{port: 81}]}\n");
    let (second, diags) = load_dir(dir.path(), Some(&first));
    assert!(errors(&diags)[0].contains("metadata.name: required"));
    assert_eq!(svc_port(&second, "s"), Some(80));
}

#[test]
fn config_set_dumps_as_kubernetes_objects() {
    let dir = TempDir::new("dump");
    dir.write(
        "a.yaml",
        &format!("{}---\n{}", vs("x", "100"), svc("s", 80)),
    );
    let (set, _) = load_dir(dir.path(), None);
    let json = serde_json::to_value(&set).expect("serialize");
    let items = json.as_array().expect("a list of objects");
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["apiVersion"], "v1");
    assert_eq!(items[0]["kind"], "Service");
    assert_eq!(items[1]["apiVersion"], "networking.istio.io/v1");
    assert_eq!(items[1]["kind"], "VirtualService");
    assert_eq!(items[1]["metadata"]["namespace"], "default");
    assert_eq!(items[1]["spec"]["http"][0]["route"][0]["weight"], 100);
    assert!(items[1]["source"]
        .as_str()
        .is_some_and(|s| s.ends_with("a.yaml")));
    let copy = set.clone();
    assert_eq!(copy, set);
    assert_ne!(copy, ConfigSet::default());
}

#[test]
fn blank_values_mean_empty_and_number_like_labels_stay_strings() {
    let (objects, diags) = load_str(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: order\n  labels:\n  annotations:\nspec:\n  selector: {app: order, build: 0755}\n  ports:\n  - {port: 80}\n",
        None,
    );
    assert!(diags.is_empty(), "{diags:?}");
    let Object::Service(s) = &objects[0] else {
        panic!("a Service: {objects:?}")
    };
    assert!(s.metadata.labels.is_empty());
    assert_eq!(
        s.spec.selector.get("build").map(String::as_str),
        Some("0755")
    );
}

/// Backdates a file's modification time past the window in which a stamp is not trusted.
fn settle(dir: &TempDir, name: &str) {
    let f = std::fs::File::options()
        .write(true)
        .open(dir.path().join(name))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(60))
        .unwrap();
}

#[test]
fn a_reload_parses_only_the_files_that_changed() {
    let dir = TempDir::new("cache");
    dir.write("vs.yaml", &vs("x", "100"));
    dir.write("svc.yaml", &svc("s", 80));
    settle(&dir, "vs.yaml");
    settle(&dir, "svc.yaml");
    let mut cache = DirCache::default();
    let (first, _) = cache.load(dir.path(), None);
    assert_eq!(cache.files_parsed(), 2);
    let (again, diags) = cache.load(dir.path(), Some(&first));
    assert_eq!(cache.files_parsed(), 2, "nothing changed: nothing parsed");
    assert!(errors(&diags).is_empty());
    assert_eq!(svc_port(&again, "s"), Some(80), "cached objects are served");
    dir.write("svc.yaml", &svc("s", 81));
    let (third, _) = cache.load(dir.path(), Some(&again));
    assert_eq!(
        cache.files_parsed(),
        3,
        "only the edited file is parsed again"
    );
    assert_eq!(
        (vs_weight(&third, "x"), svc_port(&third, "s")),
        (Some(100), Some(81))
    );
    std::fs::remove_file(dir.path().join("vs.yaml")).unwrap();
    let (fourth, _) = cache.load(dir.path(), Some(&third));
    assert_eq!(vs_weight(&fourth, "x"), None, "a removed file's objects go");
}

#[test]
fn an_empty_file_says_so_and_removes_what_it_held() {
    let dir = TempDir::new("empty");
    dir.write("a.yaml", &svc("s", 80));
    let (first, _) = load_dir(dir.path(), None);
    assert_eq!(svc_port(&first, "s"), Some(80));
    dir.write("a.yaml", "# nothing here yet\n");
    let (second, diags) = load_dir(dir.path(), Some(&first));
    assert_eq!(svc_port(&second, "s"), None, "emptied on purpose: gone");
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert_eq!(diags[0].severity, Severity::Warning);
    assert!(diags[0].reason.contains("holds no object"), "{diags:#?}");
    assert!(diags[0]
        .file
        .as_ref()
        .is_some_and(|f| f.ends_with("a.yaml")));
}
