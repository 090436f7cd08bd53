//! Compile-time behaviour of the macros: what they accept, and the errors they give for
//! what they reject. The `.stderr` files are pinned to the toolchain in
//! `rust-toolchain.toml`; regenerate them with `TRYBUILD=overwrite` after a toolchain
//! bump and review the diff.

#[test]
fn derive_event() {
    let t = trybuild::TestCases::new();
    t.pass("ui/event/pass/*.rs");
    t.compile_fail("ui/event/fail/*.rs");
}

#[test]
fn subscribe() {
    let t = trybuild::TestCases::new();
    t.pass("ui/subscribe/pass/*.rs");
    t.compile_fail("ui/subscribe/fail/*.rs");
}
