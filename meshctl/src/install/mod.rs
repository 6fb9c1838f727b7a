//! `meshctl install` and `meshctl uninstall`, the Linkerd-style flow (`meshctl install | kubectl apply -f -`):
//! the charts under `charts/`, embedded at build time and rendered as `helm install` would render them with the
//! same values (release `mesh-<chart>`), so the charts stay the one source of truth. Values come from each
//! chart's `values.yaml`, then `--set CHART.KEY=VALUE`, and are checked against the chart's `values.schema.json`.

pub mod template;
pub mod yaml;

use serde_json::Value;
use sha2::Digest;

use template::{Engine, TemplateError};

// `CHART_FILES`: (path under charts/, contents) for every file of every chart.
include!(concat!(env!("OUT_DIR"), "/charts.rs"));

/// The charts in Istio's install order.
pub const CHARTS: [&str; 4] = ["base", "control", "cni", "ztunnel"];

/// Helm's install order by kind (kinds not listed come last, in chart order).
const KIND_ORDER: &[&str] = &[
    "Namespace",
    "CustomResourceDefinition",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Service",
    "DaemonSet",
    "Deployment",
    "HorizontalPodAutoscaler",
];

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("--set {arg}: {reason}")]
    Set { arg: String, reason: String },
    #[error("chart {chart}: values rejected by its values.schema.json: {reason}")]
    Schema { chart: String, reason: String },
    #[error("chart {chart}: {source}")]
    Template {
        chart: String,
        source: TemplateError,
    },
    #[error("chart {chart}: {file}: {reason}")]
    Chart {
        chart: String,
        file: String,
        reason: String,
    },
}

/// One rendered object.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// Where it came from, as Helm's `# Source:` comment says it.
    pub source: String,
    pub kind: String,
    pub text: String,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn file(path: &str) -> Option<&'static str> {
    CHART_FILES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, text)| *text)
}

/// Every object of every chart, in install order; the namespace first.
pub fn render(
    namespace: &str,
    sets: &[String],
    set_strings: &[String],
) -> Result<Vec<Manifest>, InstallError> {
    let mut overrides = parse_sets(sets, false)?;
    overrides.extend(parse_sets(set_strings, true)?);
    let mut out = vec![Manifest {
        source: "meshctl".into(),
        kind: "Namespace".into(),
        text: format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n"),
    }];
    for chart in CHARTS {
        let mut values = load_yaml(chart, &format!("{chart}/values.yaml"))?;
        for (_, path, value) in overrides.iter().filter(|(c, _, _)| c == chart) {
            set_path(&mut values, path, value.clone());
        }
        validate(chart, &values)?;
        out.extend(render_chart(chart, namespace, values)?);
    }
    let rank = |k: &str| {
        KIND_ORDER
            .iter()
            .position(|o| *o == k)
            .unwrap_or(KIND_ORDER.len())
    };
    out.sort_by_key(|m| rank(&m.kind));
    Ok(out)
}

fn load_yaml(chart: &str, path: &str) -> Result<Value, InstallError> {
    let text = file(path).ok_or_else(|| InstallError::Chart {
        chart: chart.into(),
        file: path.into(),
        reason: "missing".into(),
    })?;
    mesh_primitives::yaml::from_str(text).map_err(|e| InstallError::Chart {
        chart: chart.into(),
        file: path.into(),
        reason: e.to_string(),
    })
}

fn validate(chart: &str, values: &Value) -> Result<(), InstallError> {
    let Some(schema) = file(&format!("{chart}/values.schema.json")) else {
        return Ok(());
    };
    let schema: Value = serde_json::from_str(schema).map_err(|e| InstallError::Chart {
        chart: chart.into(),
        file: "values.schema.json".into(),
        reason: e.to_string(),
    })?;
    let validator = jsonschema::draft7::new(&schema).map_err(|e| InstallError::Chart {
        chart: chart.into(),
        file: "values.schema.json".into(),
        reason: e.to_string(),
    })?;
    let problems: Vec<String> = validator
        .iter_errors(values)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(InstallError::Schema {
            chart: chart.into(),
            reason: problems.join("; "),
        })
    }
}

fn render_chart(
    chart: &str,
    namespace: &str,
    values: Value,
) -> Result<Vec<Manifest>, InstallError> {
    let meta = load_yaml(chart, &format!("{chart}/Chart.yaml"))?;
    let dot = serde_json::json!({
        "Values": values,
        "Release": {"Name": format!("mesh-{chart}"), "Namespace": namespace, "Service": "meshctl",
            "IsInstall": true, "IsUpgrade": false, "Revision": 1},
        "Chart": {"Name": meta["name"], "Version": meta["version"], "AppVersion": meta["appVersion"]},
    });
    let mut engine = Engine::default();
    let mut out = Vec::new();
    let mut templates = Vec::new();
    let prefix = format!("{chart}/");
    for (path, text) in CHART_FILES.iter().filter(|(p, _)| p.starts_with(&prefix)) {
        let rel = &path[prefix.len()..];
        if let Some(name) = rel.strip_prefix("templates/") {
            if name.ends_with(".yaml") || name.ends_with(".tpl") {
                engine
                    .add(path, text)
                    .map_err(|source| InstallError::Template {
                        chart: chart.into(),
                        source,
                    })?;
                if !name.starts_with('_') {
                    templates.push(*path);
                }
            }
        } else if rel.starts_with("crds/") && rel.ends_with(".yaml") {
            out.extend(documents(path, text));
        } else {
            engine.add_file(rel, text);
        }
    }
    for path in templates {
        let text = engine
            .render(path, &dot)
            .map_err(|source| InstallError::Template {
                chart: chart.into(),
                source,
            })?;
        out.extend(documents(path, &text));
    }
    Ok(out)
}

/// The YAML documents of one rendered file that hold an object (not only blank lines and comments).
fn documents(source: &str, text: &str) -> Vec<Manifest> {
    let mut out = Vec::new();
    for doc in text.split("\n---") {
        let doc = doc.strip_prefix("---").unwrap_or(doc);
        let meaningful = doc
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        if !meaningful {
            continue;
        }
        let kind = doc
            .lines()
            .find_map(|l| l.strip_prefix("kind:"))
            .map(|k| k.trim().to_string())
            .unwrap_or_default();
        out.push(Manifest {
            source: source.into(),
            kind,
            text: format!("{}\n", doc.trim_matches('\n')),
        });
    }
    out
}

/// Helm's bound on `--set` list indexes (a huge one would allocate without limit).
const MAX_INDEX: usize = 65536;

/// One step of a `--set` key: a map key, or a list index (`tolerations[0]`).
#[derive(Clone, Debug, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// `CHART.a.b=v,CHART.l={x,y},CHART.m[0].k=v` → (chart, path, value), with Helm's `--set` typing: true/false,
/// integers and null are typed, `{x,y}` is a list, everything else is a string.
/// With `strings` (`--set-string`), every value is a string.
fn parse_sets(
    sets: &[String],
    strings: bool,
) -> Result<Vec<(String, Vec<Seg>, Value)>, InstallError> {
    let scalar = |raw: &str| {
        if strings {
            Value::String(raw.to_string())
        } else {
            scalar(raw)
        }
    };
    let mut out = Vec::new();
    for arg in sets {
        for item in split_items(arg) {
            let err = |reason: String| InstallError::Set {
                arg: item.clone(),
                reason,
            };
            let (key, raw) = item
                .split_once('=')
                .ok_or_else(|| err("expected CHART.KEY=VALUE".into()))?;
            let mut words = split_key(key).into_iter();
            let chart = words.next().unwrap_or_default();
            let mut path = Vec::new();
            for w in words {
                let w = w.as_str();
                let (name, index) = match w.split_once('[') {
                    Some((n, i)) => {
                        let i: usize = i
                            .strip_suffix(']')
                            .and_then(|i| i.parse().ok())
                            .filter(|i| *i <= MAX_INDEX)
                            .ok_or_else(|| {
                                err(format!(
                                    "bad list index in {w:?} (0 to {MAX_INDEX}, as Helm)"
                                ))
                            })?;
                        (n, Some(i))
                    }
                    None => (w, None),
                };
                if name.is_empty() {
                    return Err(err(format!("empty key in {key:?}")));
                }
                path.push(Seg::Key(name.to_string()));
                path.extend(index.map(Seg::Index));
            }
            if !CHARTS.contains(&chart.as_str()) || path.is_empty() {
                return Err(err(format!(
                    "the key must start with a chart ({}), e.g. ztunnel.logLevel=debug",
                    CHARTS.join(", ")
                )));
            }
            let value = match raw.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                Some(list) => Value::Array(
                    list.split(',')
                        .filter(|s| !s.is_empty())
                        .map(scalar)
                        .collect(),
                ),
                None => scalar(raw),
            };
            out.push((chart, path, value));
        }
    }
    Ok(out)
}

/// Splits a key on dots, as Helm does: `\\.` is a dot inside a key (`podAnnotations.example\\.org/owner`).
fn split_key(key: &str) -> Vec<String> {
    let (mut out, mut cur, mut chars) = (Vec::new(), String::new(), key.chars());
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            '.' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Splits on commas outside `{...}`.
fn split_items(arg: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (Vec::new(), String::new(), 0);
    for c in arg.chars() {
        match c {
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            '{' => {
                depth += 1;
                cur.push(c);
            }
            '}' => {
                depth -= 1;
                cur.push(c);
            }
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.retain(|s| !s.is_empty());
    out
}

fn scalar(raw: &str) -> Value {
    match raw {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "null" => Value::Null,
        _ => raw
            .parse::<i64>()
            .ok()
            .filter(|_| !raw.starts_with('0') || raw == "0")
            .map(Value::from)
            .unwrap_or_else(|| Value::String(raw.to_string())),
    }
}

fn set_path(values: &mut Value, path: &[Seg], value: Value) {
    let Some((first, rest)) = path.split_first() else {
        *values = value;
        return;
    };
    let slot = match first {
        Seg::Key(k) => {
            if !values.is_object() {
                *values = Value::Object(Default::default());
            }
            values
                .as_object_mut()
                .expect("made an object above")
                .entry(k.clone())
                .or_insert(Value::Null)
        }
        Seg::Index(i) => {
            if !values.is_array() {
                *values = Value::Array(Vec::new());
            }
            let list = values.as_array_mut().expect("made a list above");
            if list.len() <= *i {
                list.resize(*i + 1, Value::Null);
            }
            &mut list[*i]
        }
    };
    set_path(slot, rest, value);
}

/// What `install` prints: a multi-document stream for `kubectl apply -f -`.
pub fn install_text(manifests: &[Manifest]) -> String {
    manifests
        .iter()
        .map(|m| format!("---\n# Source: {}\n{}", m.source, m.text))
        .collect()
}

/// What `uninstall` prints, for `kubectl delete -f -`: the install's objects in reverse order, without the CRDs
/// (deleting them deletes every VirtualService, DestinationRule, ... of the cluster) and the namespace unless
/// `purge`.
pub fn uninstall_text(manifests: &[Manifest], purge: bool) -> String {
    let kept: Vec<Manifest> = manifests
        .iter()
        .rev()
        .filter(|m| purge || !matches!(m.kind.as_str(), "CustomResourceDefinition" | "Namespace"))
        .cloned()
        .collect();
    install_text(&kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_chart_with_defaults() {
        let all = render("istio-system", &[], &[]).unwrap();
        let kinds: Vec<&str> = all.iter().map(|m| m.kind.as_str()).collect();
        assert_eq!(kinds[0], "Namespace");
        assert!(
            kinds.contains(&"CustomResourceDefinition") && kinds.contains(&"DaemonSet"),
            "{kinds:?}"
        );
        // Nothing left unrendered; the Grafana dashboards' own `{{label}}` legends are file data, not templates.
        assert!(all
            .iter()
            .filter(|m| !m.text.contains("name: mesh-grafana-dashboards"))
            .all(|m| !m.text.contains("{{")));
        assert!(all
            .iter()
            .any(|m| m.text.contains("name: mesh-grafana-dashboards")));
    }

    #[test]
    fn set_is_typed_and_checked_against_the_schema() {
        let sets = parse_sets(
            &["control.replicaCount=3,ztunnel.logLevel=debug,control.l={a,b}".into()],
            false,
        )
        .unwrap();
        assert_eq!(sets[0].2, Value::from(3));
        assert_eq!(sets[1].2, Value::from("debug"));
        assert_eq!(sets[2].2, serde_json::json!(["a", "b"]));
        let strings = parse_sets(&["control.resources.limits.cpu=3".into()], true).unwrap();
        assert_eq!(strings[0].2, Value::from("3"));
        let mut v = serde_json::json!({});
        let (_, path, value) =
            &parse_sets(&["control.tolerations[1].key=k".into()], false).unwrap()[0];
        set_path(&mut v, path, value.clone());
        assert_eq!(v, serde_json::json!({"tolerations": [null, {"key": "k"}]}));
        assert_eq!(
            split_key(r"c.podAnnotations.example\.org/owner"),
            ["c", "podAnnotations", "example.org/owner"]
        );
        let e = render("istio-system", &["cni.cni.binDri=/x".into()], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("chart cni") && e.contains("binDri"), "{e}");
        let e = render("istio-system", &["logLevel=debug".into()], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("must start with a chart"), "{e}");
    }

    #[test]
    fn uninstall_keeps_crds_and_namespace_unless_purging() {
        let all = render("istio-system", &[], &[]).unwrap();
        let text = uninstall_text(&all, false);
        assert!(
            !text.contains("kind: CustomResourceDefinition") && !text.contains("kind: Namespace")
        );
        assert!(uninstall_text(&all, true).contains("kind: CustomResourceDefinition"));
    }
}
