//! The transport conformance suite on the in-process transport.

eventflow::transport_conformance!(async { eventflow::InProcess::new() });
