//! The loop that runs one projection: read from the checkpoint, apply a batch and save the
//! checkpoint in one unit of work, repeat; then wait for commits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::handle::{Command, Phase, Progress, ProjectionHandle};
use super::{checkpoint_name, Projection};
use crate::future::BoxFuture;
use crate::retry::Backoff;
use crate::store::{Storage, StoredEvent};
use crate::Error;

/// How often an idle projection looks for commits its store's signal does not report
/// (those of other processes, on backends that cannot watch the database).
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Where a `caught_up` call waits for its answer.
type Answer = oneshot::Sender<Result<Progress, Error>>;

type Run = Box<dyn FnOnce(Arc<dyn Storage>, watch::Receiver<bool>) -> BoxFuture<'static, ()> + Send>;

/// A registered projection, ready to run once the bus has its storage.
pub(crate) struct Starter {
    pub(crate) handle: ProjectionHandle,
    run: Run,
}

impl Starter {
    pub(crate) fn new<P: Projection>(projection: P) -> Self {
        let (progress, watched) = watch::channel(Progress::new(P::NAME));
        let (commands, received) = mpsc::unbounded_channel();
        let run: Run = Box::new(move |storage, shutdown| {
            let runner = Runner {
                projection,
                storage,
                checkpoint: checkpoint_name(P::NAME),
                progress,
                commands: received,
                waiting: Vec::new(),
                position: 0,
                saved: None,
                started: Instant::now(),
                backoff: Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10)),
                failures: 0,
            };
            Box::pin(runner.run(shutdown))
        });
        Starter {
            handle: ProjectionHandle::new(P::NAME, watched, commands),
            run,
        }
    }

    pub(crate) fn run(
        self,
        storage: Arc<dyn Storage>,
        shutdown: watch::Receiver<bool>,
    ) -> BoxFuture<'static, ()> {
        (self.run)(storage, shutdown)
    }
}

struct Runner<P> {
    projection: P,
    storage: Arc<dyn Storage>,
    checkpoint: String,
    progress: watch::Sender<Progress>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// `caught_up` calls waiting, with the head position when each asked (`None`: the
    /// backend cannot tell, so the next time the runner finds no more events).
    waiting: Vec<(Option<u64>, Answer)>,
    /// The position applied and committed.
    position: u64,
    /// The checkpoint's value as last read or written: what the next commit expects.
    saved: Option<String>,
    /// When the current catch-up or rebuild began.
    started: Instant,
    backoff: Backoff,
    failures: u32,
}

impl<P: Projection> Runner<P> {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut commits = self.storage.commit_signal();
        let mut loaded = false;
        let mut next: Option<Vec<StoredEvent>> = None;
        while !*shutdown.borrow() {
            // First, so that a rebuild can set right a checkpoint that does not load, and a
            // `caught_up` call learns why the projection is stuck.
            while let Ok(command) = self.commands.try_recv() {
                next = None;
                self.command(command).await;
            }
            if !loaded {
                match self.load_checkpoint().await {
                    Ok(()) => loaded = true,
                    Err(error) => {
                        self.failed(&error);
                        self.pause(&mut shutdown).await;
                        continue;
                    }
                }
            }
            commits.borrow_and_update();
            let batch = match next.take() {
                Some(batch) => Ok(batch),
                None => self.storage.read_all(self.position, P::BATCH).await,
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(error) => {
                    self.failed(&error);
                    self.pause(&mut shutdown).await;
                    continue;
                }
            };
            let Some(last) = batch.last().map(|event| event.position) else {
                self.reached_end();
                let command = tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => break,
                    _ = commits.changed() => None,
                    Some(command) = self.commands.recv() => Some(command),
                    _ = tokio::time::sleep(POLL_INTERVAL) => None,
                };
                if let Some(command) = command {
                    self.command(command).await;
                }
                continue;
            };
            // A full batch means more may follow: read the next while this one commits.
            let (applied, prefetched) = if batch.len() == P::BATCH {
                let (applied, prefetched) =
                    tokio::join!(self.apply(&batch, last), self.storage.read_all(last, P::BATCH));
                (applied, prefetched.ok())
            } else {
                (self.apply(&batch, last).await, None)
            };
            match applied {
                Ok(()) => {
                    self.applied(batch.len() as u64, last).await;
                    if batch.len() < P::BATCH {
                        // The store had no more when the batch was read.
                        self.reached_end();
                    } else {
                        self.answer(false);
                    }
                    next = prefetched;
                }
                Err(Error::CheckpointMoved { actual, .. }) => {
                    // Another runner of this projection committed: go on from where it is.
                    tracing::debug!(
                        projection = P::NAME,
                        ?actual,
                        "the checkpoint moved; reading it again"
                    );
                    loaded = false;
                }
                Err(error) => {
                    self.failed(&error);
                    self.pause(&mut shutdown).await;
                }
            }
        }
        self.progress.send_modify(|p| p.phase = Phase::Stopped);
    }

    /// Applies a batch and saves the checkpoint at `last`, in one unit of work.
    async fn apply(&self, batch: &[StoredEvent], last: u64) -> Result<(), Error> {
        let mut tx = self.storage.begin().await?;
        for event in batch {
            self.projection.apply(event, &mut *tx).await.map_err(|error| {
                Error::backend(format!(
                    "projection `{}` failed to apply event {} (`{}` v{} at position {}): {error}; \
                     nothing of its batch was kept, and it is retried",
                    P::NAME,
                    event.envelope.id,
                    event.envelope.name,
                    event.envelope.version,
                    event.position
                ))
            })?;
        }
        tx.save_checkpoint(&self.checkpoint, self.saved.as_deref(), &last.to_string())
            .await?;
        tx.commit().await
    }

    async fn applied(&mut self, events: u64, last: u64) {
        self.position = last;
        self.saved = Some(last.to_string());
        self.failures = 0;
        let head = self.progress.borrow().head;
        let head = match head {
            Some(head) if head > last => Some(head),
            _ => self.storage.head_position().await.ok().flatten(),
        };
        let elapsed = self.started.elapsed().as_secs_f64();
        self.progress.send_modify(|p| {
            p.position = last;
            p.head = head.map(|head| head.max(last));
            if p.phase != Phase::Live {
                p.done += events;
                p.rate = if elapsed > 0.0 {
                    p.done as f64 / elapsed
                } else {
                    0.0
                };
            }
            p.error = None;
        });
    }

    fn reached_end(&mut self) {
        if self.progress.borrow().phase != Phase::Live {
            let position = self.position;
            self.progress.send_modify(|p| {
                p.phase = Phase::Live;
                p.head = Some(p.head.unwrap_or(position).max(position));
            });
        }
        self.answer(true);
    }

    /// Answers the `caught_up` calls whose head the projection reached.
    fn answer(&mut self, at_end: bool) {
        let position = self.position;
        let progress = self.progress.borrow().clone();
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(head, _)| head.map_or(at_end, |head| head <= position));
        self.waiting = waiting;
        for (_, answer) in done {
            let _ = answer.send(Ok(progress.clone()));
        }
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::CaughtUp(answer) => match self.storage.head_position().await {
                Ok(head) => {
                    self.waiting.push((head, answer));
                    self.answer(false);
                }
                Err(error) => {
                    let _ = answer.send(Err(error));
                }
            },
            Command::Rebuild { from, done } => {
                let mut result = self.reset(from).await;
                if let Err(Error::CheckpointMoved { actual, .. }) = &result {
                    // A rebuild moves the checkpoint wherever it is (another runner's, or
                    // not read yet): once more, from the value found.
                    self.saved = actual.clone();
                    result = self.reset(from).await;
                }
                if result.is_ok() {
                    self.begin_phase(Phase::Rebuilding, from).await;
                }
                let _ = done.send(result);
            }
        }
    }

    /// Moves the checkpoint back to `from` with the projection's reset, in one unit of work.
    async fn reset(&mut self, from: u64) -> Result<(), Error> {
        let mut tx = self.storage.begin().await?;
        self.projection.reset(from, &mut *tx).await.map_err(|error| {
            Error::backend(format!(
                "projection `{}` failed to reset to position {from}: {error}; nothing was changed, \
                 and it goes on from position {}",
                P::NAME,
                self.position
            ))
        })?;
        tx.save_checkpoint(&self.checkpoint, self.saved.as_deref(), &from.to_string())
            .await?;
        tx.commit().await?;
        self.position = from;
        self.saved = Some(from.to_string());
        Ok(())
    }

    async fn load_checkpoint(&mut self) -> Result<(), Error> {
        let saved = self.storage.checkpoint(&self.checkpoint).await?;
        // Kept even if it does not parse: a rebuild replaces it only if it is still this.
        self.saved = saved.clone();
        let position = match saved.as_deref() {
            None => 0,
            Some(value) => value.parse().map_err(|_| {
                Error::Config(format!(
                    "checkpoint `{}` holds `{value}`, which is not an event position; set it to the \
                     position of the last event the read model reflects, or delete it (and the read \
                     model) to rebuild from the start",
                    self.checkpoint
                ))
            })?,
        };
        let phase = self.progress.borrow().phase;
        if matches!(phase, Phase::Starting) {
            self.begin_phase(Phase::CatchingUp, position).await;
        } else {
            // Another runner moved the checkpoint: its position is the read model's.
            self.position = position;
            self.progress.send_modify(|p| p.position = position);
        }
        Ok(())
    }

    async fn begin_phase(&mut self, phase: Phase, position: u64) {
        self.position = position;
        self.started = Instant::now();
        let head = self.storage.head_position().await.ok().flatten();
        self.progress.send_modify(|p| {
            p.phase = phase;
            p.position = position;
            p.head = head;
            p.done = 0;
            p.rate = 0.0;
        });
    }

    fn failed(&mut self, error: &Error) {
        self.failures += 1;
        tracing::error!(projection = P::NAME, position = self.position, %error, "the projection failed; it retries");
        let reason = error.to_string();
        self.progress.send_modify(|p| p.error = Some(reason.clone()));
        for (_, answer) in self.waiting.drain(..) {
            let _ = answer.send(Err(Error::backend(format!(
                "projection `{}` is stuck at position {}: {reason}",
                P::NAME,
                self.position
            ))));
        }
    }

    async fn pause(&mut self, shutdown: &mut watch::Receiver<bool>) {
        let wait = self.backoff.delay(self.failures);
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
