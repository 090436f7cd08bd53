//! One member of a group, as eventflow's [`Consumer`]: the bus's side of a
//! [`Member`](crate::member::Member) task.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use eventflow::transport::{Consumer, Record};
use eventflow::Envelope;
use lapin::BasicProperties;
use tokio::sync::{mpsc, oneshot};

use crate::member::{Command, Lane, Member, Received, Spec};
use crate::properties::{self, Origin};
use crate::publisher::Publisher;
use crate::Error;

/// The name given to messages that are not eventflow events. No handler has it, so the
/// bus commits them without handling; [`RabbitMqConsumer::commit`] dead-letters them first.
pub(crate) const FOREIGN: &str = "eventflow-rabbitmq.foreign-message";

/// The most records one poll returns.
const MAX_BATCH: usize = 512;

pub(crate) struct RabbitMqConsumer {
    publisher: Arc<Publisher>,
    spec: Arc<Spec>,
    received: mpsc::UnboundedReceiver<Received>,
    commands: mpsc::UnboundedSender<Command>,
    /// Messages that are not eventflow events, by `(lane, offset)`, until dead-lettered.
    foreign: HashMap<(usize, u64), Foreign>,
}

struct Foreign {
    reason: String,
    properties: BasicProperties,
    payload: Bytes,
}

impl RabbitMqConsumer {
    /// Declares `group`'s queues on `topics`, connects a member and queues it up on each.
    pub(crate) async fn join(publisher: Arc<Publisher>, group: &str, topics: &[&str]) -> Result<Self, Error> {
        let config = publisher.config.clone();
        let mut lanes = Vec::new();
        for topic in topics {
            let shared: Arc<str> = Arc::from(*topic);
            for index in 0..config.queues_per_group {
                lanes.push(Lane {
                    topic: shared.clone(),
                    index,
                    queue: config.queue(group, topic, index),
                });
            }
        }
        let spec = Arc::new(Spec {
            config,
            group: group.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            lanes,
        });
        let (out, received) = mpsc::unbounded_channel();
        let (commands, inbox) = mpsc::unbounded_channel();
        Member::new(spec.clone(), out, inbox).start().await?;
        Ok(RabbitMqConsumer {
            publisher,
            spec,
            received,
            commands,
            foreign: HashMap::new(),
        })
    }

    /// The lane a record of this member came from.
    fn lane_of(&self, record: &Record) -> Option<usize> {
        let topic = self.spec.topics.iter().position(|t| *t == *record.topic)?;
        Some(topic * self.spec.config.queues_per_group as usize + record.partition as usize)
    }

    fn record(&mut self, received: Received) -> Record {
        let lane = &self.spec.lanes[received.lane];
        let Received {
            lane: index,
            offset,
            delivery,
        } = received;
        let payload = Bytes::from(delivery.data);
        let envelope = match properties::decode(&delivery.properties, &lane.topic, payload.clone()) {
            Ok(envelope) => envelope,
            Err(reason) => {
                tracing::error!(
                    group = %self.spec.group, queue = %lane.queue, %reason,
                    "a message on a subscribed queue is not an eventflow event; dead-lettering it"
                );
                self.foreign.insert(
                    (index, offset),
                    Foreign {
                        reason,
                        properties: delivery.properties,
                        payload: payload.clone(),
                    },
                );
                Envelope::new(
                    FOREIGN,
                    0,
                    lane.topic.to_string(),
                    "application/octet-stream",
                    payload,
                )
            }
        };
        Record {
            topic: lane.topic.clone(),
            partition: lane.index,
            offset,
            envelope: Arc::new(envelope),
        }
    }

    /// Writes a message that is not an eventflow event to the group's dead-letter exchange.
    async fn dead_letter_foreign(&self, lane: usize, foreign: &Foreign) -> Result<(), Error> {
        let lane = &self.spec.lanes[lane];
        let origin = Origin {
            group: &self.spec.group,
            topic: &lane.topic,
            queue: Some(&lane.queue),
            error: &foreign.reason,
            attempts: 0,
            failed_at: SystemTime::now(),
        };
        let properties = properties::with_dead_letter_headers(foreign.properties.clone(), &origin);
        self.publisher
            .dead_letter_raw(&self.spec.group, &foreign.payload, properties)
            .await
    }

    fn gone(&self) -> Error {
        Error::Config(format!(
            "the member task of group `{}` has stopped; subscribe again",
            self.spec.group
        ))
    }
}

#[async_trait]
impl Consumer for RabbitMqConsumer {
    async fn poll(&mut self) -> Result<Vec<Record>, eventflow::Error> {
        let first = self.received.recv().await.ok_or_else(|| self.gone())?;
        let mut records = vec![self.record(first)];
        while records.len() < MAX_BATCH {
            match self.received.try_recv() {
                Ok(received) => records.push(self.record(received)),
                Err(_) => break,
            }
        }
        Ok(records)
    }

    async fn commit(&mut self, records: &[Record]) -> Result<(), eventflow::Error> {
        let mut acks = Vec::with_capacity(records.len());
        for record in records {
            let Some(lane) = self.lane_of(record) else {
                continue;
            };
            if let Some(foreign) = self.foreign.remove(&(lane, record.offset)) {
                if let Err(error) = self.dead_letter_foreign(lane, &foreign).await {
                    self.foreign.insert((lane, record.offset), foreign);
                    return Err(error.into());
                }
            }
            acks.push((lane, record.offset));
        }
        let (done, acked) = oneshot::channel();
        self.commands
            .send(Command::Ack(acks, done))
            .map_err(|_| self.gone())?;
        acked.await.map_err(|_| self.gone())?;
        Ok(())
    }

    async fn close(&mut self) -> Result<(), eventflow::Error> {
        let (done, closed) = oneshot::channel();
        if self.commands.send(Command::Close(done)).is_ok() {
            let _ = closed.await;
        }
        Ok(())
    }
}
