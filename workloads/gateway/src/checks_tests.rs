//! Tests of `checks.rs`: each check against the attack it stops, and the
//! rules of the replay window and the rate limits, on `Validator::check`
//! alone (time, clock and registry are its arguments).

use super::*;
use fleetward_protocol::raw;
use serde_json::json;
use std::time::Duration;

const KEY: &[u8] = b"k-current";
const OLD: &[u8] = b"k-previous";

fn limits() -> Limits {
    Limits {
        window_secs: 300,
        max_queue_secs: 0,
        max_message_bytes: 1024,
        rate_per_second: 1.0,
        burst: 3.0,
    }
}

fn entry(enabled: bool) -> DeviceEntry {
    DeviceEntry {
        category: Category::IndoorThermometer,
        enabled,
        key: KEY.to_vec(),
        previous_key: Some(OLD.to_vec()),
        previous_expires: Some(2000),
        version: 1,
    }
}

fn msg(key: &[u8], device: &str, ts: i64, id: &str, payload: serde_json::Value) -> Vec<u8> {
    Envelope::sign(key, device, ts, id, raw(&payload))
        .to_json()
        .into_bytes()
}

fn ok_payload() -> serde_json::Value {
    json!({"temperature": 21.5})
}

fn run(v: &mut Validator, topic: &str, body: &[u8], now: i64, clock: Instant) -> Result<Accepted, Rejection> {
    run_at(v, topic, body, At::now(now, clock))
}

/// `run` for a message the broker received at another time than now.
fn run_at(v: &mut Validator, topic: &str, body: &[u8], at: At) -> Result<Accepted, Rejection> {
    v.check(inc(topic, body), at, |id| (id == "d1").then(|| entry(true)))
        .map_err(|r| r.rejection)
}

fn inc<'a>(topic: &'a str, body: &'a [u8]) -> Incoming<'a> {
    Incoming {
        topic,
        body,
        retain: false,
    }
}

#[test]
fn a_device_sending_refused_messages_is_refused_unread_until_its_budget_refills() {
    let mut v = Validator::new(Limits {
        rate_per_second: 1000.0,
        burst: 1000.0,
        ..limits()
    });
    let t = Instant::now();
    for _ in 0..REFUSAL_BURST as usize {
        assert!(matches!(
            run(&mut v, "device/d1/data", b"{not json", 1000, t).unwrap_err(),
            Rejection::Malformed(_)
        ));
    }
    // Budget spent: refused without being read, valid or not.
    assert_eq!(
        run(&mut v, "device/d1/data", b"{not json", 1000, t).unwrap_err(),
        Rejection::RateLimited
    );
    let good = msg(KEY, "d1", 1000, "g1", ok_payload());
    assert_eq!(
        run(&mut v, "device/d1/data", &good, 1000, t).unwrap_err(),
        Rejection::RateLimited
    );
    // Another device is unaffected; a second later the budget has refilled.
    let other = msg(KEY, "d2", 1000, "o1", ok_payload());
    let lookup = |id: &str| (id == "d2").then(|| entry(true));
    assert!(v.check(inc("device/d2/data", &other), At::now(1000, t), lookup).is_ok());
    let later = t + std::time::Duration::from_secs(1);
    assert!(run(&mut v, "device/d1/data", &good, 1001, later).is_ok());
}

#[test]
fn accepts_a_valid_message_once() {
    let mut v = Validator::new(limits());
    let t = Instant::now();
    let m = msg(KEY, "d1", 1000, "m1", ok_payload());
    let a = run(&mut v, "device/d1/data", &m, 1000, t).unwrap();
    assert!(!a.previous_key);
    assert_eq!(
        run(&mut v, "device/d1/data", &m, 1001, t).unwrap_err(),
        Rejection::Replay
    );
}

#[test]
fn each_check_refuses_its_attack() {
    let mut v = Validator::new(limits());
    let t = Instant::now();
    let good = |id: &str| msg(KEY, "d1", 1000, id, ok_payload());
    assert_eq!(
        run(&mut v, "device/d1/other", &good("a"), 1000, t).unwrap_err(),
        Rejection::BadTopic
    );
    assert_eq!(
        run(&mut v, "device/d9/data", &good("a"), 1000, t).unwrap_err(),
        Rejection::UnknownDevice
    );
    let r = v.check(inc("device/d1/data", &good("a")), At::now(1000, t), |_| {
        Some(entry(false))
    });
    assert_eq!(r.unwrap_err().rejection, Rejection::DisabledDevice);
    let big = msg(KEY, "d1", 1000, "big", json!({"temperature": 1, "x": "y".repeat(2000)}));
    assert!(matches!(
        run(&mut v, "device/d1/data", &big, 1000, t).unwrap_err(),
        Rejection::Oversize { .. }
    ));
    assert!(matches!(
        run(&mut v, "device/d1/data", b"{not json", 1000, t).unwrap_err(),
        Rejection::Malformed(_)
    ));
    // Impersonation: d1's connection claims to be d2.
    let claim = msg(KEY, "d2", 1000, "imp", ok_payload());
    assert_eq!(
        run(&mut v, "device/d1/data", &claim, 1000, t).unwrap_err(),
        Rejection::TopicMismatch
    );
    assert_eq!(
        run(&mut v, "device/d1/data", &good("s"), 1301, t).unwrap_err(),
        Rejection::StaleTimestamp
    );
    assert_eq!(
        run(&mut v, "device/d1/data", &good("f"), 699, t).unwrap_err(),
        Rejection::FutureTimestamp
    );
    let tampered = String::from_utf8(good("t")).unwrap().replace("21.5", "99.9");
    assert_eq!(
        run(&mut v, "device/d1/data", tampered.as_bytes(), 1000, t).unwrap_err(),
        Rejection::BadSignature
    );
    let schema = msg(KEY, "d1", 1000, "sch", json!({"temperature": "hot"}));
    assert!(matches!(
        run(&mut v, "device/d1/data", &schema, 1000, t).unwrap_err(),
        Rejection::SchemaViolation { .. }
    ));
}

#[test]
fn forged_message_does_not_poison_the_replay_cache() {
    let mut v = Validator::new(limits());
    let t = Instant::now();
    let forged = msg(b"attacker", "d1", 1000, "m1", ok_payload());
    assert_eq!(
        run(&mut v, "device/d1/data", &forged, 1000, t).unwrap_err(),
        Rejection::BadSignature
    );
    assert!(
        run(
            &mut v,
            "device/d1/data",
            &msg(KEY, "d1", 1000, "m1", ok_payload()),
            1000,
            t
        )
        .is_ok()
    );
}

#[test]
fn previous_key_verifies_only_during_its_grace_period() {
    let mut v = Validator::new(limits());
    let t = Instant::now();
    let old = msg(OLD, "d1", 1000, "o1", ok_payload());
    assert!(run(&mut v, "device/d1/data", &old, 1000, t).unwrap().previous_key);
    let old2 = msg(OLD, "d1", 2001, "o2", ok_payload());
    assert_eq!(
        run(&mut v, "device/d1/data", &old2, 2001, t).unwrap_err(),
        Rejection::BadSignature
    );
}

#[test]
fn flood_is_rate_limited_and_tokens_refill() {
    let mut v = Validator::new(limits());
    let t = Instant::now();
    for i in 0..3 {
        assert!(
            run(
                &mut v,
                "device/d1/data",
                &msg(KEY, "d1", 1000, &format!("b{i}"), ok_payload()),
                1000,
                t
            )
            .is_ok()
        );
    }
    assert_eq!(
        run(
            &mut v,
            "device/d1/data",
            &msg(KEY, "d1", 1000, "b3", ok_payload()),
            1000,
            t
        )
        .unwrap_err(),
        Rejection::RateLimited
    );
    let later = t + Duration::from_secs(2);
    assert!(
        run(
            &mut v,
            "device/d1/data",
            &msg(KEY, "d1", 1000, "b4", ok_payload()),
            1000,
            later
        )
        .is_ok()
    );
}

#[test]
fn a_replay_is_refused_while_its_timestamp_is_in_the_window_whatever_came_between() {
    let mut v = Validator::new(Limits {
        rate_per_second: 1_000_000.0,
        burst: 1_000_000.0,
        ..limits()
    });
    let t = Instant::now();
    let first = msg(KEY, "d1", 1000, "first", ok_payload());
    assert!(run(&mut v, "device/d1/data", &first, 1000, t).is_ok());
    // The old FIFO of 1,000 ids forgot "first" after 1,000 newer messages.
    for i in 0..5000 {
        let m = msg(KEY, "d1", 1000, &format!("n{i}"), ok_payload());
        assert!(run(&mut v, "device/d1/data", &m, 1000, t).is_ok());
    }
    for now in [1000, 1250, 1300] {
        assert_eq!(
            run(&mut v, "device/d1/data", &first, now, t).unwrap_err(),
            Rejection::Replay,
            "at {now}"
        );
    }
    // Once the timestamp leaves the window, the timestamp check refuses it
    // and the id is forgotten.
    assert_eq!(
        run(&mut v, "device/d1/data", &first, 1301, t).unwrap_err(),
        Rejection::StaleTimestamp
    );
    let fresh = msg(KEY, "d1", 1301, "later", ok_payload());
    assert!(run(&mut v, "device/d1/data", &fresh, 1301, t).is_ok());
    assert_eq!(v.replay_entries(), 1);
}

#[test]
fn a_rate_limited_message_is_not_remembered_and_may_be_sent_again() {
    let mut v = Validator::new(limits());
    let t = Instant::now();
    for i in 0..3 {
        let m = msg(KEY, "d1", 1000, &format!("b{i}"), ok_payload());
        assert!(run(&mut v, "device/d1/data", &m, 1000, t).is_ok());
    }
    let m = msg(KEY, "d1", 1000, "late", ok_payload());
    assert_eq!(
        run(&mut v, "device/d1/data", &m, 1000, t).unwrap_err(),
        Rejection::RateLimited
    );
    assert_eq!(v.replay_entries(), 3);
    let later = t + Duration::from_secs(1);
    assert!(run(&mut v, "device/d1/data", &m, 1001, later).is_ok());
    assert_eq!(
        run(&mut v, "device/d1/data", &m, 1001, later + Duration::from_secs(5)).unwrap_err(),
        Rejection::Replay
    );
}

/// What the broker received at `received` (Unix seconds), checked at `now`.
fn queued(received: i64, now: i64, t: Instant) -> At {
    At::received(Some(received * 1000), now * 1000, t)
}

#[test]
fn a_message_that_waited_at_the_broker_is_judged_at_its_receipt() {
    let mut v = Validator::new(Limits {
        max_queue_secs: 600,
        ..limits()
    });
    let t = Instant::now();
    let d1 = "device/d1/data";
    let m = msg(KEY, "d1", 1000, "q1", ok_payload());
    // Received fresh, checked 500 s later (the gateway was away): accepted.
    assert!(run_at(&mut v, d1, &m, queued(1000, 1500, t)).is_ok());
    // A copy the broker also received inside the window, checked as late
    // as it may be: still a replay (its id is kept window + max_queue).
    assert_eq!(
        run_at(&mut v, d1, &m, queued(1300, 1900, t)).unwrap_err(),
        Rejection::Replay
    );
    // Stale at receipt stays stale, however it is checked.
    let old = msg(KEY, "d1", 1000, "q2", ok_payload());
    assert_eq!(
        run_at(&mut v, d1, &old, queued(1301, 1302, t)).unwrap_err(),
        Rejection::StaleTimestamp
    );
    // Waited longer than max_queue: refused for that, not as an attack.
    let late = msg(KEY, "d1", 2000, "q3", ok_payload());
    assert_eq!(
        run_at(&mut v, d1, &late, queued(2000, 2601, t)).unwrap_err(),
        Rejection::ExpiredInQueue
    );
    // A broker stamp from the future counts as now.
    let now = msg(KEY, "d1", 3000, "q4", ok_payload());
    assert!(run_at(&mut v, d1, &now, queued(9000, 3000, t)).is_ok());
}

#[test]
fn a_backlog_is_rate_limited_at_the_pace_it_reached_the_broker() {
    // 1 msg/s, burst 3: thirty messages the broker received a second
    // apart, all checked at once when the gateway comes back.
    let mut v = Validator::new(Limits {
        max_queue_secs: 600,
        ..limits()
    });
    let t = Instant::now() + Duration::from_secs(600);
    for i in 0..30 {
        let m = msg(KEY, "d1", 1000 + i, &format!("b{i}"), ok_payload());
        let r = run_at(&mut v, "device/d1/data", &m, queued(1000 + i, 1100, t));
        assert!(r.is_ok(), "message {i}: {r:?}");
    }
    // Thirty received in the same second are a burst, backlog or not.
    let refused = (0..30)
        .filter(|i| {
            let m = msg(KEY, "d1", 1050, &format!("s{i}"), ok_payload());
            run_at(&mut v, "device/d1/data", &m, queued(1050, 1100, t)).is_err()
        })
        .count();
    assert!(refused >= 26, "{refused} of 30 refused");
}

#[test]
fn retained_messages_are_refused_unread() {
    let mut v = Validator::new(limits());
    let t = Instant::now();
    let m = msg(KEY, "d1", 1000, "r1", ok_payload());
    let retained = Incoming {
        retain: true,
        ..inc("device/d1/data", &m)
    };
    let r = v.check(retained, At::now(1000, t), |_| Some(entry(true)));
    assert_eq!(r.unwrap_err().rejection, Rejection::Retained);
    // Not remembered either: the same message live is accepted.
    assert!(run(&mut v, "device/d1/data", &m, 1000, t).is_ok());
}

#[test]
fn restored_ids_are_replays() {
    let mut v = Validator::new(limits());
    let t = Instant::now();
    v.restore("d1", "m1", 1300, t);
    v.restore("d1", "m1", 1300, t);
    assert_eq!(v.replay_entries(), 1);
    let m = msg(KEY, "d1", 1000, "m1", ok_payload());
    assert_eq!(
        run(&mut v, "device/d1/data", &m, 1000, t).unwrap_err(),
        Rejection::Replay
    );
}

#[test]
fn replay_entries_counts_every_window_and_forgets_deleted_and_expired_ids() {
    let mut lim = limits();
    lim.burst = 100.0;
    let mut v = Validator::new(lim);
    let t = Instant::now();
    let lookup = |id: &str| (id == "d1" || id == "d2").then(|| entry(true));
    for i in 0..3 {
        for d in ["d1", "d2"] {
            let m = msg(KEY, d, 1000 + i, &format!("m{i}"), ok_payload());
            v.check(inc(&format!("device/{d}/data"), &m), At::now(1000, t), lookup)
                .unwrap();
        }
    }
    assert_eq!(v.replay_entries(), 6);
    v.forget("d1");
    assert_eq!(v.replay_entries(), 3);
    v.forget("nobody");
    assert_eq!(v.replay_entries(), 3);
    // A quiet device's expired ids go at the next sweep (another device's message).
    let m = msg(KEY, "d1", 1302, "x", ok_payload());
    v.check(inc("device/d1/data", &m), At::now(1302, t), lookup).unwrap();
    assert_eq!(v.replay_entries(), 1 + 1, "d2 keeps only m2 (expires 1302)");
}
