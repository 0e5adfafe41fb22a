//! The API client: one request, one answer over the daemon's Unix socket.
//! Used by the CLI and the tests; it knows the API types and nothing else.

use std::path::Path;

use anyhow::{Result, anyhow};

use crate::model::api::{self, Command, Request, Response};

/// How long the CLI waits for the daemon's answer.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Sends one request to the daemon and returns its response.
pub fn call(api: &Path, cmd: Command) -> Result<Response> {
    call_with_timeout(api, cmd, CALL_TIMEOUT)
}

/// The same, waiting at most `timeout` for the answer.
pub fn call_with_timeout(
    api: &Path,
    cmd: Command,
    timeout: std::time::Duration,
) -> Result<Response> {
    request(api, cmd, timeout, None)
}

/// `call`, saying how the request comes (`config reload`), for the audit
/// trail.
pub fn call_via(api: &Path, cmd: Command, via: &str) -> Result<Response> {
    request(api, cmd, CALL_TIMEOUT, Some(via.to_string()))
}

fn request(
    api: &Path,
    cmd: Command,
    timeout: std::time::Duration,
    via: Option<String>,
) -> Result<Response> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(api).map_err(|e| {
        anyhow!("cannot reach the switch daemon at {} ({e}); is `switch daemon` running? (--api or SWITCH_API)", api.display())
    })?;
    let mut line = serde_json::to_vec(&Request {
        v: api::VERSION,
        via,
        cmd,
    })?;
    line.push(b'\n');
    // A daemon that hangs must not hang the operator's shell.
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(&line)?;
    let mut reader = std::io::BufReader::new(stream);
    let mut buf = String::new();
    reader.read_line(&mut buf).map_err(|e| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            anyhow!(
                "the switch daemon at {} did not answer within {}s",
                api.display(),
                CALL_TIMEOUT.as_secs()
            )
        } else {
            anyhow!("reading the daemon's answer: {e}")
        }
    })?;
    serde_json::from_str(&buf).map_err(|e| anyhow!("bad response from daemon: {e}"))
}
