//! Records the git commit meshctl is built from (`meshctl version`), and embeds the charts for `meshctl install`.

include!("../core/build/git_commit.rs");

fn main() {
    emit_git_commit();
    embed_charts();
}

/// Writes `$OUT_DIR/charts.rs`: every file under `charts/` as (path, contents), for `meshctl install`.
fn embed_charts() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts");
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    files.sort();
    let mut code = String::from("pub static CHART_FILES: &[(&str, &str)] = &[\n");
    for (rel, abs) in &files {
        code.push_str(&format!("    ({rel:?}, include_str!({abs:?})),\n"));
    }
    code.push_str("];\n");
    let out = std::path::Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("charts.rs");
    std::fs::write(out, code).expect("OUT_DIR is writable");
    println!("cargo:rerun-if-changed={}", root.display());
}

fn collect(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        println!("cargo:rerun-if-changed={}", path.display());
        if path.is_dir() {
            collect(root, &path, out);
        } else if let Ok(rel) = path.strip_prefix(root) {
            let abs = path.canonicalize().unwrap_or(path.clone());
            out.push((rel.display().to_string(), abs.display().to_string()));
        }
    }
}
