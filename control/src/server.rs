//! The control plane process: watches the config directory, translates it into xDS snapshots, and serves the CA
//! and delta xDS over gRPC with TLS on 15012, plus monitoring on 15014.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use http::StatusCode;
use mesh_core::ca::CertificateAuthority;
use mesh_primitives::identity::Identity;
use mesh_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use mesh_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateServiceServer;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::ca::{CaService, Caller, NodeIdentities, TokenAuthenticator};
use crate::config::{Config, ConfigSource};
use crate::xds::{AdsService, Snapshot, XdsMetrics};
use mesh_model::{self as model, ConfigSet, Diagnostic};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("CA: {0}")]
    Ca(#[from] mesh_core::ca::CaError),
    #[error("CA: {0}")]
    CaSecret(#[from] crate::ca_secret::CaSecretError),
    #[error("{field} {path}: {source}")]
    Read {
        field: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{field} {path}: {reason}")]
    Token {
        field: &'static str,
        path: String,
        reason: &'static str,
    },
    #[error(transparent)]
    Listen(#[from] mesh_core::admin::ListenError),
    #[error("Kubernetes client (in-cluster service account or kubeconfig): {0}")]
    Kube(kube::Error),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error(transparent)]
    Serving(#[from] crate::serving::ServingError),
}

/// How long a stopping control plane lets its gRPC calls finish (streams end at once, with UNAVAILABLE).
const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The control plane's identity (Istio's), and the names its serving certificate carries.
pub const CONTROL_SA: (&str, &str) = ("istio-system", "istiod");
pub const CONTROL_DNS: &[&str] = &[
    "istiod.istio-system.svc",
    "istiod.istio-system.svc.cluster.local",
    "localhost",
];

/// What `/debug/config_dump` and `/debug/analyze` show.
#[derive(Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub version: u64,
    pub config: Arc<ConfigSet>,
    pub diagnostics: Vec<String>,
}

/// Reads a file the config names; an error names the config field too.
fn read(field: &'static str, path: &Path) -> Result<String, StartError> {
    std::fs::read_to_string(path).map_err(|source| StartError::Read {
        field,
        path: path.display().to_string(),
        source,
    })
}

/// The CA: a plug-in CA's files when configured; else, in Kubernetes mode, the root every replica shares in the
/// `istio-ca-secret` Secret; else (file mode) the root kept in `caDir`.
async fn load_ca(
    cfg: &Config,
    kube_client: Option<&kube::Client>,
) -> Result<CertificateAuthority, StartError> {
    let mut ca = match (&cfg.plugin_ca, kube_client) {
        (Some(p), _) => CertificateAuthority::from_pem(
            &cfg.trust_domain,
            &read("pluginCa.certChain", &p.cert_chain)?,
            &read("pluginCa.key", &p.key)?,
        )
        .map_err(|source| mesh_core::ca::CaError::Load {
            what: "pluginCa.certChain/key",
            path: format!("{} / {}", p.cert_chain.display(), p.key.display()),
            source: Box::new(source),
        })?,
        (None, Some(client)) => {
            crate::ca_secret::load_or_create(client.clone(), &cfg.root_namespace, &cfg.trust_domain)
                .await?
        }
        (None, None) => CertificateAuthority::load_or_create(&cfg.ca_dir, &cfg.trust_domain)?,
    };
    for path in &cfg.trusted_roots {
        let added = ca.add_trusted_roots(&read("trustedRoots", path)?);
        tracing::info!(file = %path.display(), added, "extra trusted roots loaded");
    }
    Ok(ca)
}

/// File mode authentication: each node token authenticates that node's ztunnel (which may impersonate the node's
/// pods), each workload token one workload identity (which may obtain only itself).
pub fn authenticator(cfg: &Config) -> Result<TokenAuthenticator, StartError> {
    let nodes = cfg.node_tokens.iter().map(|t| {
        let field = "nodeTokens[].tokenFile";
        let caller = Caller {
            identity: Identity::new(&cfg.trust_domain, "istio-system", "ztunnel"),
            node: Some(t.node.clone()),
        };
        (field, &t.token_file, caller)
    });
    let workloads = cfg.workload_tokens.iter().map(|t| {
        let field = "workloadTokens[].tokenFile";
        let caller = Caller {
            identity: Identity::new(&cfg.trust_domain, &t.namespace, &t.service_account),
            node: None,
        };
        (field, &t.token_file, caller)
    });
    let mut tokens = HashMap::new();
    for (field, file, caller) in nodes.chain(workloads) {
        let token = read(field, file)?.trim().to_string();
        if token.is_empty() {
            return Err(StartError::Token {
                field,
                path: file.display().to_string(),
                reason: "empty",
            });
        }
        // One token for two callers would make either one the other: refuse to start instead.
        if tokens.insert(token, caller).is_some() {
            return Err(StartError::Token {
                field,
                path: file.display().to_string(),
                reason: "the same token as another nodeTokens/workloadTokens entry",
            });
        }
    }
    Ok(TokenAuthenticator::new(tokens))
}

/// Runs until `shutdown` resolves.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let kube_client = match cfg.config_source {
        ConfigSource::Kubernetes => Some(
            kube::Client::try_default()
                .await
                .map_err(StartError::Kube)?,
        ),
        ConfigSource::Files => None,
    };
    let ca = Arc::new(load_ca(&cfg, kube_client.as_ref()).await?);
    // Clients bootstrap trust from this file (Kubernetes: the istio-ca-root-cert ConfigMap).
    std::fs::create_dir_all(&cfg.ca_dir).map_err(|source| StartError::Read {
        field: "caDir",
        path: cfg.ca_dir.display().to_string(),
        source,
    })?;
    let root_file = cfg.ca_dir.join("root-cert.pem");
    if read("caDir", &root_file).ok() != Some(ca.root_pem()) {
        std::fs::write(&root_file, ca.root_pem()).map_err(|source| StartError::Read {
            field: "caDir",
            path: root_file.display().to_string(),
            source,
        })?;
    }
    let id = Identity::new(&cfg.trust_domain, CONTROL_SA.0, CONTROL_SA.1);
    let serving =
        crate::serving::ServingCert::new(ca.clone(), id, CONTROL_DNS, cfg.serving_certificate_ttl)?;

    let mut registry = Registry::default();
    mesh_core::metrics::register_build(&mut registry, "pilot");
    let auth: Arc<dyn crate::ca::Authenticator> = match &kube_client {
        Some(c) => Arc::new(crate::token_review::TokenReviewAuthenticator::new(
            c.clone(),
            &cfg.trust_domain,
            cfg.node_proxy_service_accounts.clone(),
        )),
        None => Arc::new(authenticator(&cfg)?),
    };
    let nodes = Arc::new(ArcSwap::from_pointee(NodeIdentities::default()));
    let ca_service = CaService::new(
        ca.clone(),
        auth.clone(),
        nodes.clone(),
        cfg.certificate_ttl,
        &mut registry,
    );
    let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot::default()));
    // Cancelled on shutdown: the election gives its Lease up and every xDS stream ends (clients reconnect).
    let stopping = tokio_util::sync::CancellationToken::new();
    // Renewal is timed from issuance, even while the first config is awaited.
    tokio::spawn(serving.clone().rotate(stopping.clone()));
    let mut first_config = snap_rx.clone();
    let view = crate::mesh_view::MeshView::new(Default::default(), PROXY_METRICS_PORT);
    view.spawn();
    let ads = AdsService::new(snap_rx, auth, XdsMetrics::register(&mut registry))
        .with_stop(stopping.clone())
        .with_proxies(view.proxies.clone());
    let refused_connections = prometheus_client::metrics::counter::Counter::default();
    registry.register(
        "mesh_control_connections_refused",
        "Connections to the gRPC port closed at once because maxConnections were open",
        refused_connections.clone(),
    );
    let rejected = Gauge::<i64>::default();
    registry.register(
        "mesh_config_rejected_objects",
        "Config objects currently rejected by validation (their last good version keeps serving)",
        rejected.clone(),
    );
    let status = Arc::new(ArcSwap::from_pointee(Status::default()));
    let publisher = Publisher {
        trust_domain: cfg.trust_domain.clone(),
        root_namespace: cfg.root_namespace.clone(),
        snapshots: snap_tx,
        nodes,
        status: status.clone(),
        rejected,
        version: 0,
    };
    // Kubernetes mode: this replica's part in the writers' Lease, given up when the process stops.
    let mut election_task = None;
    let (leading_tx, leading) = watch::channel(false);
    if let Some(client) = &kube_client {
        let stop = stopping.clone();
        election_task = Some(tokio::spawn(election(&cfg).run(
            client.clone(),
            leading_tx,
            async move { stop.cancelled().await },
        )));
    }
    match kube_client {
        Some(client) => tokio::spawn(watch_kube(
            client,
            publisher,
            crate::deploy::WaypointDeployment {
                trust_domain: cfg.trust_domain.clone(),
                ..cfg.waypoint_deployment.clone()
            },
            leading,
            ca.root_pem(),
        )),
        None => tokio::spawn(watch_dir(cfg.clone(), publisher)),
    };

    let registry = Arc::new(registry);
    let monitoring = mesh_core::admin::bind(
        "monitoring",
        "monitoringAddr, env MONITORING_ADDR",
        cfg.monitoring_addr,
    )
    .await?;
    let drain = mesh_core::drain::Drain::new();
    tokio::spawn(mesh_core::admin::serve(
        monitoring,
        monitoring_handler(registry, status.clone(), view, cfg.trust_domain.clone()),
        drain.watch(),
    ));

    // Nothing is served before the first config is published: a proxy reconnecting to a restarted control plane
    // would otherwise get an empty snapshot and delete all it holds, and the CA would refuse node proxies whose
    // pods it does not know yet. `/ready` says 503 until then.
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    tokio::select! {
        _ = first_config.changed() => {}
        _ = shutdown.clone() => return Ok(()),
    }
    tracing::info!(
        version = status.load().version,
        "first config published; serving"
    );
    let grpc = mesh_core::admin::bind(
        "gRPC (CA and xDS)",
        "grpcAddr, env GRPC_ADDR",
        cfg.grpc_addr,
    )
    .await?;
    tracing::info!(grpc = %cfg.grpc_addr, monitoring = %cfg.monitoring_addr, "control plane started");
    let stop = stopping.clone();
    let serve = tonic::transport::Server::builder()
        .add_service(IstioCertificateServiceServer::new(ca_service))
        .add_service(AggregatedDiscoveryServiceServer::new(ads))
        .serve_with_incoming_shutdown(
            crate::serving::incoming(
                grpc,
                serving.acceptor(),
                cfg.max_connections,
                refused_connections,
            ),
            async move {
                shutdown.await;
                stop.cancel();
            },
        );
    // Streams end at once when stopping; anything still open after the drain deadline is dropped with the process.
    tokio::select! {
        served = serve => served?,
        _ = async {
            stopping.cancelled().await;
            tokio::time::sleep(DRAIN_DEADLINE).await;
        } => tracing::warn!(deadline = ?DRAIN_DEADLINE, "connections still open after the drain deadline; exiting"),
    }
    stopping.cancel();
    if let Some(task) = election_task {
        // Giving the Lease up lets another replica take over at once instead of after it expires.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), task).await;
    }
    Ok(())
}

/// Where ztunnels and waypoints serve their metrics (Istio's 15020); the mesh page reads them there.
const PROXY_METRICS_PORT: u16 = 15020;

fn monitoring_handler(
    registry: Arc<Registry>,
    status: Arc<ArcSwap<Status>>,
    view: Arc<crate::mesh_view::MeshView>,
    trust_domain: String,
) -> mesh_core::admin::Handler {
    Arc::new(move |req| match req.uri.path() {
        "/dashboard" | "/dashboard/" => (
            StatusCode::OK,
            "text/html; charset=utf-8",
            crate::mesh_view::PAGE.to_string(),
        ),
        "/api/mesh" => mesh_core::admin::json(&view.json(&status.load(), &trust_domain)),
        p if mesh_core::admin::METRICS_PATHS.contains(&p) => {
            mesh_core::admin::metrics_reply(&registry)
        }
        "/ready" if status.load().version == 0 => mesh_core::admin::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first config is not published yet\n",
        ),
        "/ready" => mesh_core::admin::text(StatusCode::OK, "ready\n"),
        "/debug/config_dump" => mesh_core::admin::json(&**status.load()),
        "/debug/analyze" => {
            mesh_core::admin::text(StatusCode::OK, status.load().diagnostics.join("\n"))
        }
        _ => mesh_core::admin::text(
            StatusCode::NOT_FOUND,
            "try /dashboard, /metrics, /ready, /debug/config_dump\n",
        ),
    })
}

/// (path, modified, length) of every file under the directory: a change in any is a config change.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) => out.push((p, m.modified().ok(), m.len())),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

/// Turns each new config into an xDS snapshot, the CA's node identities and the debug status.
pub struct Publisher {
    pub trust_domain: String,
    pub root_namespace: String,
    pub snapshots: watch::Sender<Arc<Snapshot>>,
    pub nodes: Arc<ArcSwap<NodeIdentities>>,
    pub status: Arc<ArcSwap<Status>>,
    pub rejected: Gauge<i64>,
    pub version: u64,
}

impl Publisher {
    pub fn publish(&mut self, set: &Arc<ConfigSet>, diagnostics: &[Diagnostic], observed: Instant) {
        log_diagnostics(diagnostics);
        self.rejected
            .set(diagnostics.iter().filter(|d| d.is_error()).count() as i64);
        let out = mesh_translate::translate_with(set, &self.trust_domain, &self.root_namespace);
        self.version += 1;
        tracing::info!(
            version = self.version,
            resources = out.resource_count(),
            "config pushed"
        );
        self.nodes.store(Arc::new(out.nodes));
        let previous = self.snapshots.borrow().clone();
        self.snapshots.send_replace(Arc::new(Snapshot::new(
            self.version,
            observed,
            out.resources,
            Some(&previous),
        )));
        self.status.store(Arc::new(Status {
            version: self.version,
            config: Arc::clone(set),
            // Load-time rejections, then the cross-object checks `meshctl analyze` runs.
            diagnostics: diagnostics
                .iter()
                .chain(model::analyze(set).iter())
                .map(ToString::to_string)
                .collect(),
        }));
    }
}

/// File mode: waits for a change (inotify, with a slow poll behind it for what inotify misses, e.g. a
/// ConfigMap's symlink swap or a directory created later), debounces, reloads only the changed files (keeping
/// last good objects), publishes.
async fn watch_dir(cfg: Config, mut publisher: Publisher) {
    let (wake_tx, mut wake) = tokio::sync::mpsc::channel::<()>(1);
    let _watcher = notify_on_change(&cfg.config_dir, wake_tx);
    let mut cache = model::DirCache::default();
    let mut previous: Option<Arc<ConfigSet>> = None;
    let mut seen = None;
    loop {
        let now = fingerprint(&cfg.config_dir);
        if seen.as_ref() != Some(&now) {
            let observed = Instant::now();
            // Let a burst of edits settle into one push.
            tokio::time::sleep(cfg.debounce).await;
            while wake.try_recv().is_ok() {}
            if fingerprint(&cfg.config_dir) != now {
                continue;
            }
            seen = Some(now);
            let (set, diagnostics) = cache.load(&cfg.config_dir, previous.as_deref());
            let set = Arc::new(set);
            publisher.publish(&set, &diagnostics, observed);
            previous = Some(set);
        }
        tokio::select! {
            _ = wake.recv() => {}
            _ = tokio::time::sleep(cfg.poll_interval) => {}
        }
    }
}

/// Wakes `wake` on any change under `dir`. Without inotify (e.g. out of watches) the poll alone notices changes.
fn notify_on_change(
    dir: &Path,
    wake: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        let _ = wake.try_send(());
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config directory; polling only");
            return None;
        }
    };
    if let Err(e) = watcher.watch(dir, notify::RecursiveMode::Recursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; polling only");
        return None;
    }
    Some(watcher)
}

/// Kubernetes mode: every replica publishes what the watchers see; only the Lease holder writes.
async fn watch_kube(
    client: kube::Client,
    mut publisher: Publisher,
    waypoints: crate::deploy::WaypointDeployment,
    leading: watch::Receiver<bool>,
    root_pem: String,
) {
    let (tx, mut rx) = watch::channel((Arc::new(ConfigSet::new()), Vec::new()));
    tokio::spawn(crate::kube::run(client.clone(), tx));
    tokio::spawn(run_writer(
        rx.clone(),
        leading,
        crate::deploy::Deployer::new(client.clone(), waypoints),
        crate::root_cert::RootCertPublisher::new(client, root_pem),
    ));
    while rx.changed().await.is_ok() {
        let observed = Instant::now();
        let (set, diagnostics) = rx.borrow_and_update().clone();
        publisher.publish(&set, &diagnostics, observed);
    }
}

/// The API-server writes (the waypoint deployer), done while this replica holds the Lease. Gaining it applies the
/// current config at once; losing it forgets what was applied, so the next leader owns the objects.
pub async fn run_writer(
    mut config: watch::Receiver<crate::kube::Latest>,
    mut leading: watch::Receiver<bool>,
    mut deployer: crate::deploy::Deployer,
    mut root_cert: crate::root_cert::RootCertPublisher,
) {
    loop {
        if *leading.borrow_and_update() {
            let (set, _) = config.borrow_and_update().clone();
            if let Err(e) = root_cert.reconcile(&set).await {
                tracing::error!(error = %e, "publishing the root certificate failed; retried on the next change");
            }
            if let Err(e) = deployer.reconcile(&set).await {
                tracing::error!(error = %e, "deploying waypoints failed; retried on the next change");
            }
        } else {
            deployer.forget();
            root_cert.forget();
        }
        tokio::select! {
            r = config.changed() => if r.is_err() { return },
            r = leading.changed() => if r.is_err() { return },
        }
    }
}

/// This replica in a Lease: its pod name (the `HOSTNAME` Kubernetes sets), else one made unique by the process id.
fn election(cfg: &Config) -> crate::leader::Election {
    crate::leader::Election {
        namespace: cfg.root_namespace.clone(),
        identity: std::env::var("HOSTNAME")
            .unwrap_or_else(|_| format!("control-{}", std::process::id())),
        lease_duration: std::time::Duration::from_secs(15),
        renew_every: std::time::Duration::from_secs(5),
    }
}

fn log_diagnostics(diagnostics: &[Diagnostic]) {
    for d in diagnostics {
        match d.severity {
            model::Severity::Error => tracing::error!(
                "{d}; rejected (its last good version, if it had one, keeps serving)"
            ),
            model::Severity::Warning => tracing::warn!("{d}"),
        }
    }
}
