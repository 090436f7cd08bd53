//! Dead letters ([`DeadLetterStore`]) kept, replaced by id and taken
//! out once.

use std::time::SystemTime;

use uuid::Uuid;

use super::support::event;
use crate::store::DeadLetterStore;
use crate::DeadLetter;

pub use super::dead_letter_operations::dead_letters_are_counted_purged_and_keyed_by_group;

/// Dead letters are listed by group, replaced by id, and taken out once.
pub async fn dead_letters_are_kept_replaced_and_taken<S: DeadLetterStore + ?Sized>(store: &S) {
    let letter = DeadLetter {
        id: Uuid::now_v7(),
        group: "crm".into(),
        envelope: event("u-1", 1),
        error: "CRM unreachable".into(),
        attempts: 3,
        failed_at: SystemTime::now(),
    };
    store.put(letter.clone()).await.unwrap();
    store
        .put(DeadLetter {
            id: Uuid::now_v7(),
            group: "mail".into(),
            ..letter.clone()
        })
        .await
        .unwrap();
    let crm = store.list(Some("crm")).await.unwrap();
    assert_eq!(crm.len(), 1);
    assert_eq!(crm[0].envelope, letter.envelope);
    assert_eq!(crm[0].error, "CRM unreachable");
    assert_eq!(crm[0].attempts, 3);

    store
        .put(DeadLetter {
            attempts: 6,
            error: "still down".into(),
            ..letter.clone()
        })
        .await
        .unwrap();
    let crm = store.list(Some("crm")).await.unwrap();
    assert_eq!(
        (crm.len(), crm[0].attempts, crm[0].error.as_str()),
        (1, 6, "still down")
    );

    assert_eq!(
        store.take(letter.id).await.unwrap().map(|l| l.id),
        Some(letter.id)
    );
    assert!(store.take(letter.id).await.unwrap().is_none());
    assert_eq!(store.list(None).await.unwrap().len(), 1);
}
