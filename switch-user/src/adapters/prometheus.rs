//! The Prometheus canary gate: one instant query against the HTTP API
//! (http or https, optional bearer token, a total timeout), answered with a
//! number, "no data", or why it failed.

use std::time::Duration;

use crate::model::gates::Reading;

/// Runs `query` against `url` (http[s]://host:port[/prefix]).
pub fn query(url: &str, query: &str, token: Option<&str>, timeout: Duration) -> Reading {
    match fetch(url, query, token, timeout) {
        Ok(body) => parse(&body),
        Err(e) => Reading::Failed(e),
    }
}

fn fetch(url: &str, q: &str, token: Option<&str>, timeout: Duration) -> Result<String, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent
        .get(format!("{}/api/v1/query", url.trim_end_matches('/')))
        .query("query", q);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let mut resp = req.call().map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("HTTP {}", status.as_u16()));
    }
    Ok(body)
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
    }

    /// A one-shot HTTP server on loopback that records the request and
    /// answers slowly or at once.
    fn server(
        answer: &'static str,
        delay: Duration,
    ) -> (String, std::sync::mpsc::Receiver<String>) {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).to_string());
            std::thread::sleep(delay);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        });
        (url, rx)
    }

    #[test]
    fn sends_the_query_and_the_token_and_honours_the_timeout() {
        let ok = r#"{"status":"success","data":{"resultType":"scalar","result":[1,"0.5"]}}"#;
        let (url, rx) = server(ok, Duration::ZERO);
        let r = query(
            &url,
            "sum(rate(x[1m]))",
            Some("s3cret"),
            Duration::from_secs(5),
        );
        assert_eq!(r, Reading::Value(0.5));
        let req = rx.recv().unwrap();
        assert!(
            req.starts_with("GET /api/v1/query?query=sum(rate(x%5B1m%5D))"),
            "{req}"
        );
        assert!(
            req.to_lowercase().contains("authorization: bearer s3cret"),
            "{req}"
        );

        let (url, _rx) = server(ok, Duration::from_secs(3));
        let t = std::time::Instant::now();
        let r = query(&url, "x", None, Duration::from_millis(300));
        assert!(matches!(r, Reading::Failed(_)), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(2), "the timeout is total");
    }
}
