//! What one Tariff's key reaches of another Tariff in the same namespace, and
//! records from before Tariff scoping.

use std::sync::Arc;

use chrono::NaiveDate;
use fleetward_billing::api::{self, Api};
use fleetward_billing::db;
use fleetward_billing::metrics::Metrics;
use fleetward_billing::service::Service;
use fleetward_billing::store::{self, BillFilter};
use fleetward_testkit::unique;
use serde_json::json;
use sqlx::PgPool;

use super::*;

/// A billing API of Tariff `tariff` in `ns`, served on a free port of
/// loopback: its base URL and key.
async fn serve_api(pool: &PgPool, ns: &str, tariff: &str) -> (String, String) {
    let service = Service::new(
        pool.clone(),
        fleetward_testkit::client().await,
        ns.into(),
        tariff.into(),
        None,
        Arc::new(Metrics::default()),
        4,
    );
    let key = format!("{tariff}-key-{}", "k".repeat(40));
    let api = Api::new(service, &key, 1000, 1000);
    let port = fleetward_testkit::free_port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    tokio::spawn(api::serve(addr, api));
    fleetward_testkit::wait_port(port, 10);
    (format!("http://127.0.0.1:{port}/api/v1"), key)
}

/// One caller of a billing API.
struct Caller {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Caller {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<serde_json::Value>) -> (u16, String) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }

    async fn get(&self, path: &str) -> (u16, String) {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> (u16, String) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }
}

/// Two Tariffs in one namespace, each with its billing API and key: the
/// holder of one Tariff's key tries every endpoint of its API on the other
/// Tariff's bills, payments, debtors, accounts, tenancies, payment
/// references and runs. Each is refused or shows nothing of the other's,
/// and the other Tariff's records are unchanged afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tariffs_key_reaches_nothing_of_another_tariff_through_any_endpoint() {
    let pool = pool().await;
    let ns = unique("two-tariffs");
    let metrics = Metrics::default();
    db::insert_readings(
        &pool,
        &[
            reading(&ns, "ma", at(1, 0), "0"),
            reading(&ns, "ma", at(30, 0), "100"),
            reading(&ns, "mb", at(1, 0), "0"),
            reading(&ns, "mb", at(30, 0), "50"),
        ],
    )
    .await
    .unwrap();
    bill_nov_for(&pool, &ns, "residential", &[meter("ma", "pa", "alice")], &metrics).await;
    bill_nov_for(&pool, &ns, "commercial", &[meter("mb", "pb", "bob")], &metrics).await;
    let all = store::bills(&pool, &ns, &BillFilter::default()).await.unwrap();
    let of = |tariff: &str| {
        all.iter()
            .find(|b| b.tariff == tariff)
            .expect("a bill of each Tariff")
            .id
    };
    let (alice_bill, bob_bill) = (of("residential"), of("commercial"));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let (base, key) = serve_api(&pool, &ns, "residential").await;
    let owner = Caller {
        http: http.clone(),
        base,
        key,
    };
    let (base, key) = serve_api(&pool, &ns, "commercial").await;
    let other = Caller { http, base, key };

    // The residential Tariff's own records: an account, a tenancy, a payment.
    let (code, _) = owner
        .post("/accounts", json!({"id": "alice", "name": "Alice Owner"}))
        .await;
    assert_eq!(code, 201);
    let (code, t) = owner
        .post(
            "/tenancies",
            json!({"property": "pa", "account": "alice", "startsOn": "2026-01-01"}),
        )
        .await;
    assert_eq!(code, 201, "{t}");
    let tenancy: serde_json::Value = serde_json::from_str(&t).unwrap();
    let tenancy = tenancy["id"].as_i64().unwrap();
    let (code, _) = owner
        .post(
            &format!("/bills/{alice_bill}/payments"),
            json!({"amount": "1.00", "method": "card", "reference": "ref-1"}),
        )
        .await;
    assert_eq!(code, 201);
    let before = [
        owner.get("/accounts").await,
        owner.get("/tenancies").await,
        owner.get(&format!("/bills/{alice_bill}")).await,
    ];

    // The residential key on the commercial API: not its key.
    let wrong_key = Caller {
        http: other.http.clone(),
        base: other.base.clone(),
        key: owner.key.clone(),
    };
    assert_eq!(wrong_key.get("/bills").await.0, 401);

    // The commercial key, on everything of the residential Tariff.
    let (code, list) = other.get("/bills").await;
    assert_eq!(code, 200);
    assert!(
        !list.contains(&alice_bill.to_string()) && list.contains(&bob_bill.to_string()),
        "{list}"
    );
    let (code, csv) = other.get("/bills.csv?period=2026-11").await;
    assert_eq!(code, 200);
    assert!(!csv.contains("alice") && csv.contains("bob"), "{csv}");
    for path in ["", "/html", "/payments"] {
        let (code, body) = other.get(&format!("/bills/{alice_bill}{path}")).await;
        assert_eq!(code, 404, "GET /bills/<other Tariff's bill>{path}: {body}");
    }
    let (code, _) = other
        .post(
            &format!("/bills/{alice_bill}/payments"),
            json!({"amount": "99.00", "method": "cash", "reference": "ref-forged"}),
        )
        .await;
    assert_eq!(code, 404, "a payment towards another Tariff's bill");
    let (code, debtors) = other.get("/defaulters?asOf=2027-01-05").await;
    assert_eq!(code, 200);
    assert!(!debtors.contains("alice") && debtors.contains("bob"), "{debtors}");
    let (code, accounts) = other.get("/accounts").await;
    assert_eq!((code, accounts.as_str()), (200, "[]"));
    let (code, tenancies) = other.get("/tenancies").await;
    assert_eq!((code, tenancies.as_str()), (200, "[]"));
    let (code, _) = other
        .post(
            "/tenancies",
            json!({"property": "pa", "account": "alice", "startsOn": "2026-12-01"}),
        )
        .await;
    assert_eq!(code, 422, "a tenancy for another Tariff's account");
    let (code, _) = other
        .send(
            reqwest::Method::PATCH,
            &format!("/tenancies/{tenancy}"),
            Some(json!({"endsOn": "2026-02-01"})),
        )
        .await;
    assert_eq!(code, 404, "ending another Tariff's tenancy");
    // Its own account of the same id and a payment under the same
    // reference are its own: no conflict, nothing of the other's shown.
    let (code, _) = other
        .post("/accounts", json!({"id": "alice", "name": "Someone Else"}))
        .await;
    assert_eq!(code, 201);
    let (code, paid) = other
        .post(
            &format!("/bills/{bob_bill}/payments"),
            json!({"amount": "2.00", "method": "cash", "reference": "ref-1"}),
        )
        .await;
    assert_eq!(code, 201, "another Tariff's reference is not seen: {paid}");
    let (code, runs) = other.get("/runs").await;
    assert_eq!(code, 200);
    assert!(!runs.contains("residential") && runs.contains("commercial"), "{runs}");

    // The residential Tariff's records are as they were.
    let after = [
        owner.get("/accounts").await,
        owner.get("/tenancies").await,
        owner.get(&format!("/bills/{alice_bill}")).await,
    ];
    assert_eq!(before, after);
    assert!(after[0].1.contains("Alice Owner") && !after[0].1.contains("Someone Else"));
}

/// Accounts and tenancies written before they belonged to a Tariff (no
/// `tariff`): each Tariff's billing service adopts its own copy once, so a
/// namespace keeps its customers across the upgrade.
#[tokio::test]
async fn records_from_before_tariff_scoping_are_adopted_once_by_each_tariff() {
    let pool = pool().await;
    let ns = unique("adopt");
    sqlx::query("INSERT INTO fleetward_billing.accounts (namespace, id, name) VALUES ($1, 'carol', 'Carol')")
        .bind(&ns)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO fleetward_billing.tenancies (namespace, property, account_id, starts_on) \
         VALUES ($1, 'pc', 'carol', '2026-01-01')",
    )
    .bind(&ns)
    .execute(&pool)
    .await
    .unwrap();
    for tariff in ["residential", "commercial"] {
        assert_eq!(
            store::adopt_namespace_records(&pool, &ns, tariff).await.unwrap(),
            (1, 1)
        );
        assert_eq!(
            store::adopt_namespace_records(&pool, &ns, tariff).await.unwrap(),
            (0, 0)
        );
        let accounts = store::accounts(&pool, &ns, tariff).await.unwrap();
        assert_eq!(accounts.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["carol"]);
        let t = store::tenancy_list(&pool, &ns, tariff, None).await.unwrap();
        assert_eq!((t.len(), t[0].property.as_str()), (1, "pc"));
    }
    // Each has its own: one Tariff ending its tenancy leaves the other's.
    let t = store::tenancy_list(&pool, &ns, "residential", None).await.unwrap()[0].id;
    let day = NaiveDate::from_ymd_opt(2026, 6, 1).unwrap();
    store::end_tenancy(&pool, &ns, "residential", t, day)
        .await
        .unwrap()
        .unwrap();
    let other = store::tenancy_list(&pool, &ns, "commercial", None).await.unwrap();
    assert_eq!(other[0].ends_on, None);
}
