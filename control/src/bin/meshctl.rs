//! `meshctl`: the mesh's command-line tool.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mesh_control::model::{self, Severity};

#[derive(Parser)]
#[command(version, about = "Operate the mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a directory of Kubernetes/Istio YAML offline, as the control plane would, plus cross-object checks.
    /// Exits non-zero when anything is an error.
    Analyze {
        /// Directory of YAML files (searched recursively).
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Analyze { dir } => analyze(&dir),
    }
}

fn analyze(dir: &std::path::Path) -> ExitCode {
    if !dir.is_dir() {
        eprintln!("error: {} is not a directory", dir.display());
        return ExitCode::from(2);
    }
    let (set, mut diagnostics) = model::load_dir(dir, None);
    diagnostics.extend(model::analyze(&set));
    for d in &diagnostics {
        println!("{d}");
    }
    let errors = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = diagnostics.len() - errors;
    if diagnostics.is_empty() {
        println!(
            "✔ No validation issues found when analyzing {}",
            dir.display()
        );
    } else {
        println!("{errors} error(s), {warnings} warning(s)");
    }
    if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
