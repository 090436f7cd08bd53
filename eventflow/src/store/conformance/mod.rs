//! The storage conformance suite: one async function per guarantee, run unchanged against
//! every backend — [`MemoryStore`](super::MemoryStore), SQLite, MongoDB, and yours — in
//! one module per storage trait.
//!
//! Each function takes a fresh, empty store and panics with a message naming the broken
//! guarantee. [`storage_conformance!`](crate::storage_conformance) turns them into one
//! `#[tokio::test]` each, the whole suite for a [`Storage`](super::Storage):
//!
//! ```
//! # mod wrapper {
//! eventflow::storage_conformance!(async { eventflow::store::MemoryStore::new() });
//! # }
//! ```
//!
//! A backend written trait by trait runs the module of each trait as it goes: the dead
//! letters and checkpoints need only their own trait, the rest write through
//! [`Storage::begin`](super::Storage::begin). Here a backend with nothing but its
//! checkpoints so far:
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::Mutex;
//!
//! use eventflow::store::{conformance, CheckpointStore};
//! use eventflow::Error;
//!
//! #[derive(Default)]
//! struct MyStore(Mutex<HashMap<String, String>>);
//!
//! #[async_trait::async_trait]
//! impl CheckpointStore for MyStore {
//!     async fn checkpoint(&self, name: &str) -> Result<Option<String>, Error> {
//!         Ok(self.0.lock().unwrap().get(name).cloned())
//!     }
//!
//!     async fn save_checkpoint(&self, name: &str, value: &str) -> Result<(), Error> {
//!         self.0.lock().unwrap().insert(name.to_owned(), value.to_owned());
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! conformance::checkpoints_are_saved(&MyStore::default()).await;
//! # }
//! ```
//!
//! In a test crate, [`storage_conformance!`](crate::storage_conformance) takes the trait's
//! module name before the store, and makes one `#[tokio::test]` per guarantee of it:
//!
//! ```
//! # mod wrapper {
//! eventflow::storage_conformance!(dead_letters: async { eventflow::store::MemoryStore::new() });
//! # }
//! ```
//!
//! | Module | Trait | Macro arm |
//! |---|---|---|
//! | [`event_store`] | [`EventStore`](super::EventStore) | `event_store:` |
//! | [`units_of_work`] | [`Transaction`](super::Transaction) | `units_of_work:` |
//! | [`leased_outbox`] | [`LeasedOutbox`](super::LeasedOutbox) (row stores; not in the whole suite) | `leased_outbox:` |
//! | [`relay`] | [`OutboxStore`](super::OutboxStore) through its [`OutboxFeed`](super::OutboxFeed) | `relay:` |
//! | [`inbox`] | [`InboxStore`](super::InboxStore) | `inbox:` |
//! | [`dead_letters`] | [`DeadLetterStore`](super::DeadLetterStore) | `dead_letters:` |
//! | [`checkpoints`] | [`CheckpointStore`](super::CheckpointStore) | `checkpoints:` |
//! | [`snapshots`] | [`SnapshotStore`](super::SnapshotStore) | `snapshots:` |
//! | [`projections`] | what a projection needs of all of them | `projections:` |

pub mod checkpoints;
mod dead_letter_operations;
pub mod dead_letters;
pub mod event_store;
pub mod inbox;
pub mod leased_outbox;
pub mod projections;
pub mod relay;
pub mod snapshots;
mod support;
pub mod units_of_work;

pub use checkpoints::*;
pub use dead_letters::*;
pub use event_store::*;
pub use inbox::*;
pub use leased_outbox::*;
pub use projections::*;
pub use relay::*;
pub use snapshots::*;
pub use units_of_work::*;

/// Runs guarantees of the suite as their own `#[tokio::test]`, each on a store made by
/// `$make` (an expression of a future yielding a fresh store): all of them, or those of one
/// trait's module when its name comes first (`dead_letters: $make`, see
/// [`conformance`](crate::store::conformance)).
#[macro_export]
macro_rules! storage_conformance {
    (event_store: $make:expr) => {
        $crate::storage_conformance!(@tests $make;
            a_stale_append_is_a_conflict,
            concurrent_appends_to_one_stream_never_overwrite,
            read_all_follows_commit_order,
        );
    };
    (units_of_work: $make:expr) => {
        $crate::storage_conformance!(@tests $make;
            a_unit_of_work_commits_everything_at_once,
            a_dropped_unit_of_work_leaves_no_trace,
            a_savepoint_rolls_back_only_what_followed_it,
        );
    };
    (leased_outbox: $make:expr) => {
        $crate::storage_conformance!(@tests $make;
            the_outbox_yields_entries_in_commit_order,
            only_one_relay_claims_the_outbox_until_its_lease_expires,
        );
    };
    (relay: $make:expr) => {
        $crate::storage_conformance!(@tests $make;
            the_feed_hands_out_entries_in_commit_order_in_batches,
            delivered_entries_never_come_back,
            rewinding_hands_out_again_what_is_not_delivered,
            a_handed_out_entry_can_be_read_again,
            a_second_feed_stands_by_then_takes_over_when_the_first_closes,
            a_second_feed_takes_over_when_the_lease_runs_out,
            caught_up_reaches_the_commit_count,
            a_dropped_next_loses_nothing,
            two_relays_deliver_each_entry_once_in_order_per_key,
        );
    };
    (inbox: $make:expr) => {
        $crate::storage_conformance!(@tests $make;
            the_inbox_suppresses_duplicates,
            pruning_the_inbox_forgets_only_older_markers,
        );
    };
    (dead_letters: $make:expr) => {
        $crate::storage_conformance!(@tests $make;
            dead_letters_are_kept_replaced_and_taken,
            dead_letters_are_counted_purged_and_keyed_by_group,
        );
    };
    (checkpoints: $make:expr) => {
        $crate::storage_conformance!(@tests $make; checkpoints_are_saved);
    };
    (snapshots: $make:expr) => {
        $crate::storage_conformance!(@tests $make; snapshots_keep_the_newest_of_each_stream);
    };
    (projections: $make:expr) => {
        $crate::storage_conformance!(@tests $make;
            a_checkpoint_saved_in_a_unit_of_work_commits_with_it,
            an_append_wakes_the_commit_signal_and_moves_the_head,
        );
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store = $make.await;
                $crate::store::conformance::$name(&store).await;
            }
        )*
    };
    ($make:expr) => {
        $crate::storage_conformance!(event_store: $make);
        $crate::storage_conformance!(units_of_work: $make);
        $crate::storage_conformance!(relay: $make);
        $crate::storage_conformance!(inbox: $make);
        $crate::storage_conformance!(dead_letters: $make);
        $crate::storage_conformance!(checkpoints: $make);
        $crate::storage_conformance!(snapshots: $make);
        $crate::storage_conformance!(projections: $make);
    };
}
