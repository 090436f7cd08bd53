//! [`Tx`]: a handler's share of the unit of work that records its inbox marker, typed as
//! the storage backend's own transaction if the handler wants it.

use std::any::{type_name, Any, TypeId};
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use tokio::sync::{Mutex, MutexGuard};

use crate::store::Transaction;

/// The transaction a handler's own writes share with its processed-event marker: both
/// commit when the handler returns `Ok`, or neither does. This gives an exactly-once
/// effect for writes to the bus's storage.
///
/// Taking `Tx` as an argument makes the handler transactional; it needs a bus with
/// [`storage`](crate::EventBusBuilder::storage). Name the backend's transaction type to get
/// it typed, as sqlx gives `&mut *tx`: `Tx<SqliteTransaction>` (or
/// `Tx<eventflow_mongo::MongoTransaction>`) locks into the backend's own transaction, with
/// its connection or session. Plain `Tx` (`Tx<dyn Transaction>`) works on any storage, with
/// the [`Transaction`] methods. A handler whose `Tx` names another backend than the bus's
/// storage fails [`start`](crate::EventBusBuilder::start), with both types named.
///
/// ```
/// # use eventflow::{subscribe, Event, Tx};
/// use eventflow::store::SqliteTransaction;
/// # #[derive(Event, serde::Serialize, serde::Deserialize, Clone)]
/// # struct OrderPaid { order_id: String, total_cents: u64 }
/// #[subscribe(group = "ledger")]
/// async fn book(order: OrderPaid, tx: Tx<SqliteTransaction>) -> Result<(), eventflow::Error> {
///     let tx = tx.lock().await;
///     tx.connection().execute(
///         "INSERT INTO ledger (order_id, cents) VALUES (?1, ?2)",
///         (&order.order_id, order.total_cents as i64),
///     )?; // `?` turns a rusqlite::Error into eventflow::Error
///     Ok(())
/// }
/// ```
///
/// The transaction ends when the handler returns; a `Tx` kept beyond that panics on use.
pub struct Tx<T: ?Sized + TransactionType = dyn Transaction> {
    cell: Arc<Mutex<Option<Box<dyn Transaction>>>>,
    /// The type of the backend's transaction in `cell`, and its name.
    held: (TypeId, &'static str),
    typed: PhantomData<fn() -> Box<T>>,
}

/// Exclusive access to a handler's transaction, from [`Tx::lock`]: dereferences to `T`.
pub struct TxGuard<'a, T: ?Sized + TransactionType = dyn Transaction> {
    guard: MutexGuard<'a, Option<Box<dyn Transaction>>>,
    typed: PhantomData<fn() -> Box<T>>,
}

/// What a [`Tx`] can be typed as: `dyn Transaction` (any storage) or a backend's own
/// transaction type (any [`Transaction`], such as `SqliteTransaction`).
pub trait TransactionType: Send + 'static {
    /// The backend's transaction type this stands for; `None` for any.
    fn wanted() -> Option<TypeId>;

    /// Its name, for error messages.
    fn name() -> &'static str;

    /// `tx` as this type, if it is one.
    fn view(tx: &dyn Transaction) -> Option<&Self>;

    /// `tx` as this type, if it is one.
    fn view_mut(tx: &mut dyn Transaction) -> Option<&mut Self>;
}

impl TransactionType for dyn Transaction {
    fn wanted() -> Option<TypeId> {
        None
    }

    fn name() -> &'static str {
        "dyn Transaction"
    }

    fn view(tx: &dyn Transaction) -> Option<&Self> {
        Some(tx)
    }

    fn view_mut(tx: &mut dyn Transaction) -> Option<&mut Self> {
        Some(tx)
    }
}

impl<T: Transaction> TransactionType for T {
    fn wanted() -> Option<TypeId> {
        Some(TypeId::of::<T>())
    }

    fn name() -> &'static str {
        type_name::<T>()
    }

    fn view(tx: &dyn Transaction) -> Option<&Self> {
        (tx as &dyn Any).downcast_ref::<T>()
    }

    fn view_mut(tx: &mut dyn Transaction) -> Option<&mut Self> {
        (tx as &mut dyn Any).downcast_mut::<T>()
    }
}

impl Tx {
    pub(crate) fn new(tx: Box<dyn Transaction>) -> Self {
        let held = ((*tx).type_id(), tx.type_name());
        Tx {
            cell: Arc::new(Mutex::new(Some(tx))),
            held,
            typed: PhantomData,
        }
    }

    pub(crate) async fn take(&self) -> Option<Box<dyn Transaction>> {
        self.cell.lock().await.take()
    }

    /// This transaction as `T`, or what is wrong.
    pub(crate) fn typed<T: ?Sized + TransactionType>(&self) -> Result<Tx<T>, String> {
        match T::wanted() {
            Some(wanted) if wanted != self.held.0 => Err(mismatch::<T>(self.held.1)),
            _ => Ok(Tx {
                cell: self.cell.clone(),
                held: self.held,
                typed: PhantomData,
            }),
        }
    }
}

impl<T: ?Sized + TransactionType> Tx<T> {
    /// Locks the transaction for some writes.
    pub async fn lock(&self) -> TxGuard<'_, T> {
        TxGuard {
            guard: self.cell.lock().await,
            typed: PhantomData,
        }
    }
}

impl<T: ?Sized + TransactionType> Clone for Tx<T> {
    fn clone(&self) -> Self {
        Tx {
            cell: self.cell.clone(),
            held: self.held,
            typed: PhantomData,
        }
    }
}

impl<T: ?Sized + TransactionType> Deref for TxGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        let tx = self
            .guard
            .as_deref()
            .expect("a handler's Tx was used after the handler returned");
        T::view(tx).expect("the type of a Tx is checked when the handler receives it")
    }
}

impl<T: ?Sized + TransactionType> DerefMut for TxGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        let tx = self
            .guard
            .as_deref_mut()
            .expect("a handler's Tx was used after the handler returned");
        T::view_mut(tx).expect("the type of a Tx is checked when the handler receives it")
    }
}

pub(crate) fn mismatch<T: ?Sized + TransactionType>(held: &str) -> String {
    format!(
        "it takes `Tx<{}>`, but the bus's storage gives units of work of type `{held}`; take \
         `Tx<{held}>` (or plain `Tx`, which works on any storage), or give the bus the storage \
         the handler was written for",
        T::name()
    )
}

impl<T: ?Sized + TransactionType> std::fmt::Debug for Tx<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("transaction", &self.held.1)
            .finish_non_exhaustive()
    }
}
