//! Why a transport refused events for good: [`Rejection`], carried by
//! [`Error::Rejected`](crate::Error::Rejected).
//!
//! A transport tells two kinds of publish failure apart. A *transient* one (broker down, a
//! timeout, a partition leader moving) is any other [`Error`](crate::Error): publishing the
//! same event again later may work, so the outbox relay keeps it and retries with backoff.
//! A *permanent* one (a message over the broker's size limit, an invalid topic, a record
//! the broker rejects for good) is [`Error::Rejected`](crate::Error::Rejected): the same
//! bytes will be refused every time, so the relay dead-letters that one event and goes on.

use std::fmt;

use uuid::Uuid;

/// One event a transport refused for good, in an [`Error::Rejected`](crate::Error::Rejected).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Its position in the batch given to
    /// [`Transport::publish_batch`](crate::transport::Transport::publish_batch) (0 for
    /// [`Transport::publish`](crate::transport::Transport::publish)).
    pub index: usize,
    /// The event's id.
    pub event: Uuid,
    /// What the transport said, and what to do (shrink the event, split it, raise the
    /// broker's limit, fix the topic name...).
    pub reason: String,
}

impl Rejection {
    /// A rejection of the event at `index` of a batch.
    pub fn new(index: usize, event: Uuid, reason: impl Into<String>) -> Self {
        Rejection {
            index,
            event,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event {} (#{} of the batch): {}",
            self.event, self.index, self.reason
        )
    }
}

/// The text of [`Error::Rejected`](crate::Error::Rejected): the first rejections, and how
/// many more.
pub(crate) fn describe(rejections: &[Rejection]) -> String {
    const SHOWN: usize = 3;
    let mut text = format!(
        "the transport refused {} event(s) for good, publishing them again would fail the same way; \
         the other events of the batch were delivered: ",
        rejections.len()
    );
    for (i, rejection) in rejections.iter().take(SHOWN).enumerate() {
        if i > 0 {
            text.push_str("; ");
        }
        text.push_str(&rejection.to_string());
    }
    if rejections.len() > SHOWN {
        text.push_str(&format!("; and {} more", rejections.len() - SHOWN));
    }
    text
}
