//! Records the git commit the binaries are built from, for `--version`.

include!("../core/build/git_commit.rs");

fn main() {
    emit_git_commit();
}
