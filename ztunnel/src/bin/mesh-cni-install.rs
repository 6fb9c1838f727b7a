//! The node agent's installer (see `ztunnel::cni_install`): installs and chains `mesh-cni`, keeps it chained while
//! it runs (another agent may rewrite the node's CNI config), and removes it all on SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ztunnel::cni_install::Install;

/// Installs the mesh's CNI plugin on this node and removes it when stopped.
#[derive(Parser)]
#[command(name = "mesh-cni-install", version)]
struct Args {
    /// The mesh-cni binary to install.
    #[arg(
        long,
        env = "MESH_CNI_PLUGIN",
        default_value = "/usr/local/bin/mesh-cni"
    )]
    plugin: PathBuf,
    /// The host's CNI bin directory, as mounted.
    #[arg(long, env = "MESH_CNI_BIN_DIR", default_value = "/host/opt/cni/bin")]
    bin_dir: PathBuf,
    /// The host's CNI config directory, as mounted.
    #[arg(long, env = "MESH_CNI_CONF_DIR", default_value = "/host/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// The host directory ztunnel shares with the plugin.
    #[arg(long, env = "ZTUNNEL_RUN_DIR", default_value = "/var/run/ztunnel")]
    ztunnel_run_dir: PathBuf,
    /// How often to check that the plugin is still chained.
    #[arg(long, env = "MESH_CNI_CHECK_INTERVAL", default_value = "10s", value_parser = mesh_primitives::duration::parse)]
    check_interval: Duration,
}

fn main() -> anyhow::Result<()> {
    mesh_core::process::init_tracing();
    let args = Args::parse();
    let install = Install {
        plugin_binary: args.plugin,
        bin_dir: args.bin_dir,
        conf_dir: args.conf_dir,
        ztunnel_run_dir: args.ztunnel_run_dir,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let mut done = install.install().context("installing mesh-cni")?;
    tracing::info!(config = %done.config.display(), "mesh-cni installed and chained");
    rt.block_on(async {
        let stop = mesh_core::process::shutdown_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(args.check_interval) => match install.install() {
                    Ok(now) if now != done => {
                        tracing::warn!(config = %now.config.display(), "CNI config was rewritten; mesh-cni chained again");
                        done = now;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "checking the CNI config"),
                },
            }
        }
    });
    install.uninstall(&done).context("removing mesh-cni")?;
    tracing::info!("mesh-cni removed; the node's CNI config is as it was");
    Ok(())
}
