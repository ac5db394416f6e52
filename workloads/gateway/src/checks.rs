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
//!
//! Its tests are in `checks_tests.rs`.

use std::collections::HashMap;
use std::time::Instant;

use fleetward_protocol::{Category, Envelope, Rejection, ReplayWindow, check_timestamp, device_from_data_topic};

use crate::bucket::Bucket;
pub use crate::refusal::Refused;
use crate::registry::DeviceEntry;

#[derive(Clone, Copy, Debug, PartialEq)]
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

    /// New limits for the next message on (the Gateway's spec changed):
    /// buckets refill at the new rate up to the new burst from then.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
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
#[path = "checks_tests.rs"]
mod tests;
