//! [`Published`], the future of one publish once its envelope is with the transport.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tracing::instrument::Instrumented;
use uuid::Uuid;

use crate::{BoxFuture, Error};

/// Resolves to the event's id once the transport has what it was handed (for Kafka: once
/// the broker acknowledged it).
///
/// The envelope is built and handed over before this exists, so it holds the id and the
/// transport's future only, about 70 bytes: a publisher keeps one per event in flight,
/// often thousands, and nested `async fn`s doing the same took over 500 (each kept room
/// for an envelope, and every `Result` one for an [`Error`]). Failures before the
/// transport (encoding, a closed bus) are boxed as a ready future, off the hot path.
pub(crate) struct Published<'a> {
    id: Uuid,
    /// `None` for an event held as a follow-up, which is done at once.
    acknowledgement: Option<Instrumented<BoxFuture<'a, Result<(), Error>>>>,
}

impl<'a> Published<'a> {
    /// Event `id`, with the transport's future of its acknowledgement.
    pub(crate) fn sent(id: Uuid, acknowledgement: Instrumented<BoxFuture<'a, Result<(), Error>>>) -> Self {
        Published {
            id,
            acknowledgement: Some(acknowledgement),
        }
    }

    /// Event `id`, held as a follow-up: done as soon as it is awaited.
    pub(crate) fn held(id: Uuid) -> Self {
        Published {
            id,
            acknowledgement: None,
        }
    }

    /// A publish that failed before it reached the transport.
    pub(crate) fn failed(error: Error) -> Self {
        use tracing::Instrument;
        let ready: BoxFuture<'a, Result<(), Error>> = Box::pin(std::future::ready(Err(error)));
        Published::sent(Uuid::nil(), ready.instrument(tracing::Span::none()))
    }
}

impl Future for Published<'_> {
    type Output = Result<Uuid, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(acknowledgement) = &mut self.acknowledgement {
            ready!(Pin::new(acknowledgement).poll(cx))?;
            self.acknowledgement = None;
        }
        Poll::Ready(Ok(self.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_to_the_id_or_the_error() {
        use tracing::Instrument;
        let id = Uuid::now_v7();
        let acknowledged: BoxFuture<'_, Result<(), Error>> = Box::pin(async { Ok(()) });
        assert_eq!(
            Published::sent(id, acknowledged.in_current_span()).await.unwrap(),
            id
        );
        assert_eq!(Published::held(id).await.unwrap(), id);
        assert!(matches!(
            Published::failed(Error::Closed).await,
            Err(Error::Closed)
        ));
        assert!(std::mem::size_of::<Published<'_>>() <= 96);
    }
}
