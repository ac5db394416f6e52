//! When each device was last seen (its last message that passed every
//! check), for three series: the time itself per device, the count of
//! devices online, and each category's cadence, from which the chart's
//! `FleetwardDeviceSilent` alert decides that a device went quiet.
//!
//! A device is *online* while its last message is at most
//! [`ONLINE_WITHIN_REPORTS`] of its category's reports old. The alert rule
//! uses the same factor, so the count and the alert agree.
//!
//! Kept in memory: a new gateway pod knows a device again from its next
//! message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetward_protocol::Category;

use crate::metrics::Metrics;
use crate::registry::Registry;

/// A device is online while it missed fewer reports than this.
pub const ONLINE_WITHIN_REPORTS: u32 = 3;
/// How often the online count is refreshed (and removed devices forgotten).
pub const SWEEP: Duration = Duration::from_secs(10);

pub struct Liveness {
    /// Device id → (category, last seen as Unix seconds).
    seen: Mutex<HashMap<String, (Category, f64)>>,
    metrics: Arc<Metrics>,
}

impl Liveness {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        for c in Category::ALL {
            metrics
                .category_cadence
                .with_label_values(&[c.as_str()])
                .set(c.default_cadence().as_secs_f64());
        }
        Self {
            seen: Mutex::default(),
            metrics,
        }
    }

    /// A message of `device` passed the checks at `at` (Unix seconds).
    pub fn seen(&self, device: &str, category: Category, at: f64) {
        let mut seen = self.seen.lock().expect("liveness lock");
        // One lookup: this runs for every accepted message.
        let last = match seen.get_mut(device) {
            Some((c, last)) if *c == category => {
                *last = last.max(at);
                *last
            }
            Some((c, last)) => {
                let _ = self.metrics.device_last_seen.remove_label_values(&[device, c.as_str()]);
                (*c, *last) = (category, at);
                at
            }
            None => {
                seen.insert(device.to_string(), (category, at));
                at
            }
        };
        self.metrics
            .device_last_seen
            .with_label_values(&[device, category.as_str()])
            .set(last);
    }

    /// Forgets devices no longer `known` (left the registry) and counts those
    /// online at `now` (Unix seconds); the count is also the gauge's value.
    pub fn sweep(&self, now: f64, known: impl Fn(&str) -> bool) -> usize {
        let mut seen = self.seen.lock().expect("liveness lock");
        seen.retain(|device, (category, _)| {
            let known = known(device);
            if !known {
                let _ = self
                    .metrics
                    .device_last_seen
                    .remove_label_values(&[device, category.as_str()]);
            }
            known
        });
        let online = seen.values().filter(|(c, last)| online(*c, *last, now)).count();
        self.metrics.devices_online.set(online as i64);
        online
    }

    /// When each device was seen last, as the status writer reads it.
    pub fn last_seen(&self) -> HashMap<String, (Category, f64)> {
        self.seen.lock().expect("liveness lock").clone()
    }

    /// Sweeps every ten seconds, for as long as the gateway runs.
    pub async fn run(self: Arc<Self>, registry: Arc<Registry>) {
        let mut tick = tokio::time::interval(SWEEP);
        loop {
            tick.tick().await;
            self.sweep(unix_now(), |id| registry.get(id).is_some());
        }
    }
}

/// Whether a device of `category` last seen at `last` is online at `now`.
pub fn online(category: Category, last: f64, now: f64) -> bool {
    now - last <= category.default_cadence().as_secs_f64() * f64::from(ONLINE_WITHIN_REPORTS)
}

pub fn unix_now() -> f64 {
    chrono::Utc::now().timestamp_millis() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge(m: &Metrics, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
        m.registry
            .gather()
            .into_iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| {
                f.get_metric()
                    .iter()
                    .map(|s| {
                        let labels = s
                            .get_label()
                            .iter()
                            .map(|l| (l.name().to_string(), l.value().to_string()))
                            .collect();
                        (labels, s.get_gauge().get_value())
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn a_device_is_online_for_three_of_its_reports_and_then_not() {
        // A thermometer reports every 30 s.
        assert!(online(Category::IndoorThermometer, 1000.0, 1090.0));
        assert!(!online(Category::IndoorThermometer, 1000.0, 1090.5));
        // A meter every 900 s: an hour-old reading is too old, 40 min is not.
        assert!(online(Category::ElectricityMeter, 0.0, 2400.0));
        assert!(!online(Category::ElectricityMeter, 0.0, 3600.0));
    }

    #[test]
    fn the_series_follow_messages_and_the_count_follows_the_clock_and_the_registry() {
        let metrics = Arc::new(Metrics::default());
        let live = Liveness::new(metrics.clone());
        let cadences = gauge(&metrics, "fleetward_gateway_category_cadence_seconds");
        assert_eq!(cadences.len(), Category::ALL.len(), "one cadence per category");
        assert!(cadences.iter().any(|(l, v)| l[0].1 == "ipCamera" && *v == 10.0));

        live.seen("cam-1", Category::IpCamera, 1000.0);
        live.seen("t-1", Category::IndoorThermometer, 1000.0);
        // An older time (messages are checked in order, but be safe) does not move it back.
        live.seen("t-1", Category::IndoorThermometer, 990.0);
        let mut last = gauge(&metrics, "fleetward_gateway_device_last_seen_timestamp_seconds");
        last.sort_by(|a, b| a.0.cmp(&b.0));
        let label = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            last,
            vec![
                (
                    vec![label("category", "indoorThermometer"), label("device", "t-1")],
                    1000.0
                ),
                (vec![label("category", "ipCamera"), label("device", "cam-1")], 1000.0),
            ]
        );

        let registry = Mutex::new(vec!["cam-1", "t-1"]);
        let known = |id: &str| registry.lock().unwrap().contains(&id);
        assert_eq!(live.sweep(1020.0, known), 2);
        // 40 s later the camera (10 s cadence) missed three reports, the thermometer did not.
        assert_eq!(live.sweep(1040.0, known), 1);
        assert_eq!(gauge(&metrics, "fleetward_gateway_devices_online")[0].1, 1.0);
        live.seen("cam-1", Category::IpCamera, 1041.0);
        assert_eq!(live.sweep(1042.0, known), 2);

        // A device deleted from the registry loses its series.
        registry.lock().unwrap().retain(|id| *id != "t-1");
        assert_eq!(live.sweep(1043.0, known), 1);
        let last = gauge(&metrics, "fleetward_gateway_device_last_seen_timestamp_seconds");
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].0[1], ("device".to_string(), "cam-1".to_string()));

        // A device whose category changed keeps one series, under the new one.
        live.seen("cam-1", Category::WeatherStation, 1050.0);
        let last = gauge(&metrics, "fleetward_gateway_device_last_seen_timestamp_seconds");
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].0[0].1, "weatherStation");
    }
}
