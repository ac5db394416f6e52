//! The host's side of the network: a free port, waiting for a listener,
//! and HTTP GETs by curl (to a process under test on loopback, or to an
//! in-cluster Service address the host routes to the node).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_port(port: u16, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port} after {secs}s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The body of a successful answer (status below 400, what `curl -f`
/// counts as success) within 5 s; `None` for any other answer or none:
/// for polling a process until it serves, and reading its `/metrics`.
pub fn http_get(url: &str) -> Option<String> {
    match curl_get(url, None, 5) {
        Ok((status, body)) if status < 400 => Some(body),
        _ => None,
    }
}

/// Any answer's status and body, with a bearer key when given (the key
/// goes to curl on stdin, never on its command line); panics when no
/// answer came within 10 s. For checking refusals as well as answers.
pub fn http_status(url: &str, bearer: Option<&str>) -> (u16, String) {
    curl_get(url, bearer, 10).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// `curl` GET: (status, body), or curl's error output when no answer came
/// within `max_secs`.
fn curl_get(url: &str, bearer: Option<&str>, max_secs: u32) -> Result<(u16, String), String> {
    let header = bearer.map(|key| format!("Authorization: Bearer {key}\n"));
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", &max_secs.to_string(), "-w", "\n%{http_code}"]);
    if header.is_some() {
        cmd.args(["-H", "@-"]).stdin(Stdio::piped());
    }
    let mut child = cmd
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("curl: {e}"))?;
    if let Some(h) = &header {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(h.as_bytes())
            .map_err(|e| format!("curl's stdin: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("curl: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let out = String::from_utf8_lossy(&out.stdout);
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    let code = code.trim().parse().map_err(|_| format!("no status in {out:?}"))?;
    Ok((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    use super::{http_get, http_status};

    /// A server on loopback answering each request with `status` and
    /// `body`; the Authorization header it saw goes to the body's end.
    fn serve(status: &'static str, body: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/x", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut auth = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.strip_prefix("Authorization: ") {
                        auth = v.trim().to_string();
                    }
                }
                let body = format!("{body}{auth}");
                let _ = write!(
                    &stream,
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        url
    }

    #[test]
    fn http_get_gives_the_body_of_a_success_only() {
        assert_eq!(http_get(&serve("200 OK", "ok\n")).as_deref(), Some("ok\n"));
        assert_eq!(http_get(&serve("401 Unauthorized", "no")), None);
        assert_eq!(http_get(&format!("http://127.0.0.1:{}/", super::free_port())), None);
    }

    #[test]
    fn http_status_gives_any_answer_and_sends_the_bearer_key() {
        let url = serve("401 Unauthorized", "refused;");
        assert_eq!(http_status(&url, None), (401, "refused;".to_string()));
        assert_eq!(http_status(&url, Some("k1")), (401, "refused;Bearer k1".to_string()));
    }
}
