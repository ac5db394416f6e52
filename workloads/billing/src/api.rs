//! The billing HTTP API (`/api/v1`), for the utility's staff and portal:
//! bills (JSON, an HTML page each, CSV per period), payments, defaulters,
//! accounts, tenancies and runs.
//!
//! Every request is rate-limited per client address (429 with
//! Retry-After), then must carry `Authorization: Bearer <key>` (the key in
//! the Tariff's `<tariff>-billing-api` Secret; compared as SHA-256 digests
//! in constant time). Everything the API reads or writes is its Tariff's:
//! bills, payments, defaulters, accounts, tenancies and runs of another
//! Tariff in the same namespace are not found. Input is checked before anything is written, and
//! refusals are `{"error": "<sentence>"}` with a 4xx status.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use chrono::NaiveDate;
use fleetward_service::bearer::{self, BearerKey};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use uuid::Uuid;

use crate::bill::Period;
use crate::metrics::Metrics;
use crate::service::{RunError, Service, db_error};
use crate::{money, render, store};

const MAX_BODY: usize = 16 * 1024;

#[derive(Clone)]
pub struct Api {
    pub service: Arc<Service>,
    key: BearerKey,
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    metrics: Arc<Metrics>,
}

impl Api {
    pub fn new(service: Arc<Service>, key: &str, per_second: u32, burst: u32) -> Api {
        let quota = Quota::per_second(NonZeroU32::new(per_second.max(1)).expect("positive"))
            .allow_burst(NonZeroU32::new(burst.max(1)).expect("positive"));
        Api {
            metrics: service.metrics.clone(),
            service,
            key: BearerKey::new(key),
            limiter: Arc::new(RateLimiter::keyed(quota)),
        }
    }

    fn pool(&self) -> &sqlx::PgPool {
        &self.service.pool
    }

    /// The Tariff this workload bills: every read and write of a bill is
    /// limited to it.
    fn tariff(&self) -> &str {
        &self.service.tariff
    }

    fn ns(&self) -> &str {
        &self.service.namespace
    }
}

/// A refusal or failure, as JSON.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({"error": self.1}))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn not_found(what: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("{what} not found"))
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::warn!(error = %db_error(&e), "API database error");
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the billing database is unavailable".into(),
        )
    }
}

type Reply = Result<Response, ApiError>;

fn ok(v: impl serde::Serialize) -> Reply {
    Ok(axum::Json(v).into_response())
}

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/api/v1/bills", get(list_bills))
        .route("/api/v1/bills.csv", get(bills_csv))
        .route("/api/v1/bills/{id}", get(get_bill))
        .route("/api/v1/bills/{id}/html", get(bill_html))
        .route("/api/v1/bills/{id}/payments", post(add_payment).get(list_payments))
        .route("/api/v1/defaulters", get(defaulters))
        .route("/api/v1/accounts", get(list_accounts).post(add_account))
        .route("/api/v1/tenancies", get(list_tenancies).post(add_tenancy))
        .route("/api/v1/tenancies/{id}", patch(end_tenancy))
        .route("/api/v1/runs", get(list_runs).post(start_run))
        // Inner to outer: the bearer key, then the rate limit and counting.
        .layer(middleware::from_fn_with_state(api.key.clone(), bearer::require))
        .layer(middleware::from_fn_with_state(api.clone(), guard))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

/// Rate limit (the bearer key is checked inside it); counts every request
/// by route and code.
async fn guard(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let res = if api.limiter.check_key(&peer.ip()).is_err() {
        let mut r = ApiError(StatusCode::TOO_MANY_REQUESTS, "too many requests; retry later".into()).into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, "1".parse().expect("static header"));
        r
    } else {
        next.run(req).await
    };
    api.metrics
        .api
        .with_label_values(&[&route, res.status().as_str()])
        .inc();
    res
}

/// A JSON body of type `T` (unknown fields refused), or a 400 that says why.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        // serde's message names the field and the expected type; it may
        // quote a value the caller sent, which is theirs to see.
        bad(format!("invalid request body: {e}"))
    })
}

fn uuid(s: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s).map_err(|_| bad(format!("{what} must be a UUID")))
}

fn date(s: &str, what: &str) -> Result<NaiveDate, ApiError> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .filter(|_| s.len() == 10)
        .ok_or_else(|| bad(format!("{what} must be a date written YYYY-MM-DD, not {s:?}")))
}

fn name(s: &str, what: &str) -> Result<(), ApiError> {
    let ok = (1..=63).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' || c == '_')
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    ok.then_some(())
        .ok_or_else(|| bad(format!("{what} must be 1-63 characters a-z, 0-9, '-', '.', '_'")))
}

fn period(q: &HashMap<String, String>, required: bool) -> Result<Option<Period>, ApiError> {
    match q.get("period") {
        Some(p) => Period::parse(p).map(Some).map_err(bad),
        None if required => Err(bad("the query parameter period=YYYY-MM is required")),
        None => Ok(None),
    }
}

fn filter(api: &Api, q: &HashMap<String, String>) -> Result<store::BillFilter, ApiError> {
    for k in q.keys() {
        if !["period", "account", "device", "revisions"].contains(&k.as_str()) {
            return Err(bad(format!("unknown query parameter {k:?}")));
        }
    }
    Ok(store::BillFilter {
        tariff: Some(api.service.tariff.clone()),
        period: period(q, false)?,
        account: q.get("account").cloned(),
        device: q.get("device").cloned(),
        all_revisions: q.get("revisions").is_some_and(|v| v == "all"),
    })
}

async fn list_bills(State(api): State<Api>, Query(q): Query<HashMap<String, String>>) -> Reply {
    let f = filter(&api, &q)?;
    ok(store::bills(api.pool(), api.ns(), &f).await?)
}

async fn bills_csv(State(api): State<Api>, Query(q): Query<HashMap<String, String>>) -> Reply {
    let mut f = filter(&api, &q)?;
    f.period = period(&q, true)?;
    let bills = store::bills(api.pool(), api.ns(), &f).await?;
    let text = render::csv(&bills).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let file = format!("attachment; filename=\"bills-{}.csv\"", f.period.expect("required"));
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, file),
        ],
        text,
    )
        .into_response())
}

async fn get_bill(State(api): State<Api>, Path(id): Path<String>) -> Reply {
    let id = uuid(&id, "the bill id")?;
    let bill = store::bill(api.pool(), api.ns(), api.tariff(), id)
        .await?
        .ok_or_else(|| not_found("bill"))?;
    let payments = store::payments(api.pool(), api.ns(), api.tariff(), id).await?;
    ok(json!({"bill": bill, "payments": payments}))
}

async fn bill_html(State(api): State<Api>, Path(id): Path<String>) -> Reply {
    let id = uuid(&id, "the bill id")?;
    let bill = store::bill(api.pool(), api.ns(), api.tariff(), id)
        .await?
        .ok_or_else(|| not_found("bill"))?;
    let payments = store::payments(api.pool(), api.ns(), api.tariff(), id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'",
            ),
        ],
        render::html(&bill, &payments),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPayment {
    amount: String,
    method: String,
    reference: String,
}

const METHODS: [&str; 5] = ["cash", "card", "bank_transfer", "upi", "cheque"];

async fn add_payment(State(api): State<Api>, Path(id): Path<String>, bytes: Bytes) -> Reply {
    let id = uuid(&id, "the bill id")?;
    let p: NewPayment = body(&bytes)?;
    let amount: Decimal = fleetward_tariff::decimal(&p.amount, "amount").map_err(bad)?;
    if amount <= Decimal::ZERO {
        return Err(bad("amount must be more than zero"));
    }
    if !METHODS.contains(&p.method.as_str()) {
        return Err(bad(format!("method must be one of {}", METHODS.join(", "))));
    }
    if p.reference.trim().is_empty() || p.reference.len() > 128 {
        return Err(bad("reference must be 1-128 characters"));
    }
    let bill = store::bill(api.pool(), api.ns(), api.tariff(), id)
        .await?
        .ok_or_else(|| not_found("bill"))?;
    let exp = money::exponent(&bill.currency).unwrap_or(2);
    if amount.scale() > exp {
        return Err(bad(format!(
            "amount has more decimals than {} has ({exp})",
            bill.currency
        )));
    }
    match store::pay(api.pool(), api.ns(), api.tariff(), id, amount, &p.method, &p.reference).await? {
        Ok(payment) => {
            let bill = store::bill(api.pool(), api.ns(), api.tariff(), id).await?;
            Ok((
                StatusCode::CREATED,
                axum::Json(json!({"payment": payment, "bill": bill})),
            )
                .into_response())
        }
        // The same payment sent again (a retry): recorded once.
        Err(existing) if existing.bill_id == id && existing.amount == amount => {
            let bill = store::bill(api.pool(), api.ns(), api.tariff(), id).await?;
            ok(json!({"payment": existing, "bill": bill}))
        }
        Err(_) => Err(ApiError(
            StatusCode::CONFLICT,
            "a different payment with this reference is already recorded".into(),
        )),
    }
}

async fn list_payments(State(api): State<Api>, Path(id): Path<String>) -> Reply {
    let id = uuid(&id, "the bill id")?;
    store::bill(api.pool(), api.ns(), api.tariff(), id)
        .await?
        .ok_or_else(|| not_found("bill"))?;
    ok(store::payments(api.pool(), api.ns(), api.tariff(), id).await?)
}

async fn defaulters(State(api): State<Api>, Query(q): Query<HashMap<String, String>>) -> Reply {
    let today = match q.get("asOf") {
        Some(d) => date(d, "asOf")?,
        None => chrono::Utc::now().date_naive(),
    };
    ok(store::defaulters(api.pool(), api.ns(), api.tariff(), today).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    id: String,
    name: String,
    #[serde(default)]
    email: Option<String>,
}

async fn add_account(State(api): State<Api>, bytes: Bytes) -> Reply {
    let a: NewAccount = body(&bytes)?;
    name(&a.id, "id")?;
    if a.name.trim().is_empty() || a.name.chars().count() > 200 {
        return Err(bad("name must be 1-200 characters"));
    }
    if let Some(e) = &a.email
        && (e.len() > 254 || !e.contains('@') || e.chars().any(char::is_whitespace))
    {
        return Err(bad("email must be an address such as name@example.org"));
    }
    if !store::create_account(
        api.pool(),
        api.ns(),
        api.tariff(),
        &a.id,
        a.name.trim(),
        a.email.as_deref(),
    )
    .await?
    {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("account {:?} already exists", a.id),
        ));
    }
    Ok((StatusCode::CREATED, axum::Json(json!({"id": a.id}))).into_response())
}

async fn list_accounts(State(api): State<Api>) -> Reply {
    ok(store::accounts(api.pool(), api.ns(), api.tariff()).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewTenancy {
    property: String,
    account: String,
    starts_on: String,
    #[serde(default)]
    ends_on: Option<String>,
}

fn tenancy_refused(r: store::TenancyRefused) -> ApiError {
    match r {
        store::TenancyRefused::UnknownAccount => ApiError(StatusCode::UNPROCESSABLE_ENTITY, "unknown account".into()),
        store::TenancyRefused::NotFound => not_found("tenancy"),
        store::TenancyRefused::Overlaps(id) => ApiError(
            StatusCode::CONFLICT,
            format!("the property is held by tenancy {id} over some of these days"),
        ),
    }
}

async fn add_tenancy(State(api): State<Api>, bytes: Bytes) -> Reply {
    let t: NewTenancy = body(&bytes)?;
    name(&t.property, "property")?;
    name(&t.account, "account")?;
    let from = date(&t.starts_on, "startsOn")?;
    let to = t.ends_on.as_deref().map(|d| date(d, "endsOn")).transpose()?;
    if to.is_some_and(|to| to <= from) {
        return Err(bad("endsOn must be after startsOn"));
    }
    match store::add_tenancy(api.pool(), api.ns(), api.tariff(), &t.property, &t.account, from, to).await? {
        Ok(row) => Ok((StatusCode::CREATED, axum::Json(row)).into_response()),
        Err(r) => Err(tenancy_refused(r)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EndTenancy {
    ends_on: String,
}

async fn end_tenancy(State(api): State<Api>, Path(id): Path<String>, bytes: Bytes) -> Reply {
    let id: i64 = id.parse().map_err(|_| bad("the tenancy id must be a number"))?;
    let e: EndTenancy = body(&bytes)?;
    let to = date(&e.ends_on, "endsOn")?;
    let current = store::tenancy_list(api.pool(), api.ns(), api.tariff(), None).await?;
    let t = current
        .iter()
        .find(|t| t.id == id)
        .ok_or_else(|| not_found("tenancy"))?;
    if to <= t.starts_on {
        return Err(bad("endsOn must be after the tenancy's startsOn"));
    }
    match store::end_tenancy(api.pool(), api.ns(), api.tariff(), id, to).await? {
        Ok(row) => ok(row),
        Err(r) => Err(tenancy_refused(r)),
    }
}

async fn list_tenancies(State(api): State<Api>, Query(q): Query<HashMap<String, String>>) -> Reply {
    ok(store::tenancy_list(
        api.pool(),
        api.ns(),
        api.tariff(),
        q.get("property").map(String::as_str),
    )
    .await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRun {
    period: String,
}

/// Starts a run and answers at once (202); `GET /api/v1/runs` shows it.
async fn start_run(State(api): State<Api>, bytes: Bytes) -> Reply {
    let r: NewRun = body(&bytes)?;
    let period = Period::parse(&r.period).map_err(bad)?;
    let service = api.service.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let res = service.run_period(period, "api").await;
        if let Err(e) = &res {
            tracing::warn!(error = %e, %period, "billing run failed");
        }
        let _ = tx.send(res.map(|o| o.row));
    });
    // A run that cannot start (busy, tariff unreadable) says so at once.
    match tokio::time::timeout(std::time::Duration::from_millis(300), rx).await {
        Ok(Ok(Err(RunError::Busy))) => Err(ApiError(StatusCode::CONFLICT, RunError::Busy.to_string())),
        Ok(Ok(Err(e))) => Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
        Ok(Ok(Ok(row))) => Ok((StatusCode::CREATED, axum::Json(row)).into_response()),
        _ => Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({"period": period.to_string(), "status": "running"})),
        )
            .into_response()),
    }
}

async fn list_runs(State(api): State<Api>, Query(q): Query<HashMap<String, String>>) -> Reply {
    ok(store::runs(api.pool(), api.ns(), &api.service.tariff, period(&q, false)?).await?)
}

/// Serves the API on `addr` (plain HTTP inside the cluster; put TLS in
/// front of it — an Ingress — to expose it).
pub async fn serve(addr: SocketAddr, api: Api) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "billing API listening");
    axum::serve(
        listener,
        router(api).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}
