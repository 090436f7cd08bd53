//! [`ProjectionHandle`]: a running projection's [`Progress`], and the requests the
//! application makes of it (wait until caught up, rebuild).

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::Error;

/// What a projection is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not started yet (the bus is starting).
    Starting,
    /// Reading the events committed before it started, from its checkpoint.
    CatchingUp,
    /// Applying the events again after a [`rebuild`](ProjectionHandle::rebuild).
    Rebuilding,
    /// Caught up: applying new commits as they happen.
    Live,
    /// The bus shut down.
    Stopped,
}

/// A projection's progress, as [`ProjectionHandle::progress`] reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// The projection's name.
    pub name: &'static str,
    /// What it is doing.
    pub phase: Phase,
    /// The position of the last event it applied and committed (its checkpoint).
    pub position: u64,
    /// The position of the newest event in the store when it last looked, if the backend
    /// tells ([`EventStore::head_position`](crate::store::EventStore::head_position)).
    pub head: Option<u64>,
    /// Events applied since the current catch-up or rebuild began (the last one's, once
    /// live).
    pub done: u64,
    /// Events per second over that catch-up or rebuild.
    pub rate: f64,
    /// Why the last batch failed, while it is being retried.
    pub error: Option<String>,
}

impl Progress {
    pub(crate) fn new(name: &'static str) -> Self {
        Progress {
            name,
            phase: Phase::Starting,
            position: 0,
            head: None,
            done: 0,
            rate: 0.0,
            error: None,
        }
    }

    /// Events between its position and the newest event, if the head is known.
    pub fn remaining(&self) -> Option<u64> {
        self.head.map(|head| head.saturating_sub(self.position))
    }

    /// How long the remaining events take at the current rate, if both are known.
    pub fn eta(&self) -> Option<Duration> {
        let remaining = self.remaining()?;
        (self.rate > 0.0).then(|| Duration::from_secs_f64(remaining as f64 / self.rate))
    }
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = match self.phase {
            Phase::Starting => "starting",
            Phase::CatchingUp => "catching up",
            Phase::Rebuilding => "rebuilding",
            Phase::Live => "live",
            Phase::Stopped => "stopped",
        };
        write!(
            f,
            "projection `{}` {phase} at position {}",
            self.name, self.position
        )?;
        if matches!(self.phase, Phase::CatchingUp | Phase::Rebuilding) {
            write!(f, ": {} events done at {:.0}/s", self.done, self.rate)?;
            if let Some(remaining) = self.remaining() {
                write!(f, ", {remaining} left")?;
            }
        }
        if let Some(error) = &self.error {
            write!(f, " (retrying: {error})")?;
        }
        Ok(())
    }
}

/// A request to the projection's runner.
pub(crate) enum Command {
    /// Answer once every event committed before the request is applied.
    CaughtUp(oneshot::Sender<Result<Progress, Error>>),
    /// Reset to `from` and apply everything after it again; answer once the reset committed.
    Rebuild {
        from: u64,
        done: oneshot::Sender<Result<(), Error>>,
    },
}

/// A registered projection, from [`EventBus::projection`](crate::EventBus::projection).
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct ProjectionHandle {
    name: &'static str,
    progress: watch::Receiver<Progress>,
    commands: mpsc::UnboundedSender<Command>,
}

impl ProjectionHandle {
    pub(crate) fn new(
        name: &'static str,
        progress: watch::Receiver<Progress>,
        commands: mpsc::UnboundedSender<Command>,
    ) -> Self {
        ProjectionHandle {
            name,
            progress,
            commands,
        }
    }

    /// The projection's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its progress now.
    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// Its progress as it changes (after each batch), to show or to wait on.
    pub fn watch(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Waits until the projection has applied every event committed before the call, and
    /// returns its progress then. Fails if the projection fails on an event meanwhile (it
    /// goes on retrying) or the bus shuts down.
    pub async fn caught_up(&self) -> Result<Progress, Error> {
        let (answer, answered) = oneshot::channel();
        self.send(Command::CaughtUp(answer))?;
        answered.await.map_err(|_| Error::Closed)?
    }

    /// Rebuilds the read model from the first event: [`reset`](super::Projection::reset)
    /// with 0 and the checkpoint back to 0 in one unit of work, then every event applied
    /// again. Returns once the reset committed; the progress shows the rebuild
    /// ([`Phase::Rebuilding`]), and [`caught_up`](Self::caught_up) waits for its end. A
    /// crash during the rebuild resumes it from its last committed batch.
    pub async fn rebuild(&self) -> Result<(), Error> {
        self.rebuild_from(0).await
    }

    /// Rebuilds from position `from`: what [`rebuild`](Self::rebuild) does, for the events
    /// after `from` only.
    pub async fn rebuild_from(&self, from: u64) -> Result<(), Error> {
        let (done, answered) = oneshot::channel();
        self.send(Command::Rebuild { from, done })?;
        answered.await.map_err(|_| Error::Closed)?
    }

    fn send(&self, command: Command) -> Result<(), Error> {
        self.commands.send(command).map_err(|_| Error::Closed)
    }
}
