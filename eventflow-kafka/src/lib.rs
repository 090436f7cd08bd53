//! Kafka transport for eventflow, on [`rdkafka`].
#![warn(missing_docs)]

mod config;
mod consumer;
mod error;
pub mod headers;
mod transport;

pub use config::{KafkaBuilder, StartFrom, DEFAULT_BROKERS};
pub use error::Error;
pub use rdkafka;
pub use transport::Kafka;
