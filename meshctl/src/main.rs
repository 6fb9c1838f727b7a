//! `meshctl`: the mesh's command-line tool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod check;
mod inject;
mod install;
mod proxy_config;
use mesh_model::{
    self as model, Kind, ObjectKey, Severity, LABEL_USE_WAYPOINT, LABEL_WAYPOINT_FOR,
    WAYPOINT_CLASS,
};
use serde_json::json;

#[derive(Parser)]
#[command(version = mesh_primitives::version!(), about = "Operate the mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print meshctl's version and the git commit it was built from.
    Version,
    /// Pre-flight on a node: kernel, iptables, the CNI config and bin directories, the mesh's ports free.
    /// Exits 1 when a check fails, with what to do on its line.
    Check {
        /// The host's CNI network config directory.
        #[arg(long, default_value = "/etc/cni/net.d")]
        cni_conf_dir: PathBuf,
        /// The host's CNI plugin binary directory.
        #[arg(long, default_value = "/opt/cni/bin")]
        cni_bin_dir: PathBuf,
    },
    /// Add the ambient label (`istio.io/dataplane-mode: ambient`) to the Namespaces and pod templates of the
    /// manifests on stdin, written to stdout: `kubectl get deploy -o yaml | meshctl inject | kubectl apply -f -`.
    /// No sidecar is added: ambient needs none.
    Inject,
    /// Validate a directory of Kubernetes/Istio YAML offline, as the control plane would, plus cross-object checks.
    /// Exits non-zero when anything is an error.
    Analyze {
        /// Directory of YAML files (searched recursively).
        dir: PathBuf,
    },
    /// Print the mesh's CustomResourceDefinitions as multi-document YAML (for a chart's `crds/` folder:
    /// `meshctl crds > charts/base/crds/crds.yaml`).
    Crds,
    /// Print the whole mesh (CRDs, control plane, node agent, ztunnel) as the charts render it with `helm
    /// install`, for `meshctl install | kubectl apply -f -`. Values: each chart's values.yaml, then --set.
    Install(InstallArgs),
    /// Print what `install` created, for `meshctl uninstall | kubectl delete -f -`. Keeps the CRDs (and so every
    /// VirtualService, DestinationRule, ...) and the namespace unless --purge.
    Uninstall {
        #[command(flatten)]
        args: InstallArgs,
        /// Also delete the CRDs (with every object of those kinds) and the namespace.
        #[arg(long)]
        purge: bool,
    },
    /// What a running ztunnel or waypoint holds (`/config_dump` of its admin port), as a table or JSON, like
    /// `istioctl proxy-config`. Run it in the proxy's network namespace (`ip netns exec NODE meshctl ...`).
    ProxyConfig {
        #[arg(value_enum)]
        section: proxy_config::Section,
        /// The process's admin address (host:port, or just the port).
        #[arg(default_value = "127.0.0.1:15000")]
        process: String,
        #[arg(short, long, value_enum, default_value_t = proxy_config::Output::Table)]
        output: proxy_config::Output,
    },
    /// The mesh page's URL (served by the control plane's monitoring port: the live service graph, workloads,
    /// waypoints, policies and proxies), like `istioctl dashboard`. In a cluster, first
    /// `kubectl port-forward -n istio-system svc/istiod 15014`.
    Dashboard {
        /// The control plane's monitoring address (host:port, or just the port).
        #[arg(default_value = "127.0.0.1:15014")]
        address: String,
        /// Also open it in the desktop's browser (xdg-open).
        #[arg(long)]
        open: bool,
    },
    /// Change a running process's log filter (`RUST_LOG` syntax: `debug`, `info,access=off`) through its admin
    /// port, as `istioctl proxy-config log --level` does; prints the filter now in force.
    LogsLevel {
        /// The process's admin address (host:port, or just the port).
        process: String,
        level: String,
    },
    /// Manage waypoints (L7 proxies for a namespace's services).
    Waypoint {
        #[command(subcommand)]
        command: WaypointCommand,
    },
}

#[derive(clap::Args)]
struct InstallArgs {
    /// The namespace the mesh runs in (Istio's root namespace).
    #[arg(short, long, default_value = "istio-system")]
    namespace: String,
    /// A chart value, CHART.KEY=VALUE (charts: base, control, cni, ztunnel), e.g. --set ztunnel.logLevel=debug.
    /// Repeat it or separate with commas.
    #[arg(long = "set", value_name = "CHART.KEY=VALUE")]
    sets: Vec<String>,
    /// Like --set, but the value is always a string (`--set-string control.resources.limits.cpu=3`).
    #[arg(long = "set-string", value_name = "CHART.KEY=VALUE")]
    set_strings: Vec<String>,
}

#[derive(Subcommand)]
enum WaypointCommand {
    /// Declare a waypoint: a Gateway API `Gateway` of class istio-waypoint, written to
    /// `<dir>/waypoint-<namespace>-<name>.yaml` (or printed, like `istioctl waypoint generate`, without --dir).
    Apply(WaypointApply),
}

#[derive(clap::Args)]
struct WaypointApply {
    /// Namespace of the waypoint.
    #[arg(short, long)]
    namespace: String,
    /// Name of the waypoint Gateway.
    #[arg(long, default_value = "waypoint")]
    name: String,
    /// Traffic the waypoint handles (its `istio.io/waypoint-for` label).
    #[arg(long = "for", value_enum, default_value_t = WaypointFor::Service)]
    waypoint_for: WaypointFor,
    /// Also label the Namespace `istio.io/use-waypoint: <name>`, so its services use the waypoint.
    #[arg(long)]
    enroll_namespace: bool,
    /// The control plane's config directory; without it the YAML is printed.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Istio's `istio.io/waypoint-for` values.
#[derive(Clone, Copy, ValueEnum)]
enum WaypointFor {
    Service,
    Workload,
    All,
    None,
}

impl WaypointFor {
    fn label(self) -> &'static str {
        match self {
            WaypointFor::Service => "service",
            WaypointFor::Workload => "workload",
            WaypointFor::All => "all",
            WaypointFor::None => "none",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("meshctl {}", mesh_primitives::version!());
            ExitCode::SUCCESS
        }
        Command::Check {
            cni_conf_dir,
            cni_bin_dir,
        } => run_check(&check::Node {
            cni_conf_dir,
            cni_bin_dir,
        }),
        Command::Inject => run_inject(),
        Command::Analyze { dir } => analyze(&dir),
        Command::Crds => crds(),
        Command::Install(args) => run_install(&args, None),
        Command::Uninstall { args, purge } => run_install(&args, Some(purge)),
        Command::ProxyConfig {
            section,
            process,
            output,
        } => admin_reply(proxy_config::proxy_config(section, &process, output)),
        Command::Dashboard { address, open } => dashboard(&address, open),
        Command::LogsLevel { process, level } => {
            admin_reply(proxy_config::logs_level(&process, &level))
        }
        Command::Waypoint {
            command: WaypointCommand::Apply(args),
        } => waypoint_apply(&args),
    }
}

fn dashboard(address: &str, open: bool) -> ExitCode {
    let url = match proxy_config::dashboard_url(address) {
        Ok(url) => url,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    println!("{url}");
    if open {
        if let Err(e) = std::process::Command::new("xdg-open").arg(&url).status() {
            eprintln!("error: cannot open a browser (xdg-open: {e}); open {url} yourself");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn admin_reply(reply: Result<String, proxy_config::AdminError>) -> ExitCode {
    match reply {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_check(node: &check::Node) -> ExitCode {
    let findings = check::run(node);
    for f in &findings {
        match &f.problem {
            None => println!("ok    {:<12} {}", f.check, f.detail),
            Some(p) => println!("FAIL  {:<12} {p}", f.check),
        }
    }
    let failed = findings.iter().filter(|f| f.problem.is_some()).count();
    if failed == 0 {
        println!("all {} checks passed", findings.len());
        ExitCode::SUCCESS
    } else {
        println!("{failed} of {} checks failed", findings.len());
        ExitCode::FAILURE
    }
}

fn run_inject() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut input) {
        eprintln!("error: reading stdin: {e}");
        return ExitCode::from(2);
    }
    match inject::inject(&input) {
        Ok((out, outcomes)) => {
            for o in &outcomes {
                match o {
                    inject::Outcome::Labelled { what } => eprintln!(
                        "{what}: labelled {}=ambient (comments of this document are not kept)",
                        inject::LABEL
                    ),
                    inject::Outcome::OptedOut { what } => {
                        eprintln!("{what}: sets {} itself; left as it is", inject::LABEL)
                    }
                    inject::Outcome::Unchanged => {}
                }
            }
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}; nothing written");
            ExitCode::FAILURE
        }
    }
}

/// `purge`: `None` installs, `Some(_)` uninstalls.
fn run_install(args: &InstallArgs, purge: Option<bool>) -> ExitCode {
    match install::render(&args.namespace, &args.sets, &args.set_strings) {
        Ok(manifests) => {
            let text = match purge {
                None => install::install_text(&manifests),
                Some(purge) => install::uninstall_text(&manifests, purge),
            };
            write_stdout(&text, "the manifests")
        }
        Err(e) => {
            eprintln!("error: {e}; nothing written");
            ExitCode::from(2)
        }
    }
}

/// Writes to stdout; a closed pipe (`meshctl crds | head`) is the reader's choice, not an error.
fn write_stdout(text: &str, what: &str) -> ExitCode {
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: writing {what}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn crds() -> ExitCode {
    match mesh_model::crds::to_yaml() {
        Ok(yaml) => write_stdout(&yaml, "the CRDs"),
        Err(e) => {
            eprintln!("error: serializing the CRDs: {e}");
            ExitCode::FAILURE
        }
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

/// The waypoint Gateway, as `istioctl waypoint generate` writes it.
fn gateway_yaml(args: &WaypointApply) -> String {
    let gateway = json!({
        "apiVersion": format!("{}/v1", model::GATEWAY_GROUP),
        "kind": "Gateway",
        "metadata": {
            "name": args.name,
            "namespace": args.namespace,
            "labels": {LABEL_WAYPOINT_FOR: args.waypoint_for.label()},
        },
        "spec": {
            "gatewayClassName": WAYPOINT_CLASS,
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    });
    to_yaml(&gateway)
}

/// A Namespace enrolling its services in the waypoint, keeping `labels` it already has (from our own file).
fn namespace_yaml(args: &WaypointApply, mut labels: BTreeMap<String, String>) -> String {
    labels.insert(LABEL_USE_WAYPOINT.to_string(), args.name.clone());
    let namespace = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": args.namespace, "labels": labels},
    });
    to_yaml(&namespace)
}

fn to_yaml(value: &serde_json::Value) -> String {
    mesh_primitives::yaml::to_string(value).expect("a JSON value always serializes to YAML")
}

fn waypoint_apply(args: &WaypointApply) -> ExitCode {
    if let Err(e) = model::validate::check_dns_label(&args.namespace)
        .and_then(|()| model::validate::check_dns_label(&args.name))
    {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let Some(dir) = &args.dir else {
        print!("{}", gateway_yaml(args));
        if args.enroll_namespace {
            print!("---\n{}", namespace_yaml(args, BTreeMap::new()));
        }
        return ExitCode::SUCCESS;
    };
    if !dir.is_dir() {
        eprintln!("error: {} is not a directory", dir.display());
        return ExitCode::from(2);
    }
    let file = dir.join(format!("waypoint-{}-{}.yaml", args.namespace, args.name));
    if let Err(code) = write(&file, &gateway_yaml(args)) {
        return code;
    }
    if args.enroll_namespace {
        return enroll_namespace(args, dir);
    }
    ExitCode::SUCCESS
}

fn write(file: &Path, text: &str) -> Result<(), ExitCode> {
    match std::fs::write(file, text) {
        Ok(()) => {
            println!("wrote {}", file.display());
            Ok(())
        }
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", file.display());
            Err(ExitCode::FAILURE)
        }
    }
}

/// Labels the Namespace: in a file of our own when no other file declares it; a user's file is never rewritten,
/// the user is told which one to edit instead (exit 1), unless it already carries the label.
fn enroll_namespace(args: &WaypointApply, dir: &Path) -> ExitCode {
    let own = dir.join(format!("namespace-{}-waypoint.yaml", args.namespace));
    let (set, diagnostics) = model::load_dir(dir, None);
    let key = ObjectKey::new(Kind::Namespace, "", &args.namespace);
    // A declaration rejected as invalid still declares the Namespace: writing another would duplicate it.
    let declared_in = set.source(&key).map(Path::to_path_buf).or_else(|| {
        diagnostics
            .iter()
            .find(|d| d.kind == Kind::Namespace.name() && d.name == args.namespace)
            .and_then(|d| d.file.clone())
    });
    match declared_in {
        Some(file) if file != own => {
            let labelled = set
                .namespace(&args.namespace)
                .and_then(|n| n.metadata.label(LABEL_USE_WAYPOINT))
                == Some(args.name.as_str());
            if labelled {
                println!(
                    "Namespace {} already uses waypoint {} ({})",
                    args.namespace,
                    args.name,
                    file.display()
                );
                return ExitCode::SUCCESS;
            }
            eprintln!(
                "error: Namespace {} is declared in {}: add the label `{LABEL_USE_WAYPOINT}: {}` to its metadata.labels there (meshctl does not rewrite your files)",
                args.namespace,
                file.display(),
                args.name
            );
            ExitCode::FAILURE
        }
        _ => {
            // Our own file may have been edited since: keep its other labels.
            let labels = set
                .namespace(&args.namespace)
                .map(|n| n.metadata.labels.clone())
                .unwrap_or_default();
            match write(&own, &namespace_yaml(args, labels)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(code) => code,
            }
        }
    }
}
