use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// The mesh's control plane: CA and delta xDS, from a directory of Kubernetes-style YAML.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// YAML config file; environment variables override it.
    #[arg(long, env = "CONTROL_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let cfg = mesh_control::config::Config::load(args.config.as_deref())
        .context("invalid control plane config")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        mesh_control::server::run(cfg, shutdown).await?;
        Ok(())
    })
}
