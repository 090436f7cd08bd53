//! The conformance of the dead-letter operations the bus builds on: purging a group,
//! counting per group, and the keys a group has letters for (sequenced dead letters).

use std::time::SystemTime;

use uuid::Uuid;

use crate::dead_letter::DeadLetter;
use crate::store::DeadLetterStore;

fn letter(group: &str, key: Option<&str>, n: u32) -> DeadLetter {
    let mut envelope = super::support::event(key.unwrap_or("none"), n);
    envelope.key = key.map(str::to_owned);
    DeadLetter {
        id: Uuid::now_v7(),
        group: group.into(),
        envelope,
        error: format!("failure {n}"),
        attempts: 1,
        failed_at: SystemTime::now(),
    }
}

/// Counting gives each group's letters; purging a group removes its letters and no other
/// group's; the blocked keys of a group name each key once, with its oldest letter.
pub async fn dead_letters_are_counted_purged_and_keyed_by_group<S: DeadLetterStore + ?Sized>(store: &S) {
    assert!(
        store.counts().await.unwrap().is_empty(),
        "a fresh store has no dead letters"
    );
    assert!(store.blocked_keys("crm").await.unwrap().is_empty());
    let first_k = letter("crm", Some("k"), 1);
    let letters = [
        first_k.clone(),
        letter("crm", Some("k"), 2),
        letter("crm", Some("j"), 3),
        letter("crm", None, 4),
        letter("mail", Some("k"), 5),
        letter("mail", Some("m"), 6),
    ];
    for letter in &letters {
        store.put(letter.clone()).await.unwrap();
    }
    let counts = store.counts().await.unwrap();
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [("crm".to_owned(), 4), ("mail".to_owned(), 2)]
    );
    let keys = store.blocked_keys("crm").await.unwrap();
    assert_eq!(
        keys.len(),
        2,
        "one entry per key, none for letters without one: {keys:?}"
    );
    assert_eq!(keys.get("k"), Some(&first_k.id), "the oldest letter of the key");
    assert_eq!(keys.get("j"), Some(&letters[2].id));

    assert_eq!(store.purge("crm").await.unwrap(), 4);
    assert_eq!(store.purge("crm").await.unwrap(), 0, "a purged group is empty");
    assert!(store.list(Some("crm")).await.unwrap().is_empty());
    assert!(store.blocked_keys("crm").await.unwrap().is_empty());
    assert_eq!(
        store.list(Some("mail")).await.unwrap().len(),
        2,
        "other groups are kept"
    );
    assert_eq!(
        store.counts().await.unwrap().into_iter().collect::<Vec<_>>(),
        [("mail".to_owned(), 2)]
    );
}
