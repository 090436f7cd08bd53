//! The outbox lease: one relay at a time delivers the outbox, the one holding the lease
//! document (`holder`, `expires_at`, and `delivered_below`, the delivered watermark). Taking
//! and renewing it, the timing rules a relay holding it follows, giving it up, and taking it
//! over from a holder that is provably gone (a relay of a process on this host that was
//! killed), so a restarted process delivers at once instead of after the dead relay's lease.
//!
//! The feed takes or renews the lease when it is used (`next`, `delivered`, `hold`) and
//! the relay took or renewed it more than a third of the lease ago: until then it surely
//! holds it, since no other relay takes it before it expires, and the feed saves a write.
//! A feed waiting for commits wakes to renew it then. A step that took longer than a
//! quarter of the lease (opening the stream, scanning) renews it before it hands its
//! entries out, so the lease runs from then. A mark written at once renews it in the same
//! update.

use std::time::{Duration, Instant, UNIX_EPOCH};

use eventflow::store::{relay_is_gone, OutboxLease};
use eventflow::Error;
use mongodb::bson::{doc, Document};
use mongodb::options::ReturnDocument;

use super::position::{self, Position};
use crate::client::Inner;
use crate::document::{self, int, now_nanos};
use crate::error::{backend, is_duplicate_key};

/// The `_id` of the lease document in the leases collection.
const LEASE_ID: &str = "outbox";

/// Until when a relay that took or renewed a lease of `lease` at `taken` surely holds it:
/// a third of the lease on, well before it expires, and no other relay takes it before it
/// expires. The feed does not take it again before then, and marks before then need not
/// check it.
pub(super) fn surely_held_until(taken: Instant, lease: Duration) -> Instant {
    taken + lease / 3
}

/// Whether a step of the feed that started at `started` took so long (a quarter of the lease) that
/// the lease should be renewed, to run from now, before its entries are handed out.
pub(super) fn renewal_due(started: Instant, lease: Duration) -> bool {
    started.elapsed() > lease / 4
}

/// Takes or renews the outbox lease for `relay`: the delivered watermark, or `None` while
/// another relay holds it.
pub(super) async fn acquire(inner: &Inner, relay: &str, lease: Duration) -> Result<Option<u64>, Error> {
    let now = now_nanos();
    let lease = i64::try_from(lease.as_nanos()).unwrap_or(i64::MAX);
    let previous = inner
        .leases
        .find_one_and_update(
            doc! {
                "_id": LEASE_ID,
                "$or": [ { "holder": relay }, { "expires_at": { "$lte": now } } ],
            },
            // Wall-clock time, because the relays sharing the lease may be in other processes.
            doc! { "$set": { "holder": relay, "expires_at": now.saturating_add(lease) } },
        )
        .upsert(true)
        .return_document(ReturnDocument::Before)
        .await;
    match previous {
        Ok(None) => Ok(Some(0)),
        Ok(Some(previous)) => Ok(Some(document::get_u64(&previous, "delivered_below").unwrap_or(0))),
        // Another relay holds it: the filter did not match, and the upsert hit its `_id`.
        // Unless that relay's process is provably gone, it keeps the lease.
        Err(error) if is_duplicate_key(&error) => {
            take_from_gone(inner, relay, Duration::from_nanos(lease as u64)).await
        }
        Err(error) => Err(backend("taking the outbox lease", error)),
    }
}

/// Moves the expiry of `relay`'s lease to `lease` from now, if it still holds it; whether
/// it does.
pub(super) async fn renew(inner: &Inner, relay: &str, lease: Duration) -> Result<bool, Error> {
    let lease = i64::try_from(lease.as_nanos()).unwrap_or(i64::MAX);
    let renewed = inner
        .leases
        .update_one(
            doc! { "_id": LEASE_ID, "holder": relay },
            doc! { "$set": { "expires_at": now_nanos().saturating_add(lease) } },
        )
        .await
        .map_err(|e| backend("renewing the outbox lease", e))?;
    Ok(renewed.matched_count > 0)
}

/// Gives `relay`'s lease up, if it still holds it. `reached` is what its relay delivered
/// (the watermark, and the position to save), if this handle's feed was positioned for it.
pub(super) async fn release(
    inner: &Inner,
    relay: &str,
    reached: Option<(u64, Option<Position>)>,
) -> Result<(), Error> {
    let mut release = doc! { "$set": { "expires_at": 0_i64 } };
    if let Some((watermark, position)) = reached {
        // Everything before it was marked delivered: it holds whoever has the lease now.
        if let Some(position) = position {
            position::save(inner, position)
                .await
                .map_err(|e| backend("saving the outbox relay position", e))?;
        }
        // With the release: whoever takes the lease next starts from it.
        if watermark > 0 {
            release.insert("$max", doc! { "delivered_below": int(watermark) });
        }
    }
    // Expired rather than deleted: the document keeps the delivered watermark.
    inner
        .leases
        .update_one(doc! { "_id": LEASE_ID, "holder": relay }, release)
        .await
        .map_err(|e| backend("releasing the outbox lease", e))?;
    Ok(())
}

/// The delivered watermark as written: every entry below it is delivered.
pub(super) async fn written_watermark(inner: &Inner) -> Result<u64, Error> {
    Ok(lease_document(inner)
        .await?
        .and_then(|lease| document::get_u64(&lease, "delivered_below").ok())
        .unwrap_or(0))
}

/// Fenced by the lease: raises the written watermark to `watermark` (if given) if `relay`
/// still holds the lease, counts a delivery, and renews the lease to `renew` from now (if
/// given) in the same update; whether it still holds it.
pub(super) async fn raise_watermark(
    inner: &Inner,
    relay: &str,
    watermark: Option<u64>,
    renew: Option<Duration>,
) -> Result<bool, mongodb::error::Error> {
    let mut update = doc! { "$inc": { "deliveries": 1_i64 } };
    if let Some(watermark) = watermark {
        update.insert("$max", doc! { "delivered_below": int(watermark) });
    }
    if let Some(lease) = renew {
        let lease = i64::try_from(lease.as_nanos()).unwrap_or(i64::MAX);
        update.insert("$set", doc! { "expires_at": now_nanos().saturating_add(lease) });
    }
    let fenced = inner
        .leases
        .update_one(doc! { "_id": LEASE_ID, "holder": relay }, update)
        .await?;
    Ok(fenced.matched_count > 0)
}

/// The lease document, if there is one.
async fn lease_document(inner: &Inner) -> Result<Option<Document>, Error> {
    inner
        .leases
        .find_one(doc! { "_id": LEASE_ID })
        .await
        .map_err(|e| backend("reading the outbox lease", e))
}

/// The lease document's holder and expiry, if there is a lease document with a holder.
fn lease_of(doc: &Document) -> Option<(String, i64)> {
    let holder = doc.get_str("holder").ok()?.to_owned();
    let expires_at = document::get_int(doc, "expires_at").unwrap_or(0);
    Some((holder, expires_at))
}

/// Who holds the outbox lease now, and until when.
pub(super) async fn read(inner: &Inner) -> Result<Option<OutboxLease>, Error> {
    Ok(lease_document(inner)
        .await?
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
async fn take_from_gone(inner: &Inner, relay: &str, lease: Duration) -> Result<Option<u64>, Error> {
    let current = lease_document(inner).await?;
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

/// The error of a relay whose feed lost the outbox lease.
pub(super) fn lost_lease(relay: &str) -> Error {
    Error::backend(format!(
        "relay `{relay}` lost the outbox lease (another relay took it after it ran out); the \
         entries it handed out and did not mark delivered will be delivered again: keep \
         batches short enough to deliver within the lease, or lengthen the lease"
    ))
}
