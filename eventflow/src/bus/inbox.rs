//! Keeping the inbox bounded: the bus forgets processed-event markers older than its
//! [`inbox_retention`](super::EventBusBuilder::inbox_retention).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::store::Storage;
use crate::Error;

/// How long markers are kept unless configured otherwise.
pub(super) const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The longest wait between two prunings.
const MAX_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Prunes markers older than `retention` now and then (a tenth of the retention, at most
/// hourly), until shutdown. A backend that cannot prune is reported once and left alone.
pub(super) async fn prune(
    storage: Arc<dyn Storage>,
    retention: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = (retention / 10).clamp(Duration::from_millis(100), MAX_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let Some(before) = SystemTime::now().checked_sub(retention) else {
            continue;
        };
        match storage.prune_inbox(before).await {
            Ok(0) => {}
            Ok(pruned) => tracing::debug!(pruned, ?retention, "pruned the inbox"),
            Err(Error::Unsupported(reason)) => {
                tracing::warn!(%reason, "the inbox is not pruned");
                return;
            }
            Err(error) => tracing::warn!(%error, "pruning the inbox failed; trying again later"),
        }
    }
}
