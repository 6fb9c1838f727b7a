//! The node agent (the cni chart's DaemonSet): installs and chains the `mesh-cni` plugin (when asked), holds the
//! node's mesh pods and hands them to ztunnel over ZDS; in Kubernetes mode it also enrolls running pods by label.
//! On SIGTERM it removes the plugin again; enrolled pods stay captured (ztunnel keeps serving them).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mesh_cni::agent::{self, plugin::Admission, Agent};
use mesh_cni::install::Install;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// Every pod the plugin reports is enrolled (a node without Kubernetes: the local lab).
    Local,
    /// Pods are in the mesh by label (istio.io/dataplane-mode), watched through the API server.
    Kubernetes,
}

/// The mesh's node agent.
#[derive(Parser, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[command(name = "mesh-cni-agent", version = mesh_primitives::version!())]
struct Args {
    /// Where pods come from.
    #[arg(long, env = "MESH_CNI_MODE", value_enum, default_value = "local")]
    mode: Mode,
    /// This node (Kubernetes mode: only its pods are watched).
    #[arg(long, env = "NODE_NAME", default_value = "")]
    node_name: String,
    /// The directory shared with ztunnel (ztunnel.sock) and the plugin (mesh-cni.sock), and the agent's records.
    #[arg(long, env = "ZTUNNEL_RUN_DIR", default_value = "/var/run/ztunnel")]
    run_dir: PathBuf,
    /// The host's /proc, where running pods' network namespaces are found.
    #[arg(long, env = "MESH_CNI_PROC_DIR", default_value = "/proc")]
    proc_dir: PathBuf,
    /// Install and chain the plugin into the host's CNI config (and remove it on exit).
    #[arg(long, env = "MESH_CNI_INSTALL", default_value_t = false)]
    install: bool,
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
    /// How often to check that the plugin is still chained.
    #[arg(long, env = "MESH_CNI_CHECK_INTERVAL", default_value = "10s", value_parser = mesh_primitives::duration::parse)]
    #[serde(with = "mesh_primitives::duration")]
    check_interval: Duration,
    /// Validate the settings, print them as JSON and exit.
    #[arg(long)]
    #[serde(skip)]
    check_config: bool,
}

/// A fatal error is one line: what failed and why, each cause after a colon (no backtrace, no repetition).
fn main() -> std::process::ExitCode {
    mesh_core::process::report(run())
}

fn run() -> anyhow::Result<()> {
    mesh_core::process::init_tracing();
    mesh_core::tls::install_default_provider();
    let args = Args::parse();
    if args.mode == Mode::Kubernetes && args.node_name.is_empty() {
        anyhow::bail!("NODE_NAME (--node-name) must be set in Kubernetes mode: the agent watches its node's pods");
    }
    if args.check_config {
        println!(
            "{}",
            serde_json::to_string_pretty(&args).context("printing the settings")?
        );
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let install = Install {
        plugin_binary: args.plugin.clone(),
        bin_dir: args.bin_dir.clone(),
        conf_dir: args.conf_dir.clone(),
        ztunnel_run_dir: args.run_dir.clone(),
    };
    let agent = Arc::new(Agent::open(&args.run_dir)?);
    let admission = match args.mode {
        Mode::Local => Admission::All,
        Mode::Kubernetes => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API server")?;
            let finder = agent::netns::Finder {
                proc_dir: args.proc_dir.clone(),
                ..Default::default()
            };
            Admission::Kubernetes(agent::kube::start(
                client,
                args.node_name.clone(),
                agent.clone(),
                finder,
            ))
        }
    };
    let zds_path = args.run_dir.join("ztunnel.sock");
    let zds = mesh_core::zds::ZdsListener::bind(&zds_path)
        .with_context(|| format!("listening on {} (ZTUNNEL_RUN_DIR)", zds_path.display()))?;
    agent::zds::spawn(agent.clone(), zds).context("starting the ZDS server")?;
    let events_path = mesh_cni::event::socket_path(&args.run_dir);
    let _ = std::fs::remove_file(&events_path);
    let events = std::os::unix::net::UnixListener::bind(&events_path)
        .with_context(|| format!("listening on {} (ZTUNNEL_RUN_DIR)", events_path.display()))?;
    agent::plugin::spawn(agent, events, admission, tokio::runtime::Handle::current())
        .context("starting the plugin event server")?;
    tracing::info!(mode = ?args.mode, run_dir = %args.run_dir.display(), "node agent started");

    let mut installed = if args.install {
        let done = install.install().context("installing mesh-cni")?;
        tracing::info!(config = %done.config.display(), "mesh-cni installed and chained");
        Some(done)
    } else {
        None
    };
    let stop = mesh_core::process::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(args.check_interval), if installed.is_some() => match install.install() {
                Ok(now) if Some(&now) != installed.as_ref() => {
                    tracing::warn!(config = %now.config.display(), "CNI config was rewritten; mesh-cni chained again");
                    installed = Some(now);
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "checking the CNI config"),
            },
        }
    }
    if let Some(done) = installed {
        install.uninstall(&done).context("removing mesh-cni")?;
        tracing::info!("mesh-cni removed; the node's CNI config is as it was");
    }
    let _ = std::fs::remove_file(&zds_path);
    let _ = std::fs::remove_file(&events_path);
    Ok(())
}
