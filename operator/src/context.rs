//! What every reconciler gets: the client, configuration, metrics and an
//! event recorder. The writes they share, with the ownership rules, are in
//! `controllers::applier`; the pure helpers for labels and ownership in
//! `crate::ownership`.

use std::sync::Arc;

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

use crate::controllers::backoff::Backoff;
use crate::controllers::stores::Stores;
use crate::crl;
use crate::metrics::Metrics;
use crate::ownership::MANAGER;

/// The operator's settings are `crate::config`'s; the integration tests
/// take them from here.
pub use crate::config::Config;

pub struct Context {
    pub client: Client,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    /// Who the events say published them.
    reporter: Reporter,
    /// The recorder of events that repeat (see `repeated_event`); it keeps
    /// each for six minutes to count repeats into one event's series.
    series: Recorder,
    /// What the reconcilers observe (see `controllers::stores`).
    pub stores: Stores,
    /// Per-object failure counts (see `controllers::backoff`).
    pub backoff: Backoff,
    /// Revocations, written per gateway in batches.
    pub crl: crl::writer::Batcher,
    /// Device-key entries, written per keys shard in batches.
    pub keys: Arc<crate::controllers::device::keys::Batcher>,
    /// AWS IoT Core clients, for Gateways with `provider: awsIot`.
    pub iot: crate::aws_iot::Clients,
}

impl Context {
    /// Starts the shared stores (waiting for their first listing) and
    /// returns the context every reconciler gets.
    pub async fn start(client: Client, config: Config, metrics: Arc<Metrics>) -> crate::Result<Arc<Self>> {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let stores = Stores::start(client.clone()).await?;
        Ok(Arc::new(Self {
            series: Recorder::new(client.clone(), reporter.clone()),
            reporter,
            crl: crl::writer::Batcher::new(client.clone()),
            keys: crate::controllers::device::keys::Batcher::new(client.clone(), stores.clone()),
            iot: crate::aws_iot::Clients::new(metrics.aws_requests.clone()),
            stores,
            backoff: Backoff::default(),
            client,
            config,
            metrics,
        }))
    }

    /// Publishes an event on `obj`: one that reports news (the plans emit
    /// an event only when what it says changed), so it is not kept for
    /// counting repeats. Kept, 10,000 Devices applied at once held 10,000
    /// events in memory for six minutes, each publish scanning them all.
    /// Event failures are logged, not fatal: a full event queue must not
    /// stop certificates from being issued.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let once = Recorder::new(self.client.clone(), self.reporter.clone());
        publish(&once, obj, warning, reason, action, note).await;
    }

    /// Publishes an event that may repeat (a reconcile failing again): a
    /// repeat within six minutes adds to the first one's series count
    /// instead of making a new event.
    pub async fn repeated_event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        reason: &str,
        action: &str,
        note: String,
    ) {
        publish(&self.series, obj, true, reason, action, note).await;
    }
}

async fn publish<K: Resource<DynamicType = ()>>(
    recorder: &Recorder,
    obj: &K,
    warning: bool,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    match recorder.publish(&ev, &obj.object_ref(&())).await {
        Ok(()) => {}
        // A namespace being deleted, or gone, takes no new events:
        // expected (its objects' last reconciles race its removal).
        Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains("being terminated") => {
            tracing::debug!(reason, "namespace terminating; event dropped");
        }
        Err(kube::Error::Api(e)) if e.code == 404 && e.details.as_ref().is_some_and(|d| d.kind == "namespaces") => {
            tracing::debug!(reason, "namespace gone; event dropped");
        }
        Err(e) => tracing::warn!(error = %e, reason, "could not publish event"),
    }
}

/// A client that counts every request it sends in
/// `fleetward_kube_api_requests_total`, by verb and resource (how many API
/// calls a Device costs, and which, is a figure the benchmark reports).
pub fn counted_client(config: kube::Config, metrics: &Arc<Metrics>) -> anyhow::Result<Client> {
    let counter = metrics.api_requests.clone();
    let count = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        let (verb, resource) = verb_and_resource(&req);
        counter.with_label_values(&[verb, &resource]).inc();
        req
    });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&count)
        .build())
}

/// The Kubernetes verb and resource of a request, from its method, path
/// and query (`/api/v1/namespaces/ns/secrets/name` → update secrets).
fn verb_and_resource<B>(req: &http::Request<B>) -> (&'static str, String) {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    let mut parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // Drop the group and version prefix: api/v1 or apis/<group>/<version>.
    let skip = if parts.first() == Some(&"apis") { 3 } else { 2 };
    parts.drain(..skip.min(parts.len()));
    if parts.first() == Some(&"namespaces") && parts.len() > 2 {
        parts.drain(..2);
    }
    let named = parts.len() > 1;
    let resource = match parts.as_slice() {
        [kind, _, sub, ..] => format!("{kind}/{sub}"),
        [kind, ..] => kind.to_string(),
        [] => String::new(),
    };
    let apply = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/apply-patch"));
    let verb = match *req.method() {
        http::Method::GET if query.contains("watch=true") => "watch",
        http::Method::GET if named => "get",
        http::Method::GET => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH if apply => "apply",
        http::Method::PATCH => "patch",
        http::Method::DELETE if named => "delete",
        http::Method::DELETE => "deletecollection",
        _ => "other",
    };
    (verb, resource)
}

#[cfg(test)]
mod tests {
    use super::verb_and_resource;

    fn request(method: &str, uri: &str, content_type: Option<&str>) -> http::Request<()> {
        let mut b = http::Request::builder().method(method).uri(uri);
        if let Some(t) = content_type {
            b = b.header("content-type", t);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn requests_are_named_by_verb_and_resource() {
        let cases = [
            ("GET", "/api/v1/namespaces/ns/secrets/s1", None, ("get", "secrets")),
            ("GET", "/api/v1/secrets?labelSelector=x", None, ("list", "secrets")),
            (
                "GET",
                "/api/v1/secrets?watch=true&resourceVersion=1",
                None,
                ("watch", "secrets"),
            ),
            ("POST", "/api/v1/namespaces/ns/secrets", None, ("create", "secrets")),
            (
                "PUT",
                "/api/v1/namespaces/ns/configmaps/gw-crl",
                None,
                ("update", "configmaps"),
            ),
            (
                "PATCH",
                "/apis/fleetward.io/v1alpha1/namespaces/ns/devices/d1/status?fieldManager=m&force=true",
                Some("application/apply-patch+yaml"),
                ("apply", "devices/status"),
            ),
            (
                "PATCH",
                "/apis/fleetward.io/v1alpha1/namespaces/ns/devices/d1",
                Some("application/merge-patch+json"),
                ("patch", "devices"),
            ),
            (
                "POST",
                "/apis/events.k8s.io/v1/namespaces/ns/events",
                None,
                ("create", "events"),
            ),
            (
                "DELETE",
                "/api/v1/namespaces/ns/secrets/s1",
                None,
                ("delete", "secrets"),
            ),
            (
                "GET",
                "/apis/fleetward.io/v1alpha1/gateways",
                None,
                ("list", "gateways"),
            ),
            ("GET", "/api/v1/namespaces/ns", None, ("get", "namespaces")),
        ];
        for (method, uri, content_type, (verb, resource)) in cases {
            let got = verb_and_resource(&request(method, uri, content_type));
            assert_eq!(got, (verb, resource.to_string()), "{method} {uri}");
        }
    }
}
