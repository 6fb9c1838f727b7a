//! What every mesh binary does around its main loop: logging set up the same way, and one shutdown signal.

/// Logs to stdout (as Istio's ztunnel does; a fatal error alone goes to stderr), filtered by `RUST_LOG` (default
/// `info`).
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    // `LOG_FORMAT=json`: one JSON object per line, for log collectors; text otherwise.
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true),
            )
            .init();
    } else {
        // Colour only for a person at a terminal: log files and collectors get plain text.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
        registry
            .with(tracing_subscriber::fmt::layer().with_ansi(ansi))
            .init();
    }
    let _ = LOG_FILTER.set(handle);
}

type FilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

static LOG_FILTER: std::sync::OnceLock<FilterHandle> = std::sync::OnceLock::new();

/// The log filter in force (`RUST_LOG` syntax), when [`init_tracing`] set one up.
pub fn log_filter() -> Option<String> {
    LOG_FILTER.get()?.with_current(|f| f.to_string()).ok()
}

/// Replaces the log filter at runtime (the admin port's `/logging?level=...`, as Envoy's and ztunnel's).
pub fn set_log_filter(spec: &str) -> Result<String, String> {
    let handle = LOG_FILTER
        .get()
        .ok_or_else(|| "logging is not set up in this process".to_string())?;
    let filter = tracing_subscriber::EnvFilter::try_new(spec)
        .map_err(|e| format!("invalid level {spec:?}: {e}"))?;
    handle.reload(filter).map_err(|e| e.to_string())?;
    Ok(log_filter().unwrap_or_default())
}

/// Resolves on SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
pub async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "no SIGTERM handler; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown requested");
}

/// A fatal error as one line: the error, then each cause after a colon, skipping a cause whose text the line
/// already holds (many errors repeat their source in their own message).
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// A binary's exit: 0, or 1 with its error as [`one_line`] on stderr.
pub fn report<E>(result: Result<(), E>) -> std::process::ExitCode
where
    E: AsRef<dyn std::error::Error + Send + Sync + 'static>,
{
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}
