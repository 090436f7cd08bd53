//! The relay's side of the outbox, in rooms: how entries are stored ([`layout`]), the
//! feed a relay opens ([`feed`]: [`MongoFeed`], which owns everything below), the reader
//! of undelivered entries that follows a change stream ([`reader`], [`stream`]), the lease
//! one relay at a time holds ([`lease`]), the saved position ([`position`]), marking
//! entries delivered ([`delivered`]) and deleting them ([`cleanup`]). [`Outbox`] ([`handle`]) is what
//! the feeds of one store handle share with it: the clean-up, and what the store inspects.
//!
//! # How entries are stored
//!
//! One document per unit of work, holding its entries in order (see [`layout`]): `_id` is
//! the sequence of its first entry, `last` that of its last, `entries` the envelopes. The
//! feed hands the relay individual entries; the server pays one insert, one change-stream
//! read and one delete per unit of work rather than per entry. Documents of the earlier
//! layout, one per entry, are read as documents of one entry.
//!
//! Why nothing is lost is told in [`reader`] (commit order, the scan, the stream) and
//! [`position`] (what the saved position promises); the lease's timing rules in [`lease`].

mod cleanup;
mod delivered;
mod feed;
mod handle;
pub(crate) mod layout;
mod lease;
mod marks;
mod position;
mod reader;
mod stream;

pub(crate) use self::cleanup::{CLEANUP_CHUNK, CLEANUP_INTERVAL};
pub(crate) use self::feed::MongoFeed;
pub(crate) use self::handle::Outbox;
pub use self::position::OUTBOX_POSITION_CHECKPOINT;
