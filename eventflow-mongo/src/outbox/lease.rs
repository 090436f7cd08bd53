//! The outbox lease as the other relays see it: who holds it and until when, and taking it
//! over from a holder that is provably gone (a relay of a process on this host that was
//! killed), so a restarted process delivers at once instead of after the dead relay's lease.

use std::time::{Duration, UNIX_EPOCH};

use eventflow::store::{relay_is_gone, OutboxLease};
use eventflow::Error;
use mongodb::bson::{doc, Document};
use mongodb::options::ReturnDocument;

use super::LEASE_ID;
use crate::client::Inner;
use crate::document::{self, now_nanos};
use crate::error::backend;

/// The lease document's holder and expiry, if there is a lease document with a holder.
fn lease_of(doc: &Document) -> Option<(String, i64)> {
    let holder = doc.get_str("holder").ok()?.to_owned();
    let expires_at = document::get_int(doc, "expires_at").unwrap_or(0);
    Some((holder, expires_at))
}

/// Who holds the outbox lease now, and until when.
pub(crate) async fn read(inner: &Inner) -> Result<Option<OutboxLease>, Error> {
    let lease = inner
        .leases
        .find_one(doc! { "_id": LEASE_ID })
        .await
        .map_err(|e| backend("reading the outbox lease", e))?;
    Ok(lease
        .as_ref()
        .and_then(lease_of)
        .map(|(holder, expires_at)| OutboxLease {
            holder,
            expires_at: UNIX_EPOCH + Duration::from_nanos(expires_at.max(0) as u64),
        }))
}

/// Takes the lease over from its current holder if that holder is provably gone; the
/// delivered watermark if it did. Compare-and-set on the holder and expiry read, so of two
/// relays racing for it one wins.
pub(crate) async fn take_from_gone(
    inner: &Inner,
    relay: &str,
    lease: Duration,
) -> Result<Option<u64>, Error> {
    let current = inner
        .leases
        .find_one(doc! { "_id": LEASE_ID })
        .await
        .map_err(|e| backend("reading the outbox lease", e))?;
    let Some((holder, expires_at)) = current.as_ref().and_then(lease_of) else {
        return Ok(None);
    };
    if holder == relay || !relay_is_gone(&holder) {
        return Ok(None);
    }
    let lease = i64::try_from(lease.as_nanos()).unwrap_or(i64::MAX);
    let taken = inner
        .leases
        .find_one_and_update(
            doc! { "_id": LEASE_ID, "holder": &holder, "expires_at": expires_at },
            doc! { "$set": { "holder": relay, "expires_at": now_nanos().saturating_add(lease) } },
        )
        .return_document(ReturnDocument::Before)
        .await
        .map_err(|e| backend("taking the outbox lease over", e))?;
    let Some(previous) = taken else {
        return Ok(None);
    };
    let left = Duration::from_nanos(expires_at.saturating_sub(now_nanos()).max(0) as u64);
    tracing::info!(%relay, previous = %holder, ?left,
        "took the outbox lease over before it expired: the relay holding it ran on this host and its process is gone");
    Ok(Some(document::get_u64(&previous, "delivered_below").unwrap_or(0)))
}
