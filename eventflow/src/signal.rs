//! [`shutdown_signal`]: the moment a service is asked to stop.

/// Resolves when the process is asked to stop: Ctrl-C (SIGINT) or, on Unix, SIGTERM (what
/// `docker stop`, Kubernetes and systemd send).
///
/// For `tokio::select!`, or hand it to [`EventBus::run_until_signal`](crate::EventBus::run_until_signal)
/// which waits for it and then shuts the bus down gracefully:
///
/// ```no_run
/// # async fn run(bus: eventflow::EventBus) {
/// tokio::select! {
///     _ = eventflow::shutdown_signal() => {}
///     _ = std::future::pending::<()>() => {} // the application's own work
/// }
/// bus.shutdown().await; // handles what was published, then returns
/// # }
/// ```
///
/// If a signal handler cannot be installed (no signal support in the runtime), it logs why
/// and never resolves, rather than stopping the service at once.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C; stop the process another way");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; stop the process with Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received: shutting down"),
        _ = terminate => tracing::info!("SIGTERM received: shutting down"),
    }
}
