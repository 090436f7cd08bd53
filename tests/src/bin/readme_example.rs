//! The README's first example, verbatim (copied by `build.rs`): `tests/readme.rs` runs it
//! and checks that its handler ran.

include!(concat!(env!("OUT_DIR"), "/readme_first_example.rs"));
