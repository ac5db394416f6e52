//! The message checks, in order, stopping at the first failure (seed 003,
//! issue 3):
//!
//! 1. topic `device/{id}/data` — the broker's ACL only lets a client write
//!    its own topic, so `{id}` is the sender's TLS identity;
//! 2. known and enabled device (by that identity);
//! 3. not a retained message — a retained message is redelivered to every
//!    new subscription, the gateway's own included, so it would be a replay
//!    the broker performs (the broker refuses them too: `retain_available false`);
//! 4. size limit — before parsing, so an oversized body is never parsed;
//! 5. parse, then `device_id` must equal the TLS identity (impersonation);
//! 6. timestamp window, around the time the broker received the message
//!    (its `fleetward-received-ms` stamp): a message that waited at the
//!    broker while the gateway was away is as fresh as when it arrived, up
//!    to `max_queue_secs` of waiting (older: `expired_in_queue`);
//! 7. replay window (message ids of this device whose timestamps are still
//!    inside the timestamp window, plus `max_queue_secs`);
//! 8. HMAC, constant time, current key or the previous one in its grace period;
//! 9. per-device rate limit (token bucket, on the broker's receipt clock: a
//!    backlog drained at once is not a burst) — only signed messages spend tokens;
//! 10. payload schema of the device's category.
//!
//! The message id enters the replay window only once the signature is
//! valid and the rate limit passed: a forged message cannot poison the
//! window against a later real one, a rate-limited message (which was not
//! delivered) may be sent again, and the window holds at most what the rate
//! limit lets through in its span, `burst + rate · (2 · window + max_queue)`
//! ids per device (a timestamp may lead the clock by the window and is kept
//! until it trails it by the window and the longest allowed wait). An id
//! stays that long however many messages come between: a copy of a message
//! accepted from the queue is refused as long as the copy itself could be
//! accepted (received within the window of its timestamp, checked within
//! `max_queue` of its receipt).

use std::collections::HashMap;
use std::time::Instant;

use fleetward_protocol::{Category, Envelope, Rejection, ReplayWindow, check_timestamp, device_from_data_topic};

use crate::bucket::Bucket;
pub use crate::refusal::Refused;
use crate::registry::DeviceEntry;

#[derive(Clone, Debug)]
pub struct Limits {
    pub window_secs: i64,
    /// Longest a message may have waited at the broker.
    pub max_queue_secs: i64,
    pub max_message_bytes: usize,
    pub rate_per_second: f64,
    pub burst: f64,
}

/// A message that passed every check.
#[derive(Debug)]
pub struct Accepted {
    pub device_id: String,
    pub category: Category,
    pub envelope: Envelope,
    /// Verified with the previous key (during a rotation grace period).
    pub previous_key: bool,
    /// Until when (Unix seconds) a replay of this message must be refused:
    /// its id's expiry in the replay window.
    pub replay_expires: i64,
}

/// What the broker delivered: topic, body and its retain flag.
#[derive(Clone, Copy, Debug)]
pub struct Incoming<'a> {
    pub topic: &'a str,
    pub body: &'a [u8],
    pub retain: bool,
}

/// When a message is checked, and when the broker received it.
#[derive(Clone, Copy, Debug)]
pub struct At {
    /// Unix seconds, now.
    pub now: i64,
    /// Unix seconds at the broker's receipt (not after `now`).
    pub received: i64,
    /// The receipt on the monotonic clock the rate limits run on.
    pub clock: Instant,
}

impl At {
    /// A message received right now (no broker stamp, or in tests).
    pub fn now(now: i64, clock: Instant) -> Self {
        Self {
            now,
            received: now,
            clock,
        }
    }

    /// A message the broker received at `received_ms` (Unix milliseconds),
    /// checked at `now_ms`: its receipt on the monotonic clock is `clock`
    /// less the wait. A stamp from the future counts as now.
    pub fn received(received_ms: Option<i64>, now_ms: i64, clock: Instant) -> Self {
        let received_ms = received_ms.map_or(now_ms, |r| r.min(now_ms));
        let waited = std::time::Duration::from_millis(now_ms.saturating_sub(received_ms) as u64);
        Self {
            now: now_ms.div_euclid(1000),
            received: received_ms.div_euclid(1000),
            clock: clock.checked_sub(waited).unwrap_or(clock),
        }
    }
}

/// Refused messages a device may send before its messages are refused
/// unread (`rate_limited`, no parse, no HMAC) until the budget refills: a
/// flood of malformed or badly signed messages costs the gateway the
/// size check, not a parse and a signature each. Only the flooding device's
/// messages are affected.
pub const REFUSAL_BURST: f64 = 50.0;
pub const REFUSALS_PER_SECOND: f64 = 10.0;
/// How often every device's replay window is swept of expired ids (a
/// device's own window is swept on each of its messages; this catches
/// devices that went quiet).
const SWEEP_EVERY_SECS: i64 = 60;

struct DeviceState {
    replay: ReplayWindow,
    bucket: Bucket,
    refusals: Bucket,
}

pub struct Validator {
    limits: Limits,
    devices: HashMap<String, DeviceState>,
    /// Sum of the devices' replay-window lengths, kept as messages come in
    /// so the metric does not cost a walk over every device per message.
    replay_total: usize,
    last_sweep: i64,
}

impl Validator {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            devices: HashMap::new(),
            replay_total: 0,
            last_sweep: i64::MIN,
        }
    }

    /// Message ids currently remembered, over all devices.
    pub fn replay_entries(&self) -> usize {
        self.replay_total
    }

    /// Forgets a device's state (it was deleted).
    pub fn forget(&mut self, device_id: &str) {
        if let Some(state) = self.devices.remove(device_id) {
            self.replay_total -= state.replay.len();
        }
    }

    /// Puts back an id accepted before a restart (see `replay_store`).
    pub fn restore(&mut self, device_id: &str, message_id: &str, expires: i64, clock: Instant) {
        if self.state(device_id, clock).replay.insert(message_id, expires) {
            self.replay_total += 1;
        }
    }

    /// Runs the checks on one message. `lookup` resolves a device id to its
    /// registry entry.
    pub fn check(
        &mut self,
        msg: Incoming<'_>,
        at: At,
        lookup: impl Fn(&str) -> Option<DeviceEntry>,
    ) -> Result<Accepted, Refused> {
        let clock = at.clock;
        self.sweep(at.now);
        let Some(identity) = device_from_data_topic(msg.topic) else {
            return Err(refuse(Rejection::BadTopic, None, None));
        };
        let Some(entry) = lookup(identity) else {
            return Err(refuse(Rejection::UnknownDevice, Some(identity), None));
        };
        if !entry.enabled {
            return Err(refuse(Rejection::DisabledDevice, Some(identity), None));
        }
        let throttled = {
            let state = self.state(identity, clock);
            state.refusals.refill(clock, REFUSALS_PER_SECOND, REFUSAL_BURST);
            !state.refusals.has_token()
        };
        if throttled {
            return Err(refuse(Rejection::RateLimited, Some(identity), None));
        }
        let verdict = if msg.retain {
            Err(refuse(Rejection::Retained, Some(identity), None))
        } else if at.now - at.received > self.limits.max_queue_secs {
            Err(refuse(Rejection::ExpiredInQueue, Some(identity), None))
        } else {
            self.check_known(identity, entry, msg.body, at)
        };
        if let Err(refused) = &verdict
            && refused.rejection != Rejection::RateLimited
        {
            self.state(identity, clock).refusals.spend();
        }
        verdict
    }

    fn state(&mut self, identity: &str, clock: Instant) -> &mut DeviceState {
        state_in(&mut self.devices, &self.limits, identity, clock)
    }

    fn sweep(&mut self, now: i64) {
        if now.saturating_sub(self.last_sweep) < SWEEP_EVERY_SECS {
            return;
        }
        self.last_sweep = now;
        for state in self.devices.values_mut() {
            self.replay_total -= state.replay.expire(now);
        }
    }

    /// The checks after the registry's, for a known and enabled device.
    fn check_known(&mut self, identity: &str, entry: DeviceEntry, body: &[u8], at: At) -> Result<Accepted, Refused> {
        if body.len() > self.limits.max_message_bytes {
            return Err(refuse(
                Rejection::Oversize {
                    limit: self.limits.max_message_bytes,
                },
                Some(identity),
                None,
            ));
        }
        let envelope = Envelope::parse(body).map_err(|r| refuse(r, Some(identity), None))?;
        let mid = Some(envelope.message_id.as_str());
        if envelope.device_id != identity {
            return Err(refuse(Rejection::TopicMismatch, Some(identity), mid));
        }
        check_timestamp(envelope.timestamp, at.received, self.limits.window_secs)
            .map_err(|r| refuse(r, Some(identity), mid))?;

        let limits = &self.limits;
        let state = state_in(&mut self.devices, limits, identity, at.clock);
        self.replay_total -= state.replay.expire(at.now);
        if state.replay.contains(&envelope.message_id) {
            return Err(refuse(Rejection::Replay, Some(identity), mid));
        }
        let previous_key = if envelope.verify(&entry.key) {
            false
        } else if entry.previous_key_valid(at.received)
            && envelope.verify(entry.previous_key.as_deref().unwrap_or_default())
        {
            true
        } else {
            return Err(refuse(Rejection::BadSignature, Some(identity), mid));
        };

        let b = &mut state.bucket;
        b.refill(at.clock, limits.rate_per_second, limits.burst);
        if !b.has_token() {
            return Err(refuse(Rejection::RateLimited, Some(identity), mid));
        }
        b.spend();
        let replay_expires = envelope.timestamp + limits.window_secs + limits.max_queue_secs;
        state.replay.insert(&envelope.message_id, replay_expires);
        self.replay_total += 1;

        entry.category.validate(envelope.payload.get()).map_err(|detail| {
            refuse(
                Rejection::SchemaViolation {
                    category: entry.category.as_str(),
                    detail,
                },
                Some(identity),
                mid,
            )
        })?;
        Ok(Accepted {
            device_id: identity.to_string(),
            category: entry.category,
            envelope,
            previous_key,
            replay_expires,
        })
    }
}

fn refuse(rejection: Rejection, device_id: Option<&str>, message_id: Option<&str>) -> Refused {
    Refused {
        rejection,
        device_id: device_id.map(str::to_string),
        message_id: message_id.map(str::to_string),
    }
}

/// A device's state, made on first sight (a free function so that it
/// borrows only the map, not the whole validator). Looked up by `&str`: the
/// id is copied only when the device is new, not on each of a message's
/// lookups.
fn state_in<'a>(
    devices: &'a mut HashMap<String, DeviceState>,
    limits: &Limits,
    identity: &str,
    clock: Instant,
) -> &'a mut DeviceState {
    if !devices.contains_key(identity) {
        let state = DeviceState {
            replay: ReplayWindow::new(),
            bucket: Bucket::full(limits.burst, clock),
            refusals: Bucket::full(REFUSAL_BURST, clock),
        };
        devices.insert(identity.to_string(), state);
    }
    devices.get_mut(identity).expect("inserted above")
}

#[cfg(test)]
mod tests {
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
}
