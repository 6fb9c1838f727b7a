//! Unit tests of the model, by family: per-object validation, directory loading, cross-object analysis.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{load_str, ConfigSet, Diagnostic, Object, Severity};

mod analysis;
mod loading;
mod validation;

/// Parse one YAML text: the accepted objects and every diagnostic.
fn parse(yaml: &str) -> (Vec<Object>, Vec<Diagnostic>) {
    load_str(yaml, None)
}

/// Display strings of the error-level diagnostics.
fn errors(diags: &[Diagnostic]) -> Vec<String> {
    diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .collect()
}

fn warnings(diags: &[Diagnostic]) -> Vec<String> {
    diags
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .map(ToString::to_string)
        .collect()
}

/// Parse YAML that must be fully valid (warnings allowed) and return its objects.
fn valid(yaml: &str) -> Vec<Object> {
    let (objects, diags) = parse(yaml);
    assert!(
        errors(&diags).is_empty(),
        "unexpected errors: {:#?}",
        errors(&diags)
    );
    objects
}

/// Parse YAML that must be rejected, with an error whose text contains `expected`.
fn rejected(yaml: &str, expected: &str) -> Vec<Diagnostic> {
    let (objects, diags) = parse(yaml);
    assert!(
        objects.is_empty(),
        "object should have been rejected: {objects:#?}"
    );
    let errs = errors(&diags);
    assert!(
        errs.iter().any(|e| e.contains(expected)),
        "no error containing {expected:?} in {errs:#?}"
    );
    diags
}

/// A set holding every object of `yaml` (which must be valid).
fn set_of(yaml: &str) -> ConfigSet {
    let mut set = ConfigSet::new();
    for o in valid(yaml) {
        set.insert(o, None);
    }
    set
}

/// A scratch directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mesh-model-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent dir");
        }
        std::fs::write(&path, text).expect("write test file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
