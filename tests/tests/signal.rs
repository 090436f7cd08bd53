//! `EventBus::run_until_signal`: SIGTERM (what `docker stop` and Kubernetes send) shuts the
//! bus down gracefully, so the events published before it are handled before the exit.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn sigterm_shuts_down_after_handling_what_was_published() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_signal_child"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // The handler takes 300 ms per event: most are still waiting now.
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(
        status.success(),
        "the child did not exit cleanly on SIGTERM: {status}"
    );
    assert_eq!(rest.trim(), "handled 5", "SIGTERM dropped published events");
}
