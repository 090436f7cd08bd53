//! Sharing a group's queues among its members: the fair share, handing surplus queues on,
//! and the idle queue through which a member without work makes itself known.
//!
//! RabbitMQ makes the first consumer of a single-active-consumer queue its active one and
//! never moves it while it stays: without this, the first member of a group would keep
//! every queue. So each member counts the group's members (the consumers of the members
//! queue) and the idle ones, and hands a queue on when it holds more than
//! ⌈queues / members⌉, or more than ⌊queues / members⌋ while a member is idle. Handing
//! on waits until everything taken from the queue is acknowledged, then closes its
//! channel: the broker returns what was prefetched to the head of the queue and activates
//! the next consumer in line, so events of one key stay in order.

use super::{Member, Session};
use crate::topology;

impl Member {
    /// Closes a drained lane's channel, which hands the queue to the next consumer in line
    /// (with what was prefetched and not passed on), and queues up again behind it.
    pub(super) async fn requeue_lane(&mut self, session: &mut Session, index: usize) -> Result<(), String> {
        let old = &session.lanes[index];
        let _ = old.channel.close(200, "handing the queue on".into()).await;
        tracing::debug!(group = %self.spec.group, queue = %self.spec.lanes[index].queue, "handed the queue on to another member");
        let lane = self
            .open_lane(&session.connection, index)
            .await
            .map_err(|e| e.to_string())?;
        session.lanes[index] = lane;
        self.mark_idle(session).await;
        Ok(())
    }

    /// Compares the queues this member is active on with its fair share and starts
    /// handing surplus ones on.
    pub(super) async fn rebalance(&mut self, session: &mut Session) -> Result<(), String> {
        let spec = self.spec.clone();
        let config = &spec.config;
        let members = topology::count_members(&session.control, config, &spec.group)
            .await
            .map_err(|e| e.to_string())?
            .max(1);
        let idle = match topology::count_idle(&session.control, config, &spec.group).await {
            Ok(idle) => idle,
            Err(error) => return Err(error.to_string()),
        };
        let queues = config.queues_per_group;
        let (fair_low, fair_high) = (queues / members, queues.div_ceil(members));
        for topic in &spec.topics {
            let active: Vec<usize> = (0..session.lanes.len())
                .filter(|i| &*spec.lanes[*i].topic == topic.as_str())
                .filter(|i| session.lanes[*i].active && !session.lanes[*i].releasing)
                .collect();
            let held = active.len() as u32;
            // More than a fair share, or a fair share's top while a member has nothing.
            let surplus = if held > fair_high {
                held - fair_high
            } else if idle > 0 && held > fair_low.max(1) {
                1
            } else {
                0
            };
            let mut candidates = active;
            candidates.sort_by_key(|i| session.lanes[*i].unacked.len());
            for index in candidates.into_iter().take(surplus as usize) {
                tracing::debug!(group = %spec.group, queue = %spec.lanes[index].queue, members, idle, held, "handing a queue on");
                session.lanes[index].releasing = true;
                if session.lanes[index].unacked.is_empty() {
                    self.requeue_lane(session, index).await?;
                }
            }
        }
        Ok(())
    }

    /// Joins the group's idle queue while this member is active on no queue, and leaves
    /// it once it is, so the others know someone waits for work.
    pub(super) async fn mark_idle(&mut self, session: &mut Session) {
        let working = session.lanes.iter().any(|l| l.active && !l.releasing);
        match (&session.idle, working) {
            (None, false) => {
                match topology::join_idle(&session.connection, &self.spec.config, &self.spec.group).await {
                    Ok(idle) => session.idle = Some(idle),
                    Err(error) => {
                        tracing::debug!(group = %self.spec.group, %error, "joining the idle queue failed")
                    }
                }
            }
            (Some(_), true) => {
                if let Some((channel, _)) = session.idle.take() {
                    let _ = channel.close(200, "working".into()).await;
                }
            }
            _ => {}
        }
    }
}
