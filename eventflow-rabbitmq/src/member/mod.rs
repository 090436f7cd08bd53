//! One member of a group on RabbitMQ: the task that owns its connection, consumes the
//! group's queues, acknowledges what the bus committed, shares the queues with the other
//! members and reconnects after the connection was lost.
//!
//! The [`RabbitMqConsumer`](crate::consumer::RabbitMqConsumer) the bus polls talks to it
//! through two channels: deliveries come out, acknowledgements and the close go in.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::{mpsc, oneshot};

use crate::config::RabbitMqBuilder;
use crate::{topology, Error};

mod share;

/// One queue a member consumes: queue `index` of the group on `topic`.
pub(crate) struct Lane {
    pub(crate) topic: Arc<str>,
    pub(crate) index: u32,
    pub(crate) queue: String,
}

/// What a member consumes.
pub(crate) struct Spec {
    pub(crate) config: Arc<RabbitMqBuilder>,
    pub(crate) group: String,
    pub(crate) topics: Vec<String>,
    pub(crate) lanes: Vec<Lane>,
}

/// A message handed to the consumer: lane `lane`'s message number `offset`.
pub(crate) struct Received {
    pub(crate) lane: usize,
    pub(crate) offset: u64,
    pub(crate) delivery: Delivery,
}

/// What the consumer asks of its member's task.
pub(crate) enum Command {
    /// Acknowledge these `(lane, offset)`s; answers once the acks are sent.
    Ack(Vec<(usize, u64)>, oneshot::Sender<()>),
    /// Close the connection (unacknowledged messages go back to their queues).
    Close(oneshot::Sender<()>),
}

/// What a lane's consuming task reports.
enum LaneEvent {
    Delivery(usize, u64, Box<Delivery>),
    Ended(usize, u64, Option<lapin::Error>),
}

/// A lane on the live connection.
struct LaneState {
    channel: Channel,
    /// Which consumer of the lane this is: events of an earlier one are stale.
    generation: u64,
    /// Whether the broker made this member the queue's active consumer (it delivered).
    active: bool,
    /// Set while the lane is handed on: nothing more is passed to the bus, and once what
    /// was passed is acknowledged the channel closes and the member queues up again.
    releasing: bool,
    /// The delivery tags of messages passed to the bus and not yet acknowledged.
    unacked: BTreeMap<u64, u64>,
}

/// The live connection of a member.
struct Session {
    connection: Connection,
    control: Channel,
    lanes: Vec<LaneState>,
    /// Kept so that the member stays counted in the members queue (and, while it works on
    /// no queue, in the idle queue).
    _membership: lapin::Consumer,
    idle: Option<(Channel, lapin::Consumer)>,
}

/// How a session ended.
enum End {
    Closed,
    Lost(String),
}

pub(crate) struct Member {
    spec: Arc<Spec>,
    out: mpsc::UnboundedSender<Received>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// The next offset of each lane: never reused, so a record of an old connection is
    /// never mistaken for one of the new.
    next_offset: Vec<u64>,
    generation: u64,
    events_tx: mpsc::UnboundedSender<LaneEvent>,
    events: mpsc::UnboundedReceiver<LaneEvent>,
}

impl Member {
    pub(crate) fn new(
        spec: Arc<Spec>,
        out: mpsc::UnboundedSender<Received>,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        Member {
            next_offset: vec![0; spec.lanes.len()],
            spec,
            out,
            commands,
            generation: 0,
            events_tx,
            events,
        }
    }

    /// Opens the first session, so that subscribing reports a broker that does not answer
    /// and the group's queues exist once it returns.
    pub(crate) async fn start(mut self) -> Result<(), Error> {
        let session = self.open().await?;
        tokio::spawn(self.run(session));
        Ok(())
    }

    async fn run(mut self, mut session: Session) {
        let mut failures = 0u32;
        loop {
            match self.serve(&mut session).await {
                End::Closed => {
                    let _ = session.connection.close(200, "member closed".into()).await;
                    return;
                }
                End::Lost(reason) => {
                    tracing::warn!(group = %self.spec.group, %reason, "lost the RabbitMQ connection; reconnecting (unacknowledged messages are delivered again)");
                    let _ = session.connection.close(200, "reconnecting".into()).await;
                }
            }
            session = loop {
                failures += 1;
                let delay = self.spec.config.reconnect_delay(failures);
                if self.wait_or_close(delay).await {
                    return;
                }
                match self.open().await {
                    Ok(session) => {
                        tracing::info!(group = %self.spec.group, attempts = failures, "reconnected to RabbitMQ; consuming again");
                        failures = 0;
                        break session;
                    }
                    Err(error) => {
                        tracing::warn!(group = %self.spec.group, %error, attempts = failures, "reconnecting to RabbitMQ failed; retrying with backoff");
                    }
                }
            };
        }
    }

    /// Sleeps `delay`, answering commands meanwhile; `true` if the member was closed.
    async fn wait_or_close(&mut self, delay: std::time::Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return false,
                command = self.commands.recv() => match command {
                    None => return true,
                    Some(Command::Close(done)) => {
                        let _ = done.send(());
                        return true;
                    }
                    // Acknowledgements for a lost connection: the messages come again.
                    Some(Command::Ack(_, done)) => {
                        let _ = done.send(());
                    }
                },
            }
        }
    }

    async fn open(&mut self) -> Result<Session, Error> {
        let spec = self.spec.clone();
        let config = &spec.config;
        let url = &config.url;
        let name = format!("eventflow member of {}", spec.group);
        let connection = Connection::connect(
            url,
            ConnectionProperties::default().with_connection_name(name.into()),
        )
        .await
        .map_err(|e| Error::amqp("connecting to RabbitMQ", url, e))?;
        let control = connection
            .create_channel()
            .await
            .map_err(|e| Error::amqp("opening a channel", url, e))?;
        for topic in &spec.topics {
            topology::declare_exchange(&control, config, &config.exchange(topic)).await?;
        }
        topology::declare_dead_letters(&control, config, &spec.group).await?;
        for lane in &spec.lanes {
            topology::declare_group_queue(&control, config, &spec.group, &lane.topic, lane.index).await?;
        }
        topology::count_members(&control, config, &spec.group).await?;
        let membership = control
            .basic_consume(
                config.members(&spec.group).into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| Error::amqp("joining the members queue", url, e))?;
        let mut lanes = Vec::with_capacity(spec.lanes.len());
        for index in 0..spec.lanes.len() {
            lanes.push(self.open_lane(&connection, index).await?);
        }
        let mut session = Session {
            connection,
            control,
            lanes,
            _membership: membership,
            idle: None,
        };
        self.mark_idle(&mut session).await;
        Ok(session)
    }

    /// Opens a channel for lane `index` and queues up as a consumer of its queue.
    async fn open_lane(&mut self, connection: &Connection, index: usize) -> Result<LaneState, Error> {
        let config = &self.spec.config;
        let queue = &self.spec.lanes[index].queue;
        let what = |e| Error::amqp(format!("consuming queue `{queue}`"), &config.url, e);
        let channel = connection.create_channel().await.map_err(what)?;
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await
            .map_err(what)?;
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(what)?;
        self.generation += 1;
        let generation = self.generation;
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            while let Some(item) = consumer.next().await {
                match item {
                    Ok(delivery) => {
                        if events
                            .send(LaneEvent::Delivery(index, generation, Box::new(delivery)))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(error) => {
                        let _ = events.send(LaneEvent::Ended(index, generation, Some(error)));
                        return;
                    }
                }
            }
            let _ = events.send(LaneEvent::Ended(index, generation, None));
        });
        Ok(LaneState {
            channel,
            generation,
            active: false,
            releasing: false,
            unacked: BTreeMap::new(),
        })
    }

    /// Serves the session until the member closes or the connection is lost.
    async fn serve(&mut self, session: &mut Session) -> End {
        let mut tick = tokio::time::interval(self.spec.config.rebalance_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    None => return End::Closed,
                    Some(Command::Close(done)) => {
                        let _ = session.connection.close(200, "member closed".into()).await;
                        let _ = done.send(());
                        return End::Closed;
                    }
                    Some(Command::Ack(records, done)) => {
                        let acked = self.ack(session, records).await;
                        let _ = done.send(());
                        if let Err(reason) = acked {
                            return End::Lost(reason);
                        }
                    }
                },
                event = self.events.recv() => {
                    let event = event.expect("the member holds a sender");
                    if let Err(reason) = self.on_event(session, event).await {
                        return End::Lost(reason);
                    }
                }
                _ = tick.tick() => {
                    if !session.connection.status().connected() {
                        return End::Lost("the connection closed".into());
                    }
                    if let Err(reason) = self.rebalance(session).await {
                        return End::Lost(reason);
                    }
                }
            }
        }
    }

    async fn on_event(&mut self, session: &mut Session, event: LaneEvent) -> Result<(), String> {
        match event {
            LaneEvent::Delivery(index, generation, delivery) => {
                let Some(lane) = session
                    .lanes
                    .get_mut(index)
                    .filter(|l| l.generation == generation)
                else {
                    return Ok(());
                };
                // A lane being handed on keeps what arrives now: it returns to the queue
                // when the channel closes, ahead of later messages, for the next consumer.
                if lane.releasing {
                    return Ok(());
                }
                let offset = self.next_offset[index];
                self.next_offset[index] += 1;
                lane.unacked.insert(offset, delivery.delivery_tag);
                let first = !lane.active;
                lane.active = true;
                if self
                    .out
                    .send(Received {
                        lane: index,
                        offset,
                        delivery: *delivery,
                    })
                    .is_err()
                {
                    return Ok(());
                }
                if first {
                    tracing::debug!(group = %self.spec.group, queue = %self.spec.lanes[index].queue, "active consumer of the queue");
                    self.mark_idle(session).await;
                }
                Ok(())
            }
            LaneEvent::Ended(index, generation, error) => {
                match session.lanes.get(index) {
                    Some(lane) if lane.generation == generation => {}
                    _ => return Ok(()),
                }
                let queue = &self.spec.lanes[index].queue;
                Err(match error {
                    Some(error) => format!("consuming queue `{queue}` failed: {error}"),
                    None => format!("the broker cancelled the consumer of queue `{queue}` (was it deleted?)"),
                })
            }
        }
    }

    async fn ack(&mut self, session: &mut Session, records: Vec<(usize, u64)>) -> Result<(), String> {
        let mut by_lane: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for (lane, offset) in records {
            by_lane.entry(lane).or_default().push(offset);
        }
        for (index, offsets) in by_lane {
            let Some(lane) = session.lanes.get_mut(index) else {
                continue;
            };
            let mut tags: Vec<u64> = offsets.iter().filter_map(|o| lane.unacked.remove(o)).collect();
            if tags.is_empty() {
                continue;
            }
            tags.sort_unstable();
            let highest = *tags.last().expect("not empty");
            // One ack for all when nothing older is still unacknowledged, as is usual: the
            // bus commits in poll order.
            let older_pending = lane.unacked.values().any(|tag| *tag < highest);
            let acks: Vec<(u64, bool)> = match older_pending {
                false => vec![(highest, true)],
                true => tags.into_iter().map(|tag| (tag, false)).collect(),
            };
            for (tag, multiple) in acks {
                if let Err(error) = lane.channel.basic_ack(tag, BasicAckOptions { multiple }).await {
                    return Err(format!(
                        "acknowledging on queue `{}` failed: {error}",
                        self.spec.lanes[index].queue
                    ));
                }
            }
            if lane.releasing && lane.unacked.is_empty() {
                self.requeue_lane(session, index).await?;
            }
        }
        Ok(())
    }
}
