//! Moving envelopes from publishers to consumer groups: the [`Transport`] and [`Consumer`]
//! traits, and the default [`InProcess`] transport.
//!
//! The model is Kafka's: a topic is split into partitions, an event's key picks its
//! partition, every consumer group reads every event, the members of one group share the
//! partitions, and a member commits what it has handled so that a member that takes a
//! partition over resumes after the last commit.

pub mod conformance;
mod in_process;
mod partitioner;
mod traits;

pub use in_process::{InProcess, InProcessBuilder};
pub use partitioner::partition_for_key;
pub use traits::{Consumer, Record, TransactionalSink, Transport};
