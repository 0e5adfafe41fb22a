//! The Prometheus canary gate: one instant query over plain HTTP, answered
//! with a number, "no data", or why it failed.

use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    time::Duration,
};

use crate::strategy::Reading;

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs `query` against `url` (http://host:port[/prefix]).
pub fn query(url: &str, query: &str, timeout: Duration) -> Reading {
    match fetch(url, query, timeout) {
        Ok(body) => parse(&body),
        Err(e) => Reading::Failed(e),
    }
}

fn fetch(url: &str, q: &str, timeout: Duration) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// is supported"))?;
    let (hostport, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("{hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport}: no address"))?;
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "GET {prefix}/api/v1/query?query={} HTTP/1.0\r\nHost: {hostport}\r\n\r\n",
        encode(q)
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").ok_or("malformed HTTP answer")?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("HTTP {status}"));
    }
    Ok(body.to_string())
}

/// Reads the first sample of an instant-vector or scalar answer.
pub fn parse(body: &str) -> Reading {
    let v: serde_json::Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(e) => return Reading::Failed(format!("not JSON: {e}")),
    };
    if v["status"] != "success" {
        return Reading::Failed(format!("status {}", v["status"]));
    }
    let data = &v["data"];
    let sample = match data["resultType"].as_str() {
        Some("vector") => match data["result"].as_array() {
            Some(r) if r.is_empty() => return Reading::NoData,
            Some(r) => &r[0]["value"][1],
            None => return Reading::Failed("no result".into()),
        },
        Some("scalar") => &data["result"][1],
        other => return Reading::Failed(format!("result type {other:?}")),
    };
    match sample.as_str().and_then(|s| s.parse::<f64>().ok()) {
        Some(x) if x.is_nan() => Reading::NoData,
        Some(x) => Reading::Value(x),
        None => Reading::Failed(format!("sample {sample} is not a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vectors_scalars_and_empty_results() {
        let vec = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.1,"0.25"]}]}}"#;
        assert_eq!(parse(vec), Reading::Value(0.25));
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(parse(empty), Reading::NoData);
        let scalar =
            r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.1,"3"]}}"#;
        assert_eq!(parse(scalar), Reading::Value(3.0));
        assert!(matches!(
            parse(r#"{"status":"error","error":"bad"}"#),
            Reading::Failed(_)
        ));
        assert!(matches!(parse("<html>"), Reading::Failed(_)));
        assert_eq!(
            encode("rate(x{a=\"b\"}[1m])"),
            "rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29"
        );
    }
}
