//! The signup: `UserSignedUp` reaches Email, Analytics and a CRM that is down.
//!
//! ```text
//! cargo run --example signup
//! ```
//!
//! The CRM handler fails every time. After its retries, each event lands in the dead-letter
//! store with the error and the attempt count, while Email and Analytics carry on
//! untouched. Once the CRM is back, the dead letters are replayed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventflow::{subscribe, Backoff, Context, Event, EventBus, InProcess, State};
use serde::{Deserialize, Serialize};

/// A user created an account.
#[derive(Event, Serialize, Deserialize, Debug)]
#[event(name = "user.signed_up", topic = "users")]
struct UserSignedUp {
    #[event(key)]
    user_id: String,
    email: String,
}

/// Whether the CRM answers.
#[derive(Clone, Default)]
struct Crm {
    up: Arc<AtomicBool>,
}

#[subscribe(group = "email")]
async fn send_welcome(user: UserSignedUp) -> Result<(), std::io::Error> {
    println!("  [email]     welcome mail to {}", user.email);
    Ok(())
}

#[subscribe(group = "analytics")]
async fn count_signup(user: UserSignedUp) -> Result<(), std::io::Error> {
    println!("  [analytics] counted signup of {}", user.user_id);
    Ok(())
}

#[subscribe(group = "crm", retries = 2)]
async fn create_contact(user: UserSignedUp, ctx: Context, State(crm): State<Crm>) -> Result<(), String> {
    if !crm.up.load(Ordering::SeqCst) {
        println!(
            "  [crm]       attempt {} for {} failed: CRM unreachable",
            ctx.attempt(),
            user.user_id
        );
        return Err("CRM unreachable: connection refused".into());
    }
    println!("  [crm]       contact created for {}", user.user_id);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), eventflow::Error> {
    eventflow_examples::init_tracing();
    let transport = InProcess::new();
    let crm = Crm::default();
    let bus = EventBus::builder()
        .transport(transport.clone())
        .state(crm.clone())
        .backoff(Backoff::exponential(
            Duration::from_millis(20),
            Duration::from_millis(200),
        ))
        .handler(send_welcome)
        .handler(count_signup)
        .handler(create_contact)
        .start()
        .await?;

    for (user_id, email) in [("u-1", "ada@example.com"), ("u-2", "linus@example.com")] {
        bus.publish(&UserSignedUp {
            user_id: user_id.into(),
            email: email.into(),
        })
        .await?;
    }
    transport.wait_idle().await;

    let letters = bus.dead_letters(Some("crm")).await?;
    println!("\ndead letters of group crm: {}", letters.len());
    for letter in &letters {
        println!(
            "  {} for key {} after {} attempts: {}",
            letter.envelope.name,
            letter.envelope.key.as_deref().unwrap_or("-"),
            letter.attempts,
            letter.error
        );
    }

    println!("\nthe CRM is back; replaying");
    crm.up.store(true, Ordering::SeqCst);
    for letter in letters {
        bus.replay_dead_letter(letter.id).await?;
    }
    println!("dead letters left: {}", bus.dead_letters(None).await?.len());
    bus.shutdown().await;
    Ok(())
}
