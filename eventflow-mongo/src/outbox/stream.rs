//! The change stream on the outbox collection, read by a task of its own into a channel,
//! so that the feed takes what is there without waiting on the server, and so that commits
//! by other processes wake the relay too.

use std::sync::{Arc, Weak};

use futures_util::StreamExt;
use mongodb::bson::{doc, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, ResumeToken};
use mongodb::change_stream::ChangeStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::layout::{self, Stored};
use crate::client::Inner;

/// Outbox documents the stream may read ahead of the relay.
const READ_AHEAD: usize = 1024;

/// A change stream on the outbox, read by a task of its own so that its events wait in a
/// channel: the feed takes what is there without waiting on the server, or waits on it.
pub(super) struct Stream {
    pub(super) events: mpsc::Receiver<StreamEvent>,
    task: JoinHandle<()>,
    /// The resume token of the stream's start.
    pub(super) start: Option<ResumeToken>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the stream task read: the next outbox document, or why the stream is no use now.
pub(super) enum StreamEvent {
    Document { stored: Stored, token: ResumeToken },
    Broken(String),
}

/// Opens a change stream on the outbox's inserts, resuming after `resume` if given.
pub(super) async fn open(
    inner: &Arc<Inner>,
    resume: Option<ResumeToken>,
) -> Result<Stream, mongodb::error::Error> {
    let stream = inner
        .outbox
        .watch()
        .pipeline([doc! { "$match": { "operationType": "insert" } }])
        .resume_after(resume)
        .await?;
    let start = stream.resume_token();
    let (sender, events) = mpsc::channel(READ_AHEAD);
    let task = tokio::spawn(follow(stream, sender, Arc::downgrade(inner)));
    Ok(Stream { events, task, start })
}

/// Reads the change stream into the feed's channel, and wakes the relay on each entry:
/// commits by other processes wake it too.
async fn follow(
    mut stream: ChangeStream<ChangeStreamEvent<Document>>,
    sender: mpsc::Sender<StreamEvent>,
    store: Weak<Inner>,
) {
    let wake = |store: &Weak<Inner>| match store.upgrade() {
        Some(inner) => {
            inner.commits.send_modify(|n| *n = n.wrapping_add(1));
            true
        }
        None => false,
    };
    loop {
        let event = match stream.next().await {
            Some(Ok(event)) => event,
            Some(Err(error)) => {
                let _ = sender.send(StreamEvent::Broken(error.to_string())).await;
                wake(&store);
                return;
            }
            None => {
                let _ = sender
                    .send(StreamEvent::Broken("the server closed the change stream".into()))
                    .await;
                wake(&store);
                return;
            }
        };
        let token = event.id;
        let read = match event.full_document {
            Some(doc) => layout::read(&doc)
                .map(|stored| StreamEvent::Document { stored, token })
                .map_err(|reason| format!("an outbox document cannot be read: {reason}")),
            None => Err("an insert event came without its document".to_owned()),
        };
        let message = read.unwrap_or_else(StreamEvent::Broken);
        let broken = matches!(message, StreamEvent::Broken(_));
        if sender.send(message).await.is_err() || !wake(&store) || broken {
            return;
        }
    }
}
