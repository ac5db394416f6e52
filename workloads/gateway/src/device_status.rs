//! Each Device's `status.lastSeen` and `status.online`, which
//! `kubectl get devices` shows: written by the gateway that sees the
//! device's messages, never once per message.
//!
//! Every sweep (ten seconds) the [`StatusBook`] compares what it last wrote
//! with what [`Liveness`](crate::liveness::Liveness) knows, and a device is
//! due when
//! - it went online or offline (first: these are what a reader acts on);
//! - its last message is the [resolution](StatusBook::resolution) newer
//!   than the `lastSeen` written: a minute for up to 2,400 devices online
//!   (at 50 writes a second), then as long as keeps these refreshes within
//!   four fifths of the budget (four minutes for 10,000), so a thermometer
//!   reporting every 30 s is written once a minute, not twice;
//! - its status says something else than what this pod knows: the book
//!   starts from the Devices' statuses as the pod found them (one list of
//!   the namespace's Devices), so a restart rewrites nothing that is still
//!   true, and a device the status calls online that stays silent since the
//!   pod started for longer than it may is written offline (it went quiet
//!   while no gateway ran). A Device never seen, with no `online` yet (a new
//!   fleet not yet connected), is left so: nothing is written for it.
//!
//! The writes due are paced by a budget of writes per second
//! (`DEVICE_STATUS_WRITES_PER_SECOND`, 50 as the operator deploys it):
//! 10,000 devices of mixed categories need about 30 (the `device_status`
//! bench). Beyond the budget the oldest `lastSeen` go first and it is a few
//! minutes coarser, while a change of `online` still goes out within a
//! sweep or two. What is written
//! is a merge patch of those two fields of the status subresource; the
//! operator never writes them (`DeviceStatus::operator_owned`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use fleetward_protocol::Category;
use fleetward_service::backoff::Backoff;
use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};

use crate::liveness::{Liveness, SWEEP, online, unix_now};
use crate::metrics::Metrics;
use crate::registry::Registry;

/// `lastSeen` is written again once the device's last message is at least
/// this many seconds newer than the value written.
pub const MIN_RESOLUTION: f64 = 60.0;
/// The share of the budget that the refreshes of `lastSeen` may take: the
/// rest is for devices going online or offline.
const REFRESH_SHARE: f64 = 0.8;
/// Unspent budget is kept for at most this many seconds of writes.
const BUDGET_SECONDS: f64 = 10.0;
/// Status writes in flight at once.
const CONCURRENCY: usize = 8;
/// Who the API server records as the writer of the two fields.
const MANAGER: &str = "fleetward-gateway";

/// One Device's status write: `online`, and `lastSeen` when known.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusUpdate {
    pub device: String,
    /// Unix seconds; `None` for a device not seen by this pod.
    pub last_seen: Option<f64>,
    pub online: bool,
}

impl StatusUpdate {
    /// The merge patch of the status subresource.
    pub fn patch(&self) -> serde_json::Value {
        let mut status = serde_json::json!({ "online": self.online });
        if let Some(at) = self
            .last_seen
            .and_then(|t| chrono::DateTime::from_timestamp(t as i64, 0))
        {
            status["lastSeen"] = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true).into();
        }
        serde_json::json!({ "status": status })
    }
}

/// What this gateway pod wrote, and what is due next.
pub struct StatusBook {
    written: HashMap<String, (Option<f64>, bool)>,
    /// When this pod started (Unix seconds): a device silent since then is
    /// offline once it missed as many reports as `online` allows.
    started: f64,
    writes_per_second: f64,
    budget: f64,
    planned_at: Option<f64>,
}

impl StatusBook {
    pub fn new(started: f64, writes_per_second: f64) -> Self {
        Self {
            written: HashMap::new(),
            started,
            writes_per_second,
            budget: 0.0,
            planned_at: None,
        }
    }

    /// The writes due at `now` (Unix seconds) for this gateway's `devices`,
    /// given when each was `seen` last: at most what the budget allows,
    /// changes of `online` first, then the oldest `lastSeen`. Also returns
    /// how many more were due. Devices no longer in `devices` are forgotten.
    pub fn due(
        &mut self,
        now: f64,
        devices: &[(String, Category)],
        seen: &HashMap<String, (Category, f64)>,
    ) -> (Vec<StatusUpdate>, usize) {
        let elapsed = self.planned_at.map_or(BUDGET_SECONDS, |t| (now - t).max(0.0));
        self.planned_at = Some(now);
        self.budget = (self.budget + elapsed * self.writes_per_second).min(BUDGET_SECONDS * self.writes_per_second);
        let known: HashSet<&str> = devices.iter().map(|(id, _)| id.as_str()).collect();
        self.written.retain(|id, _| known.contains(id.as_str()));
        // Each device's (last seen, online) now, where known.
        let states: Vec<(&String, (Option<f64>, bool))> = devices
            .iter()
            .filter_map(|(id, category)| {
                let state = match seen.get(id) {
                    Some((c, last)) => (Some(*last), online(*c, *last, now)),
                    // Not seen by this pod: offline once it stayed silent
                    // for longer than its category allows (if its status
                    // says anything), unknown before.
                    None if self.written.contains_key(id) && !online(*category, self.started, now) => (None, false),
                    None => return None,
                };
                Some((id, state))
            })
            .collect();
        let resolution = self.resolution(states.iter().filter(|(_, (_, on))| *on).count());

        // (rank, age of what was written, update): rank 0 = online changed.
        let mut due: Vec<(u8, f64, StatusUpdate)> = Vec::new();
        for (id, (last_seen, now_online)) in states {
            let written = self.written.get(id).copied();
            let rank = match written {
                Some((_, was_online)) if was_online != now_online => 0,
                // Its status has no `online`: what it is now.
                None => 1,
                Some((Some(w), _)) if last_seen.is_some_and(|l| l - w >= resolution) => 2,
                Some((None, _)) if last_seen.is_some() => 2,
                _ => continue,
            };
            let age = written.and_then(|(w, _)| w).map_or(f64::INFINITY, |w| now - w);
            due.push((
                rank,
                age,
                StatusUpdate {
                    device: id.clone(),
                    last_seen,
                    online: now_online,
                },
            ));
        }
        due.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then(b.1.total_cmp(&a.1))
                .then(a.2.device.cmp(&b.2.device))
        });
        let take = (self.budget.floor() as usize).min(due.len());
        self.budget -= take as f64;
        let held = due.len() - take;
        (due.into_iter().take(take).map(|(_, _, u)| u).collect(), held)
    }

    /// How much newer than the value written a device's last message must
    /// be for `lastSeen` to be written again, with `online` devices: a
    /// minute, or longer where a minute's refreshes would take more than
    /// four fifths of the budget.
    pub fn resolution(&self, online: usize) -> f64 {
        (online as f64 / (REFRESH_SHARE * self.writes_per_second)).max(MIN_RESOLUTION)
    }

    /// What `device`'s status said when the pod started: `lastSeen` (Unix
    /// seconds) and `online`, if it has one.
    pub fn found(&mut self, device: &str, last_seen: Option<f64>, online: Option<bool>) {
        if let Some(online) = online {
            self.written.insert(device.to_string(), (last_seen, online));
        }
    }

    /// `update` reached the API server.
    pub fn written(&mut self, update: &StatusUpdate) {
        let entry = self.written.entry(update.device.clone()).or_insert((None, false));
        if update.last_seen.is_some() {
            entry.0 = update.last_seen;
        }
        entry.1 = update.online;
    }

    /// A failed write is not spent: it is due again at the next sweep.
    pub fn refund(&mut self, writes: usize) {
        self.budget += writes as f64;
    }
}

/// Writes a gateway's Device statuses through the API server.
pub struct StatusWriter {
    api: Api<DynamicObject>,
    metrics: Arc<Metrics>,
}

/// How one write ended.
pub enum Written {
    Yes,
    /// The Device is gone (404): nothing to write.
    Gone,
    Failed(kube::Error),
}

impl StatusWriter {
    /// Reads what the statuses of `gateway`'s Devices say into `book` (one
    /// list of the namespace's Devices; the gateway's Role may list them).
    pub async fn read_statuses(&self, gateway: &str, book: &mut StatusBook) -> Result<usize, kube::Error> {
        let devices = self.api.list(&kube::api::ListParams::default()).await?;
        let mut found = 0;
        for dev in devices.items.iter().filter(|d| d.data["spec"]["gatewayRef"] == gateway) {
            let status = &dev.data["status"];
            let last_seen = status["lastSeen"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp() as f64);
            if let Some(name) = dev.metadata.name.as_deref() {
                book.found(name, last_seen, status["online"].as_bool());
                found += 1;
            }
        }
        Ok(found)
    }

    pub fn new(client: Client, namespace: &str, metrics: Arc<Metrics>) -> Self {
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("fleetward.io", "v1alpha1", "Device"));
        Self {
            api: Api::namespaced_with(client, namespace, &resource),
            metrics,
        }
    }

    /// Writes `updates`, several at once, and records each one written (or
    /// gone) in `book`. Errors are counted and logged once per call, by
    /// kind, never with a value: they are tried again at the next sweep.
    pub async fn write(&self, book: &mut StatusBook, updates: Vec<StatusUpdate>) {
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..PatchParams::default()
        };
        let results: Vec<(StatusUpdate, Written)> = futures::stream::iter(updates)
            .map(|u| {
                let params = &params;
                async move {
                    let result = match self.api.patch_status(&u.device, params, &Patch::Merge(u.patch())).await {
                        Ok(_) => Written::Yes,
                        Err(kube::Error::Api(e)) if e.code == 404 => Written::Gone,
                        Err(e) => Written::Failed(e),
                    };
                    (u, result)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut failed = 0;
        let mut first_error = None;
        for (update, result) in results {
            let label = match result {
                Written::Yes => "written",
                Written::Gone => "gone",
                Written::Failed(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                    "failed"
                }
            };
            self.metrics.device_status_writes.with_label_values(&[label]).inc();
            if label != "failed" {
                book.written(&update);
            }
        }
        if let Some(e) = first_error {
            book.refund(failed);
            tracing::warn!(failed, error = %e, "writing devices' lastSeen and online; tried again at the next sweep");
        }
    }
}

/// Writes the Devices' `lastSeen` and `online` that are due every sweep,
/// at most `writes_per_second`, for as long as the gateway runs.
pub async fn run(
    writer: StatusWriter,
    gateway: String,
    writes_per_second: f64,
    liveness: Arc<Liveness>,
    registry: Arc<Registry>,
) {
    let mut book = StatusBook::new(unix_now(), writes_per_second);
    // What the statuses say, before anything is written; tried again until
    // read (the API server may be away for a moment).
    let mut backoff = Backoff::standard();
    loop {
        match writer.read_statuses(&gateway, &mut book).await {
            Ok(found) => {
                tracing::info!(devices = found, "read the Devices' statuses");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the Devices' statuses; trying again");
                backoff.wait().await;
            }
        }
    }
    let mut tick = tokio::time::interval(SWEEP);
    // Writes that take longer than a sweep delay the next one.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Not before the registry listed every device: a partial listing
        // would forget what was written.
        if !registry.synced() {
            continue;
        }
        let (updates, held) = book.due(unix_now(), &registry.categories(), &liveness.last_seen());
        writer.metrics.device_status_pending.set(held as i64);
        if !updates.is_empty() {
            writer.write(&mut book, updates).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Category = Category::IndoorThermometer; // reports every 30 s: online for 90 s

    fn devices(ids: &[&str]) -> Vec<(String, Category)> {
        ids.iter().map(|id| (id.to_string(), T)).collect()
    }

    fn seen(entries: &[(&str, f64)]) -> HashMap<String, (Category, f64)> {
        entries.iter().map(|(id, t)| (id.to_string(), (T, *t))).collect()
    }

    /// Plans at `now` and records every write as done.
    fn step(
        book: &mut StatusBook,
        now: f64,
        devs: &[(String, Category)],
        s: &HashMap<String, (Category, f64)>,
    ) -> Vec<StatusUpdate> {
        let (updates, _) = book.due(now, devs, s);
        for u in &updates {
            book.written(u);
        }
        updates
    }

    #[test]
    fn a_device_is_written_when_it_comes_online_then_every_minute_and_when_it_goes_quiet() {
        let devs = devices(&["t-1"]);
        let mut book = StatusBook::new(0.0, 20.0);
        let first = step(&mut book, 10.0, &devs, &seen(&[("t-1", 5.0)]));
        assert_eq!(
            first,
            vec![StatusUpdate {
                device: "t-1".into(),
                last_seen: Some(5.0),
                online: true
            }]
        );
        // Its next report, 30 s on: nothing to write.
        assert!(step(&mut book, 40.0, &devs, &seen(&[("t-1", 35.0)])).is_empty());
        // A minute after the value written: written again, every minute.
        let mut written = vec![];
        for i in 2..11 {
            let t = 5.0 + 30.0 * f64::from(i);
            written.extend(step(&mut book, t + 5.0, &devs, &seen(&[("t-1", t)])));
        }
        let times: Vec<f64> = written.iter().filter_map(|u| u.last_seen).collect();
        assert_eq!(times, [65.0, 125.0, 185.0, 245.0, 305.0]);
        assert!(written.iter().all(|u| u.online));
        // Then silent: still online 90 s after its last report, offline after.
        assert!(step(&mut book, 395.0, &devs, &seen(&[("t-1", 305.0)])).is_empty());
        let gone = step(&mut book, 400.0, &devs, &seen(&[("t-1", 305.0)]));
        assert_eq!(
            gone,
            vec![StatusUpdate {
                device: "t-1".into(),
                last_seen: Some(305.0),
                online: false
            }]
        );
        assert!(
            step(&mut book, 2000.0, &devs, &seen(&[("t-1", 305.0)])).is_empty(),
            "offline is written once"
        );
        // Back: online again at once, with the new time.
        let back = step(&mut book, 2010.0, &devs, &seen(&[("t-1", 2005.0)]));
        assert_eq!((back[0].last_seen, back[0].online), (Some(2005.0), true));
    }

    #[test]
    fn a_device_its_status_calls_online_is_written_offline_once_it_could_have_reported() {
        let devs = devices(&["quiet", "new"]);
        let mut book = StatusBook::new(1000.0, 20.0);
        // As the pod found them: "quiet" online (seen by an earlier pod),
        // "new" with no `online` at all (never connected).
        book.found("quiet", Some(900.0), Some(true));
        book.found("new", None, None);
        assert!(
            step(&mut book, 1080.0, &devs, &HashMap::new()).is_empty(),
            "it may still report"
        );
        let offline = step(&mut book, 1100.0, &devs, &HashMap::new());
        assert_eq!(
            offline,
            vec![StatusUpdate {
                device: "quiet".into(),
                last_seen: None,
                online: false
            }],
            "a device never seen is left as it is"
        );
        assert_eq!(
            offline[0].patch(),
            serde_json::json!({"status": {"online": false}}),
            "lastSeen kept as it was"
        );
        assert!(step(&mut book, 1200.0, &devs, &HashMap::new()).is_empty());
        // It reports: online, and its first lastSeen from this pod.
        let back = step(&mut book, 1210.0, &devs, &seen(&[("quiet", 1205.0)]));
        assert_eq!((back[0].last_seen, back[0].online), (Some(1205.0), true));
        assert_eq!(
            back[0].patch(),
            serde_json::json!({"status": {"online": true, "lastSeen": "1970-01-01T00:20:05Z"}})
        );
    }

    #[test]
    fn the_budget_holds_writes_back_and_changes_of_online_go_first() {
        let ids: Vec<String> = (0..100).map(|i| format!("d-{i:03}")).collect();
        let devs: Vec<(String, Category)> = ids.iter().map(|id| (id.clone(), T)).collect();
        // 2 writes a second: 20 per ten-second sweep.
        let mut book = StatusBook::new(0.0, 2.0);
        let all: HashMap<_, _> = ids.iter().map(|id| (id.clone(), (T, 5.0))).collect();
        let (first, held) = book.due(10.0, &devs, &all);
        assert_eq!((first.len(), held), (20, 80));
        for u in &first {
            book.written(u);
        }
        // Ten seconds on, d-099 (not yet written) and d-000 (written online,
        // now silent past 90 s) are due; the offline change goes first.
        let mut later = all.clone();
        later.insert("d-000".into(), (T, -100.0));
        let (next, held) = book.due(20.0, &devs, &later);
        assert_eq!((next.len(), held), (20, 61));
        assert_eq!((next[0].device.as_str(), next[0].online), ("d-000", false));
        // Unspent budget is kept for ten seconds at most.
        let (burst, _) = book.due(1000.0, &devs, &all);
        assert_eq!(burst.len(), 20);
        // A failed write is refunded.
        book.refund(5);
        let (after, _) = book.due(1000.0, &devs, &all);
        assert_eq!(after.len(), 5);
    }

    #[test]
    fn the_resolution_grows_with_the_fleet_to_keep_refreshes_within_the_budget() {
        let book = StatusBook::new(0.0, 50.0);
        assert_eq!(book.resolution(3), 60.0);
        assert_eq!(book.resolution(2400), 60.0);
        assert_eq!(book.resolution(10_000), 250.0);
        // Devices online × refreshes a second stay within 4/5 of the budget.
        for n in [1, 100, 2400, 5000, 10_000, 50_000] {
            assert!(n as f64 / book.resolution(n) <= 40.0 + 1e-9, "{n}");
        }
    }

    #[test]
    fn a_restarted_pod_rewrites_nothing_that_is_still_true() {
        let devs = devices(&["a", "b"]);
        let mut book = StatusBook::new(1000.0, 20.0);
        book.found("a", Some(990.0), Some(true));
        book.found("b", Some(500.0), Some(false));
        // "a" reports on, within the resolution; "b" stays silent.
        assert!(step(&mut book, 1010.0, &devs, &seen(&[("a", 1005.0)])).is_empty());
        assert!(step(&mut book, 1040.0, &devs, &seen(&[("a", 1035.0)])).is_empty());
        // "b" comes back: written online.
        let back = step(&mut book, 1050.0, &devs, &seen(&[("a", 1035.0), ("b", 1045.0)]));
        assert_eq!(
            back.iter().map(|u| (u.device.as_str(), u.online)).collect::<Vec<_>>(),
            [("b", true)]
        );
    }

    #[test]
    fn devices_that_leave_the_gateway_are_forgotten() {
        let mut book = StatusBook::new(0.0, 20.0);
        step(&mut book, 10.0, &devices(&["a", "b"]), &seen(&[("a", 5.0), ("b", 5.0)]));
        step(&mut book, 20.0, &devices(&["a"]), &seen(&[("a", 5.0)]));
        assert_eq!(book.written.len(), 1);
        // Back in the registry: written anew.
        let back = step(
            &mut book,
            30.0,
            &devices(&["a", "b"]),
            &seen(&[("a", 5.0), ("b", 25.0)]),
        );
        assert_eq!(back.iter().map(|u| u.device.as_str()).collect::<Vec<_>>(), ["b"]);
    }
}
