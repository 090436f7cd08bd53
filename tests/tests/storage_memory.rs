//! The storage conformance suite on the in-memory store.

eventflow::storage_conformance!(async { eventflow::MemoryStore::new() });
eventflow::storage_conformance!(leased_outbox: async { eventflow::MemoryStore::new() });
