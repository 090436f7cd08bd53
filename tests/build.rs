//! Copies the README's first Rust example, verbatim, to `$OUT_DIR/readme_first_example.rs`
//! for the `readme_example` binary, so that `tests/readme.rs` runs exactly what a newcomer
//! copies from the README.

use std::path::Path;

fn main() {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    println!("cargo:rerun-if-changed={}", readme.display());
    let text = std::fs::read_to_string(&readme).expect("README.md is at the workspace root");
    let start = text.find("```rust\n").expect("the README has a ```rust block") + "```rust\n".len();
    let end = start
        + text[start..]
            .find("\n```")
            .expect("the README's first ```rust block ends");
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("readme_first_example.rs");
    std::fs::write(out, &text[start..end]).unwrap();
}
