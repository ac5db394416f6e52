//! An IoT endpoint that throttles every request: retried, then reported in
//! the Gateway's condition without secrets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fleetward_operator::crd::Gateway;
use kube::api::DeleteParams;

use crate::common::*;
use crate::{Leave, aws_operator, aws_requests, gateway_yaml};

/// An IoT endpoint that throttles every request: the SDK retries with
/// backoff (several attempts reach the endpoint), then the Gateway says
/// why it is not Ready, and nothing secret is in what it says.
#[tokio::test]
async fn a_throttling_aws_is_retried_then_reported_in_the_condition() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let count = count.clone();
            // Every request on the connection (the SDK keeps it alive).
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                loop {
                    let mut length = 0usize;
                    let mut started = false;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        started = true;
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    if !started {
                        continue;
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let answer = r#"{"message":"Rate exceeded"}"#;
                    let sent = write!(
                        writer,
                        "HTTP/1.1 429 Too Many Requests\r\nx-amzn-ErrorType: ThrottlingException\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if sent.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let op = aws_operator();
    let ns = TestNs::new("fw-aws-throttle").await;
    let _leave = Leave(ns.name.clone());
    let gateways = ns.api::<Gateway>();
    ns.apply_yaml(&gateway_yaml("slow", &url)).await;
    let gw = wait_for(
        "Gateway slow reports the refusal",
        90,
        || get_opt(&gateways, "slow"),
        |g: &Gateway| {
            g.status
                .as_ref()
                .and_then(|s| ready_reason(&s.conditions))
                .is_some_and(|(s, r)| s == "False" && r == "AwsIotFailed")
        },
    )
    .await;
    let cond = gw
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert!(
        cond.message.contains("ThrottlingException") && cond.message.contains("Rate exceeded"),
        "{}",
        cond.message
    );
    let attempts = seen.load(Ordering::SeqCst);
    assert!(attempts >= 5, "the SDK retried before giving up: {attempts} requests");
    let counts = aws_requests(op);
    assert!(counts.values().sum::<u64>() >= 5, "{counts:?}");
    // Nothing of the CA's key in the condition or the operator's log.
    let key = ns.secret_value("slow-ca", "tls.key").await;
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!cond.message.contains(&body));
    assert!(!op.log_text().contains(&body), "the CA key is not in the log");
    // Deleting the Gateway still works (nothing was registered).
    ns.api::<Gateway>()
        .delete("slow", &DeleteParams::default())
        .await
        .unwrap();
    wait_until("Gateway slow gone", 60, || async {
        get_opt(&gateways, "slow").await.is_none()
    })
    .await;
    ns.cleanup().await;
}
