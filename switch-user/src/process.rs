//! Running a helper program (`ip`, `birdc`, `bird`) with a deadline.
//!
//! A leaf every layer may use: it imports nothing of the crate. Input is
//! written by a thread of its own while the output is read, so a long
//! input never deadlocks against a long output (both pipes full), and a
//! helper that hangs is killed at its deadline instead of holding up
//! whoever waits for it.

use std::{
    io::{Read, Write},
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// The deadline of a helper when its caller names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `program args`, feeding it `input` on stdin, and returns its
/// output, or fails once `timeout` has passed (the helper is killed).
pub fn run(
    program: &str,
    args: &[&str],
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_command(cmd, input, timeout).with_context(|| format!("{program} {}", args.join(" ")))
}

/// The same for a prepared command (its stdio is set here).
pub fn run_command(mut cmd: Command, input: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("cannot start it")?;
    let pid = child.id() as libc::pid_t;
    let writer = match (child.stdin.take(), input) {
        (Some(mut stdin), Some(input)) => {
            let input = input.to_vec();
            Some(std::thread::spawn(move || {
                // A helper that stops reading early (it failed) closes the
                // pipe: the error is its exit status's to tell.
                let _ = stdin.write_all(&input);
            }))
        }
        _ => None,
    };
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let read_err = std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(e) = err.as_mut() {
                let _ = e.read_to_end(&mut v);
            }
            v
        });
        let mut stdout = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut stdout);
        }
        let stderr = read_err.join().unwrap_or_default();
        let status = child.wait();
        let _ = tx.send(status.map(|status| Output {
            status,
            stdout,
            stderr,
        }));
    });
    let result = match rx.recv_timeout(timeout) {
        Ok(r) => r.context("waiting for it"),
        Err(_) => {
            // Not reaped yet (the reader thread has not sent), so the pid is
            // still this child's.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.recv_timeout(Duration::from_secs(1));
            bail!("no answer within {timeout:?}: killed")
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_input_and_a_long_output_do_not_deadlock() {
        // 4 MB through `cat`: both pipes fill many times over.
        let input = vec![b'x'; 4 << 20];
        let out = run("cat", &[], Some(&input), Duration::from_secs(20)).unwrap();
        assert_eq!(out.stdout.len(), input.len());
    }

    #[test]
    fn a_helper_that_hangs_is_killed_at_its_deadline() {
        let t = std::time::Instant::now();
        let e = run("sleep", &["30"], None, Duration::from_millis(200)).unwrap_err();
        assert!(format!("{e:#}").contains("no answer within"), "{e:#}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
