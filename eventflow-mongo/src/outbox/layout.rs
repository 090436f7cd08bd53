//! How the outbox stores its entries: one document per unit of work.
//!
//! ```text
//! { _id: 41, last: 43, entries: [ {event_id, name, ..., payload}, {...}, {...} ] }
//! ```
//!
//! A unit of work reserves dense sequences `first..=last` from the counter and inserts one
//! document holding its entries in order: entry `i` has sequence `_id + i`. One document
//! per unit of work rather than per entry, because each document costs the server an
//! insert, a change-stream read and a delete whatever its size (NEventStore keeps its
//! "commits" on MongoDB the same way). A unit of work whose entries would make a document
//! larger than [`MAX_DOCUMENT_BYTES`] gets several documents, split on entry boundaries,
//! so that no document or change event nears MongoDB's 16 MiB limit.
//!
//! `delivered`, if present, lists the sequences of entries delivered out of order (before
//! an older entry): they are not handed out again.
//!
//! Documents without `entries` are the earlier layout, one document per entry with the
//! envelope at the top level and the sequence as `_id`; they are read as documents of one
//! entry, so an outbox written by an earlier build is relayed (and cleaned up) without a
//! migration, and the two layouts may sit side by side.

use eventflow::store::OutboxEntry;
use eventflow::{Envelope, Error};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};

use crate::client::Inner;
use crate::document::{self, int};
use crate::error::backend;

/// The sequence of a document's last entry.
pub(crate) const LAST: &str = "last";
/// A document's entries, in sequence order.
pub(crate) const ENTRIES: &str = "entries";
/// The sequences of a document's entries delivered out of order.
pub(crate) const DELIVERED: &str = "delivered";

/// About how large a document may grow before a unit of work's entries go on in another.
pub(crate) const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// The documents holding `envelopes`, numbered from `first`.
pub(crate) fn documents(first: u64, envelopes: &[Envelope]) -> Result<Vec<Document>, Error> {
    let mut documents = Vec::new();
    let mut entries: Vec<Bson> = Vec::new();
    let mut start = first;
    let mut bytes = 0;
    for (sequence, envelope) in (first..).zip(envelopes) {
        let size = estimated_size(envelope);
        if !entries.is_empty() && bytes + size > MAX_DOCUMENT_BYTES {
            documents.push(document(start, sequence - 1, std::mem::take(&mut entries)));
            start = sequence;
            bytes = 0;
        }
        let mut entry = Document::new();
        document::put_envelope(&mut entry, envelope)?;
        entries.push(Bson::Document(entry));
        bytes += size;
    }
    if !entries.is_empty() {
        let last = start + entries.len() as u64 - 1;
        documents.push(document(start, last, entries));
    }
    Ok(documents)
}

fn document(first: u64, last: u64, entries: Vec<Bson>) -> Document {
    doc! { "_id": int(first), LAST: int(last), ENTRIES: entries }
}

/// An upper estimate of an envelope's size in BSON, without encoding it.
fn estimated_size(envelope: &Envelope) -> usize {
    let headers: usize = envelope.headers.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
    envelope.payload.len()
        + envelope.name.len()
        + envelope.topic.len()
        + envelope.key.as_ref().map_or(0, String::len)
        + envelope.content_type.len()
        + headers
        + 256
}

/// An outbox document as read: the sequences it holds and its undelivered entries.
#[derive(Debug)]
pub(crate) struct Stored {
    /// Its first sequence, its `_id`.
    pub(crate) first: u64,
    /// Its last sequence.
    pub(crate) last: u64,
    /// Its entries not delivered out of order, in sequence order.
    pub(crate) entries: Vec<OutboxEntry>,
}

impl Stored {
    /// How many sequences it holds.
    pub(crate) fn size(&self) -> u64 {
        self.last - self.first + 1
    }
}

/// Reads an outbox document of either layout. `Err` only if its sequences are unreadable;
/// an entry that does not read whole is handed over as corrupt, on its own, for the relay
/// to dead-letter.
pub(crate) fn read(doc: &Document) -> Result<Stored, String> {
    let first = document::get_u64(doc, "_id")?;
    let Some(stored) = doc.get(ENTRIES) else {
        // One entry per document, the envelope at the top level.
        return Ok(Stored {
            first,
            last: first,
            entries: delivered(doc)?
                .contains(&first)
                .then(Vec::new)
                .unwrap_or_else(|| vec![entry(first, doc)]),
        });
    };
    let last = document::get_u64(doc, LAST)?;
    if last < first {
        return Err(format!("`{LAST}` ({last}) is below `_id` ({first})"));
    }
    let delivered = delivered(doc)?;
    let empty = Vec::new();
    let (stored, unreadable) = match stored {
        Bson::Array(stored) => (stored, None),
        other => (&empty, Some(format!("`{ENTRIES}` is {other:?}, not an array"))),
    };
    let count = last - first + 1;
    if stored.len() as u64 > count {
        tracing::warn!(
            document = first,
            last,
            entries = stored.len(),
            "an outbox document holds more entries than its `_id` and `last` number; the \
             entries past `last` are ignored: the document was changed by something other \
             than eventflow"
        );
    }
    let entries = (first..=last)
        .zip(0usize..)
        .filter(|(sequence, _)| !delivered.contains(sequence))
        .map(|(sequence, index)| match (stored.get(index), &unreadable) {
            (Some(Bson::Document(stored)), _) => entry(sequence, stored),
            (_, Some(reason)) => corrupt(sequence, &Document::new(), reason),
            (Some(other), None) => corrupt(
                sequence,
                &Document::new(),
                &format!("it is {other:?}, not a document"),
            ),
            (None, None) => corrupt(
                sequence,
                &Document::new(),
                &format!("it is missing from the document `_id` {first}, whose `{ENTRIES}` is short"),
            ),
        })
        .collect();
    Ok(Stored { first, last, entries })
}

fn delivered(doc: &Document) -> Result<Vec<u64>, String> {
    match doc.get(DELIVERED) {
        None | Some(Bson::Null) => Ok(Vec::new()),
        Some(Bson::Array(sequences)) => sequences
            .iter()
            .map(|sequence| match sequence {
                Bson::Int64(n) => u64::try_from(*n).map_err(|_| format!("`{DELIVERED}` holds {n}")),
                Bson::Int32(n) => u64::try_from(*n).map_err(|_| format!("`{DELIVERED}` holds {n}")),
                other => Err(format!("`{DELIVERED}` holds {other:?}, not a sequence")),
            })
            .collect(),
        Some(other) => Err(format!("`{DELIVERED}` is {other:?}, not an array")),
    }
}

/// The entry with `sequence` stored in `doc`.
fn entry(sequence: u64, doc: &Document) -> OutboxEntry {
    match document::envelope(doc) {
        Ok(envelope) => OutboxEntry::new(sequence, envelope),
        Err(reason) => corrupt(sequence, doc, &reason),
    }
}

fn corrupt(sequence: u64, doc: &Document, reason: &str) -> OutboxEntry {
    OutboxEntry {
        sequence,
        envelope: document::salvage_envelope(doc),
        corrupt: Some(format!("outbox entry {sequence} cannot be read: {reason}")),
    }
}

/// The `_id` of the first document that may hold a sequence after `after`: the one holding
/// both `after` and `after + 1`, if there is one.
pub(crate) async fn first_document_after(inner: &Inner, after: u64) -> Result<u64, mongodb::error::Error> {
    if after == 0 {
        return Ok(0);
    }
    let holding = inner
        .outbox
        .find_one(doc! { "_id": { "$lte": int(after) } })
        .sort(doc! { "_id": -1 })
        .projection(doc! { "_id": 1, LAST: 1 })
        .await?;
    let straddles = holding.and_then(|doc| {
        let first = document::get_u64(&doc, "_id").ok()?;
        let last = document::get_u64(&doc, LAST).ok()?;
        (last > after).then_some(first)
    });
    Ok(straddles.unwrap_or(after + 1))
}

/// How many entries at or above `watermark` the outbox holds that are not delivered out
/// of order: the relay's backlog.
pub(crate) async fn count_undelivered(inner: &Inner, watermark: u64) -> Result<u64, Error> {
    let start = first_document_after(inner, watermark.saturating_sub(1))
        .await
        .map_err(|e| backend("counting the outbox", e))?;
    let documents: Vec<Document> = inner
        .outbox
        .find(doc! { "_id": { "$gte": int(start) } })
        .projection(doc! { "_id": 1, LAST: 1, DELIVERED: 1 })
        .await
        .map_err(|e| backend("counting the outbox", e))?
        .try_collect()
        .await
        .map_err(|e| backend("counting the outbox", e))?;
    let mut count = 0;
    for doc in &documents {
        let first = document::get_u64(doc, "_id")
            .map_err(|reason| crate::error::unreadable("an outbox document", reason))?;
        let last = document::get_u64(doc, LAST).unwrap_or(first);
        let from = first.max(watermark);
        if last < from {
            continue;
        }
        let delivered = match doc.get(DELIVERED) {
            Some(Bson::Array(sequences)) => sequences
                .iter()
                .filter_map(|s| s.as_i64().or_else(|| s.as_i32().map(i64::from)))
                .filter(|&s| u64::try_from(s).is_ok_and(|s| (from..=last).contains(&s)))
                .count() as u64,
            _ => 0,
        };
        count += (last - from + 1).saturating_sub(delivered);
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::field;

    fn event(n: u32) -> Envelope {
        Envelope::new("a", n, "t", "application/json", "{}")
    }

    #[test]
    fn a_unit_of_work_is_one_document_read_back_as_its_entries() {
        let envelopes: Vec<Envelope> = (1..=3).map(event).collect();
        let documents = documents(41, &envelopes).unwrap();
        assert_eq!(documents.len(), 1);
        let stored = read(&documents[0]).unwrap();
        assert_eq!((stored.first, stored.last, stored.size()), (41, 43, 3));
        let read: Vec<(u64, Envelope)> = stored
            .entries
            .into_iter()
            .map(|e| (e.sequence, e.envelope))
            .collect();
        assert_eq!(read, (41..).zip(envelopes).collect::<Vec<_>>());
    }

    #[test]
    fn large_units_of_work_are_split_on_entry_boundaries() {
        let big = |n| {
            Envelope::new(
                "a",
                n,
                "t",
                "application/json",
                vec![b'1'; MAX_DOCUMENT_BYTES / 3],
            )
        };
        let envelopes: Vec<Envelope> = (1..=7).map(big).collect();
        let documents = documents(1, &envelopes).unwrap();
        assert!(documents.len() > 1);
        let mut next = 1;
        for doc in &documents {
            let stored = read(doc).unwrap();
            assert_eq!(stored.first, next);
            next = stored.last + 1;
            for entry in stored.entries {
                assert_eq!(entry.envelope, envelopes[entry.sequence as usize - 1]);
            }
        }
        assert_eq!(next, 8);
    }

    #[test]
    fn a_corrupt_entry_is_handed_over_on_its_own() {
        let envelopes: Vec<Envelope> = (1..=3).map(event).collect();
        let mut doc = documents(10, &envelopes).unwrap().remove(0);
        let entries = doc.get_array_mut(ENTRIES).unwrap();
        entries[1]
            .as_document_mut()
            .unwrap()
            .insert(field::CREATED_AT, "yesterday");
        let stored = read(&doc).unwrap();
        let corrupt: Vec<bool> = stored.entries.iter().map(|e| e.corrupt.is_some()).collect();
        assert_eq!(corrupt, [false, true, false]);
        assert_eq!(stored.entries[1].sequence, 11);
        assert_eq!(stored.entries[1].envelope.id, envelopes[1].id);
        assert!(stored.entries[1].corrupt.as_ref().unwrap().contains("created_at"));
    }

    #[test]
    fn entries_delivered_out_of_order_are_left_out() {
        let envelopes: Vec<Envelope> = (1..=3).map(event).collect();
        let mut doc = documents(10, &envelopes).unwrap().remove(0);
        doc.insert(DELIVERED, vec![Bson::Int64(11)]);
        let stored = read(&doc).unwrap();
        let sequences: Vec<u64> = stored.entries.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, [10, 12]);
    }

    #[test]
    fn the_one_document_per_entry_layout_is_still_read() {
        let envelope = event(1);
        let mut doc = doc! { "_id": 7_i64 };
        document::put_envelope(&mut doc, &envelope).unwrap();
        let stored = read(&doc).unwrap();
        assert_eq!((stored.first, stored.last), (7, 7));
        assert_eq!(stored.entries, [OutboxEntry::new(7, envelope)]);
    }
}
