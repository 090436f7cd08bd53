//! The README's first example, run as a newcomer runs it: its handler must run every time
//! (it publishes and shuts down at once, so the shutdown must drain what was published).

use std::process::Command;

const RUNS: usize = 20;

#[test]
fn the_readme_first_example_handles_its_event_in_every_run() {
    let mut handled = 0;
    for run in 0..RUNS {
        let output = Command::new(env!("CARGO_BIN_EXE_readme_example"))
            .output()
            .expect("the README example binary runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "run {run}: the README example failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        if stdout.contains("reserving stock for XYZ-123 (event ") {
            handled += 1;
        }
    }
    assert_eq!(
        handled, RUNS,
        "the README example's handler ran in {handled} of {RUNS} runs"
    );
}
