//! `meshctl inject`: the Linkerd-style `... | meshctl inject | kubectl apply -f -`, for ambient. Nothing is
//! injected (ambient needs no sidecar): Namespaces get `istio.io/dataplane-mode: ambient`, and so do the pod
//! templates of workloads (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob), so they join the
//! mesh whichever namespace they land in.
//!
//! Documents that need no change are written back byte for byte, comments included. A changed document is written
//! back as YAML from its parsed form, so its comments are lost; a line on stderr names each such document.

use serde_json::Value;

pub const LABEL: &str = "istio.io/dataplane-mode";
const AMBIENT: &str = "ambient";

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("document {index}: invalid YAML: {reason}")]
    Yaml { index: usize, reason: String },
}

/// What happened to one document.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    /// Labelled; `what` says where (for the stderr note).
    Labelled {
        what: String,
    },
    /// Says `istio.io/dataplane-mode: none` (or another mode) itself: left as it is.
    OptedOut {
        what: String,
    },
}

/// The multi-document stream with the label added where it belongs, and what was done to each document.
pub fn inject(text: &str) -> Result<(String, Vec<Outcome>), InjectError> {
    let mut out = String::new();
    let mut outcomes = Vec::new();
    for (index, doc) in split_documents(text).into_iter().enumerate() {
        let (outcome, rendered) = inject_one(index, &doc)?;
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        if index > 0 {
            out.push_str("---\n");
        }
        out.push_str(rendered.as_deref().unwrap_or(&doc));
        outcomes.push(outcome);
    }
    Ok((out, outcomes))
}

/// Splits on `---` separator lines, keeping each document's text (and comments) exactly.
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push(String::new());
        } else if let Some(d) = docs.last_mut() {
            d.push_str(line);
        }
    }
    // A stream that starts with `---` has an empty first document: drop it, the separator is re-added.
    if docs.len() > 1 && docs[0].trim().is_empty() {
        docs.remove(0);
    }
    docs
}

fn inject_one(index: usize, doc: &str) -> Result<(Outcome, Option<String>), InjectError> {
    let yaml_err = |reason: String| InjectError::Yaml { index, reason };
    let mut values: Vec<Value> =
        mesh_primitives::yaml::from_multiple(doc).map_err(|e| yaml_err(e.to_string()))?;
    let Some(mut value) = values.pop() else {
        return Ok((Outcome::Unchanged, None));
    };
    let kind = value["kind"].as_str().unwrap_or_default().to_string();
    let name = value["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let what = format!("{kind} {name}");
    let path: &[&str] = match kind.as_str() {
        "Namespace" | "Pod" => &["metadata"],
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            &["spec", "template", "metadata"]
        }
        "CronJob" => &["spec", "jobTemplate", "spec", "template", "metadata"],
        _ => return Ok((Outcome::Unchanged, None)),
    };
    let Some(meta) = path.iter().try_fold(&mut value, |v, key| {
        v.as_object_mut().map(|o| {
            o.entry(*key)
                .or_insert_with(|| Value::Object(Default::default()))
        })
    }) else {
        return Ok((Outcome::Unchanged, None));
    };
    let Some(meta) = meta.as_object_mut() else {
        return Ok((Outcome::Unchanged, None));
    };
    let labels = meta
        .entry("labels")
        .or_insert_with(|| Value::Object(Default::default()));
    if labels.is_null() {
        *labels = Value::Object(Default::default());
    }
    let Some(labels) = labels.as_object_mut() else {
        return Ok((Outcome::Unchanged, None));
    };
    match labels.get(LABEL).and_then(Value::as_str) {
        Some(AMBIENT) => return Ok((Outcome::Unchanged, None)),
        Some(_) => return Ok((Outcome::OptedOut { what }, None)),
        None => {}
    }
    labels.insert(LABEL.into(), AMBIENT.into());
    let rendered = mesh_primitives::yaml::to_string(&value).map_err(|e| yaml_err(e.to_string()))?;
    Ok((Outcome::Labelled { what }, Some(rendered)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label_of(doc: &Value, path: &[&str]) -> Option<String> {
        let mut v = doc;
        for k in path {
            v = &v[*k];
        }
        v["labels"][LABEL].as_str().map(str::to_string)
    }

    #[test]
    fn labels_namespaces_and_pod_templates_and_keeps_the_rest_verbatim() {
        let input = "# the shop\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\n# untouched, comment kept\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {ports: [{port: 80}]}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  template:\n    metadata:\n      labels: {app: web}\n    spec: {containers: [{name: web, image: nginx}]}\n---\napiVersion: batch/v1\nkind: CronJob\nmetadata: {name: nightly}\nspec: {schedule: '0 0 * * *', jobTemplate: {spec: {template: {spec: {containers: []}}}}}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: legacy\n  labels: {istio.io/dataplane-mode: none}\n";
        let (out, outcomes) = inject(input).unwrap();
        assert_eq!(
            outcomes,
            vec![
                Outcome::Labelled {
                    what: "Namespace shop".into()
                },
                Outcome::Unchanged,
                Outcome::Labelled {
                    what: "Deployment web".into()
                },
                Outcome::Labelled {
                    what: "CronJob nightly".into()
                },
                Outcome::OptedOut {
                    what: "Pod legacy".into()
                },
            ]
        );
        let docs: Vec<Value> = mesh_primitives::yaml::from_multiple(&out).unwrap();
        assert_eq!(docs.len(), 5);
        assert_eq!(
            label_of(&docs[0], &["metadata"]).as_deref(),
            Some("ambient")
        );
        assert_eq!(
            label_of(&docs[2], &["spec", "template", "metadata"]).as_deref(),
            Some("ambient")
        );
        assert_eq!(
            docs[2]["spec"]["template"]["metadata"]["labels"]["app"], "web",
            "other labels kept"
        );
        assert_eq!(
            label_of(
                &docs[3],
                &["spec", "jobTemplate", "spec", "template", "metadata"]
            )
            .as_deref(),
            Some("ambient")
        );
        assert_eq!(
            label_of(&docs[4], &["metadata"]).as_deref(),
            Some("none"),
            "an opt-out is respected"
        );
        assert!(out.contains("# untouched, comment kept\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n"));
        assert!(
            out.contains("labels: {istio.io/dataplane-mode: none}"),
            "the opted-out Pod is verbatim"
        );
        // Idempotent: a second pass changes nothing.
        let (again, outcomes) = inject(&out).unwrap();
        assert_eq!(again, out);
        assert!(outcomes
            .iter()
            .all(|o| !matches!(o, Outcome::Labelled { .. })));
    }

    #[test]
    fn invalid_yaml_names_the_document() {
        let e = inject("kind: Namespace\n---\nkind: [unclosed\n").unwrap_err();
        assert!(e.to_string().starts_with("document 1: invalid YAML"), "{e}");
    }
}
