//! The storage conformance suite on the in-memory store.

eventflow::storage_conformance!(async { eventflow::MemoryStore::new() });
