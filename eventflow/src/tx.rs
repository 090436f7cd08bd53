//! [`Tx`]: a handler's share of the unit of work that records its inbox marker.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use tokio::sync::{Mutex, MutexGuard};

use crate::store::Transaction;
use crate::{Context, FromContext};

/// The transaction a handler's own writes share with its processed-event marker: both
/// commit when the handler returns `Ok`, or neither does. This gives an exactly-once
/// effect for writes to the bus's storage.
///
/// Taking `Tx` as an argument makes the handler transactional; it needs a bus with
/// [`storage`](crate::EventBusBuilder::storage). Reach the backend's transaction with
/// `downcast_mut::<T>()` (an inherent method of `dyn Transaction`):
///
/// ```
/// # use eventflow::{subscribe, Event, Tx};
/// # use eventflow::store::ExpectedVersion;
/// # #[derive(Event, serde::Serialize, serde::Deserialize, Clone)]
/// # struct OrderPaid { order_id: String }
/// #[subscribe(group = "ledger")]
/// async fn book(order: OrderPaid, tx: Tx) -> Result<(), eventflow::Error> {
///     let mut tx = tx.lock().await;
///     // e.g. tx.downcast_mut::<SqliteTransaction>() for SQL writes
///     tx.append(&format!("ledger-{}", order.order_id), ExpectedVersion::Any, &[]).await?;
///     Ok(())
/// }
/// ```
///
/// The transaction ends when the handler returns; a `Tx` kept beyond that panics on use.
#[derive(Clone)]
pub struct Tx(Arc<Mutex<Option<Box<dyn Transaction>>>>);

/// Exclusive access to a handler's transaction, from [`Tx::lock`].
pub struct TxGuard<'a>(MutexGuard<'a, Option<Box<dyn Transaction>>>);

impl Tx {
    pub(crate) fn new(tx: Box<dyn Transaction>) -> Self {
        Tx(Arc::new(Mutex::new(Some(tx))))
    }

    pub(crate) async fn take(&self) -> Option<Box<dyn Transaction>> {
        self.0.lock().await.take()
    }

    /// Locks the transaction for some writes.
    pub async fn lock(&self) -> TxGuard<'_> {
        TxGuard(self.0.lock().await)
    }
}

impl Deref for TxGuard<'_> {
    type Target = dyn Transaction;

    fn deref(&self) -> &Self::Target {
        self.0
            .as_deref()
            .expect("a handler's Tx was used after the handler returned")
    }
}

impl DerefMut for TxGuard<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0
            .as_deref_mut()
            .expect("a handler's Tx was used after the handler returned")
    }
}

impl FromContext for Tx {
    const TRANSACTIONAL: bool = true;

    fn from_context(ctx: &Context) -> Result<Self, String> {
        ctx.transaction.clone().ok_or_else(|| {
            "it takes `Tx` but the bus has no storage; add one with `EventBus::builder().storage(store)`"
                .to_owned()
        })
    }
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").finish_non_exhaustive()
    }
}
