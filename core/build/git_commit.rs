// Included by the build script of every package that ships a binary (`include!`), so `--version` names the git
// commit each was built from. A build script cannot depend on a library crate of its own workspace without a
// crate just for this; a shared file is the smaller tool.

/// Sets `MESH_GIT_COMMIT` for the package (`<12 hex digits>`, `-dirty` when tracked files differ from HEAD,
/// `unknown` outside a git checkout), and reruns when HEAD moves or the index changes.
fn emit_git_commit() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    println!(
        "cargo:rustc-env=MESH_GIT_COMMIT={commit}{}",
        if dirty { "-dirty" } else { "" }
    );
    // Only files that exist: a missing one (a branch ref once refs are packed) would rerun this on every build.
    let watch = |path: Option<String>| {
        if let Some(p) = path.filter(|p| std::path::Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={p}");
        }
    };
    watch(git(&["rev-parse", "--git-path", "HEAD"]));
    watch(git(&["rev-parse", "--git-path", "packed-refs"]));
    watch(git(&["rev-parse", "--git-path", "index"]));
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch(git(&["rev-parse", "--git-path", &r]));
    }
}
