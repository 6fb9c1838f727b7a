use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// The per-namespace L7 proxy of the mesh.
#[derive(Parser)]
#[command(version = mesh_primitives::version!())]
struct Args {
    /// YAML config file; environment variables override it.
    #[arg(long, env = "WAYPOINT_CONFIG")]
    config: Option<PathBuf>,
    /// Load and validate the config (file, then environment), print it as the process would run with it, and
    /// exit: 0 when valid, 1 with the reason when not. Nothing is started.
    #[arg(long)]
    check_config: bool,
}

/// A fatal error is one line: what failed and why, each cause after a colon (no backtrace, no repetition).
fn main() -> std::process::ExitCode {
    mesh_core::process::report(run())
}

fn run() -> anyhow::Result<()> {
    mesh_core::process::init_tracing();
    mesh_core::tls::install_default_provider();
    let matches = <Args as clap::CommandFactory>::command()
        .after_help(mesh_core::config::help_text::<waypoint::config::Config>(
            waypoint::config::ENV,
        ))
        .get_matches();
    let args = <Args as clap::FromArgMatches>::from_arg_matches(&matches)?;
    mesh_core::socket::raise_fd_limit();
    let cfg = waypoint::config::Config::load(args.config.as_deref())
        .context("invalid waypoint config")?;
    if args.check_config {
        println!(
            "{}",
            serde_json::to_string_pretty(&cfg).context("printing the config")?
        );
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let wp = waypoint::Waypoint::start(cfg).await?;
        mesh_core::process::shutdown_signal().await;
        wp.shutdown().await;
        Ok(())
    })
}
