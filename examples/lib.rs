//! Shared bits of the example programs.

/// Logs to stderr when `RUST_LOG` is set (e.g. `RUST_LOG=eventflow=debug`), so the spans of
/// every publish and handler invocation can be watched.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
}
