//! [`ExpectedVersion`]: the optimistic-concurrency check of an append. It sits below
//! [`Error`](crate::Error), whose `Conflict` holds one, so it imports nothing of the crate;
//! the check that makes that error lives with the event store.

/// What an append expects the stream's current version to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the version is.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have this version (the first event is version 1).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `current` (0 = no stream) satisfies the expectation.
    pub fn matches(self, current: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::Exact(version) => current == version,
        }
    }
}
