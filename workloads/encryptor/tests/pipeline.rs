//! The station pipeline against real Kafka and PostgreSQL: HTTP source →
//! ingestor → Kafka → encryptor (the real binary) → PostgreSQL → export
//! CLI, plus Python's `cryptography.fernet` as an independent decrypter.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use clap::Parser;
use common::*;
use fleetward_keyring::Keyring;
use serde_json::{Value, json};
use sqlx::Row;

fn station(number: u64, last_update: i64, address: &str) -> Value {
    json!({"number": number, "contract_name": "testville", "name": format!("STATION {number}"), "address": address,
        "position": {"lat": 53.3, "lng": -6.2}, "banking": true, "bonus": false, "bike_stands": 20,
        "available_bike_stands": 5, "available_bikes": 15, "status": "OPEN", "last_update": last_update})
}

fn record(v: &Value) -> (String, Vec<u8>) {
    (v["number"].to_string(), v.to_string().into_bytes())
}

fn stdout(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "fleetward-stations failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// Decrypts `tokens` with Python's `cryptography.fernet` given `key`.
fn python_decrypt(key: &str, tokens: &[String]) -> Vec<String> {
    let python = env("FLEETWARD_PYTHON");
    let script = "import json, sys\nfrom cryptography.fernet import Fernet\nd = json.load(sys.stdin)\n\
                  f = Fernet(d['key'].encode())\nprint(json.dumps([f.decrypt(t.encode()).decode() for t in d['tokens']]))";
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("FLEETWARD_PYTHON={python} does not run ({e}); run `./deploy.sh dev-up`"));
    // The key goes through stdin, not argv (visible to other processes).
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json!({"key": key, "tokens": tokens}).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python cryptography.fernet failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn dublin_stations_go_from_http_through_kafka_to_postgres_encrypted() {
    const API_KEY: &str = "e2e-api-key-5f1c";
    let base = jcdecaux_server(API_KEY).await;
    let topic = unique("stations-e2e");
    let table = unique("st_e2e");
    let dir = tempfile::tempdir().unwrap();
    let keyring_file = dir.path().join("keyring.json");
    let ring = Keyring::generate();
    write_keyring(&keyring_file, &ring);
    let enc = start_encryptor(&EncryptorConfig::new(&topic, &table, &keyring_file), "e2e-encryptor");

    // The ingestor, through its library: one poll of the loopback API.
    let args = fleetward_ingestor::Args::try_parse_from([
        "fleetward-ingestor",
        "--source=jcdecaux",
        &format!("--jcdecaux-base-url={base}"),
        "--jcdecaux-contract=Dublin",
        &format!("--jcdecaux-api-key={API_KEY}"),
        &format!("--kafka-brokers={}", env("KAFKA_BROKERS")),
        &format!("--kafka-topic={topic}"),
        "--max-polls=1",
    ])
    .unwrap();
    let metrics = Arc::new(fleetward_ingestor::metrics::Metrics::default());
    fleetward_ingestor::run(args, metrics.clone(), std::future::pending())
        .await
        .unwrap();
    assert_eq!(metrics.produced.get(), 114, "every Dublin station reached Kafka");

    let pool = pg().await;
    wait_until("114 rows in PostgreSQL", 60, || async {
        count(&pool, &table).await == 114
    })
    .await;
    assert_eq!(enc.metric("fleetward_encryptor_db_inserts_total"), 114.0);

    // Sensitive fields are Fernet tokens; the rest is stored readable.
    let originals: HashMap<String, Value> = dublin().into_iter().map(|s| (s["number"].to_string(), s)).collect();
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT number, key_id, encrypted_fields, contract_name, name, address, position, available_bikes, status, \
         t::text AS whole FROM \"{table}\" t"
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 114);
    let mut address_tokens = Vec::new();
    for r in &rows {
        let number: String = r.get("number");
        let src = &originals[&number];
        let address: String = r.get("address");
        let contract: String = r.get("contract_name");
        assert!(address.starts_with("gAAAAA") && address != src["address"], "{address}");
        assert!(contract.starts_with("gAAAAA"), "{contract}");
        assert_eq!(
            ring.decrypt(ring.primary_id(), &address).unwrap(),
            src["address"].as_str().unwrap().as_bytes()
        );
        assert_eq!(r.get::<String, _>("key_id"), ring.primary_id());
        assert_eq!(
            r.get::<Vec<String>, _>("encrypted_fields"),
            ["address", "contract_name"]
        );
        assert_eq!(r.get::<String, _>("name"), src["name"]);
        assert_eq!(r.get::<String, _>("status"), src["status"]);
        assert_eq!(r.get::<i32, _>("available_bikes") as i64, src["available_bikes"]);
        let pos: Value = serde_json::from_str(&r.get::<String, _>("position")).unwrap();
        assert_eq!(pos, src["position"]);
        // The contract appears nowhere in the row, not even as the key.
        assert!(!r.get::<String, _>("whole").contains("dublin"));
        address_tokens.push((src["address"].as_str().unwrap().to_string(), address));
    }

    // Python's cryptography.fernet decrypts what we stored, given the key.
    let sample: Vec<_> = address_tokens.iter().take(5).collect();
    let decrypted = python_decrypt(
        ring.fernet_key(ring.primary_id()).unwrap(),
        &sample.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>(),
    );
    assert_eq!(decrypted, sample.iter().map(|(a, _)| a.clone()).collect::<Vec<_>>());

    // The export CLI gives back the source's values, field for field.
    let kf = keyring_file.to_str().unwrap();
    let out = stdout(&stations_cli(&export_args(&table, "Dublin", kf, &[])));
    let exported: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(exported.len(), 114);
    for mut e in exported {
        assert_eq!(e["key_id"], ring.primary_id());
        e.as_object_mut().unwrap().remove("key_id");
        assert_eq!(e, originals[&e["number"].to_string()]);
    }

    // CSV of one station in an ISO-8601 range around its update.
    let s42 = &originals["42"];
    assert_eq!(s42["last_update"], 1770418469000_i64);
    let csv = stdout(&stations_cli(&export_args(
        &table,
        "dublin",
        kf,
        &[
            "--station",
            "42",
            "--from",
            "2026-02-06T22:54:29Z",
            "--to",
            "2026-02-06T23:00:00+00:00",
            "--format",
            "csv",
        ],
    )));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[0].starts_with("number,contract_name,name,address,lat,lng,"));
    assert!(
        lines[1].starts_with("42,dublin,SMITHFIELD NORTH,Smithfield North,53.349562,-6.278198,false,false,30,15,15,OPEN,2026-02-06T22:54:29.000Z,"),
        "{}",
        lines[1]
    );
    // `--to` is exclusive: a range ending at the update excludes it.
    let csv = stdout(&stations_cli(&export_args(
        &table,
        "Dublin",
        kf,
        &[
            "--station",
            "42",
            "--from",
            "2026-02-06",
            "--to",
            "2026-02-06T22:54:29Z",
            "--format",
            "csv",
        ],
    )));
    assert_eq!(csv.lines().count(), 1, "{csv}");
    // Another contract: nothing.
    let out = stdout(&stations_cli(&export_args(&table, "Paris", kf, &[])));
    assert_eq!(serde_json::from_str::<Vec<Value>>(&out).unwrap().len(), 0);

    // A second poll of unchanged stations adds no rows (natural key).
    produce(&topic, dublin().iter().map(record)).await;
    wait_until("the replayed stations counted as duplicates", 60, || async {
        enc.metric("fleetward_encryptor_records_total{result=\"duplicate\"}") == 114.0
    })
    .await;
    assert_eq!(count(&pool, &table).await, 114);
    // Neither plaintext of a sensitive field nor the key reaches the log.
    let log = enc.log_text();
    assert!(log.contains("encryptor starting"), "{log}");
    assert!(!log.contains("Smithfield North"));
    assert!(!log.contains(ring.fernet_key(ring.primary_id()).unwrap()));
    drop(enc);
    drop_table(&pool, &table).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_rotation_old_and_new_rows_decrypt() {
    let topic = unique("stations-rot");
    let table = unique("st_rot");
    let dir = tempfile::tempdir().unwrap();
    let keyring_file = dir.path().join("keyring.json");
    let mut ring = Keyring::generate();
    let old_ring = ring.clone();
    let first = ring.primary_id().to_string();
    write_keyring(&keyring_file, &ring);
    let enc = start_encryptor(
        &EncryptorConfig::new(&topic, &table, &keyring_file),
        "rotation-encryptor",
    );
    let pool = pg().await;

    let t0 = 1_770_000_000_000_i64;
    let before: Vec<Value> = (1..=20).map(|n| station(n, t0, &format!("{n} Old Street"))).collect();
    produce(&topic, before.iter().map(record)).await;
    wait_until("20 rows", 60, || async { count(&pool, &table).await == 20 }).await;

    // Rotate the way the operator does: a new primary, old key kept.
    let second = ring.rotate();
    write_keyring(&keyring_file, &ring);
    let series = format!("fleetward_encryptor_keyring_primary{{key_id=\"{second}\"}}");
    wait_until("the encryptor to load the rotated keyring", 30, || async {
        enc.metric(&series) == 1.0
    })
    .await;
    let after: Vec<Value> = (21..=40).map(|n| station(n, t0, &format!("{n} New Street"))).collect();
    produce(&topic, after.iter().map(record)).await;
    wait_until("40 rows", 60, || async { count(&pool, &table).await == 40 }).await;

    let ids: Vec<(String, String)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT number, key_id FROM \"{table}\"")))
            .fetch_all(&pool)
            .await
            .unwrap();
    for (number, key_id) in &ids {
        let n: u64 = number.parse().unwrap();
        assert_eq!(key_id, if n <= 20 { &first } else { &second }, "station {n}");
    }

    // Both generations decrypt with the rotated keyring.
    let kf = keyring_file.to_str().unwrap();
    let out = stdout(&stations_cli(&export_args(&table, "TestVille", kf, &[])));
    let exported: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(exported.len(), 40);
    for e in &exported {
        let n = e["number"].as_u64().unwrap();
        let street = if n <= 20 { "Old" } else { "New" };
        assert_eq!(e["address"], format!("{n} {street} Street"));
        assert_eq!(e["contract_name"], "testville");
    }

    // The keyring from before the rotation cannot read the new rows, and
    // says so before printing anything.
    let old_file = dir.path().join("old-keyring.json");
    write_keyring(&old_file, &old_ring);
    let o = stations_cli(&export_args(&table, "testville", old_file.to_str().unwrap(), &[]));
    assert!(!o.status.success());
    assert!(
        o.stdout.is_empty(),
        "nothing printed: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&second) && err.contains("does not contain"), "{err}");
    // ... but reads the old rows, restricted to them by time.
    let o = stations_cli(&export_args(
        &table,
        "testville",
        old_file.to_str().unwrap(),
        &["--station", "7"],
    ));
    let one: Vec<Value> = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["address"], "7 Old Street");
    drop(enc);
    drop_table(&pool, &table).await;
}

mod cli {
    use super::*;
    use fleetward_encryptor::db::{self, TableName};
    use fleetward_encryptor::record::CheckedStation;
    use k8s_openapi::api::core::v1::{Namespace, Secret};
    use kube::api::{DeleteParams, ObjectMeta, PostParams};

    /// Stores rows the way the encryptor does (its own code path).
    async fn seed(table: &str, ring: &Keyring, stations: &[Value]) {
        let pool = pg().await;
        let table: TableName = table.parse().unwrap();
        db::prepare(&pool, db::RecordKind::Stations, &table).await.unwrap();
        let sensitive = "address,contract_name,position".parse().unwrap();
        let rows: Vec<_> = stations
            .iter()
            .map(|s| {
                CheckedStation::parse(Some(s.to_string().as_bytes()))
                    .unwrap()
                    .seal(ring, &sensitive)
            })
            .collect();
        // The weeks the rows fall in (the pipeline makes them on demand).
        let times: Vec<i64> = rows.iter().map(|r| r.last_update.timestamp()).collect();
        db::partitioned(&table).ensure(&pool, &times).await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        let fields = ["address", "contract_name", "position"].map(String::from);
        db::insert_batch(&mut tx, &table, ring.primary_id(), &fields, &rows)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    fn failure(args: &[&str]) -> String {
        let o = stations_cli(args);
        assert!(!o.status.success(), "expected failure for {args:?}");
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bad_input_is_refused_with_a_clear_error() {
        let table = unique("st_cli");
        let ring = Keyring::generate();
        seed(&table, &ring, &[station(1, 1_770_000_000_000, "1 Quay")]).await;
        let dir = tempfile::tempdir().unwrap();
        let kf = dir.path().join("k.json");
        write_keyring(&kf, &ring);
        let kf = kf.to_str().unwrap();
        let with = |extra: &[&'static str]| export_args(&table, "testville", kf, extra);

        let err = failure(&with(&[
            "--from",
            "2026-02-01T00:00:00Z",
            "--to",
            "2026-01-01T00:00:00Z",
        ]));
        assert!(err.contains("empty time range"), "{err}");
        let err = failure(&with(&["--from", "2026-02-01T00:00:00"]));
        assert!(err.contains("no UTC offset"), "{err}");
        let err = failure(&with(&["--to", "last tuesday"]));
        assert!(err.contains("not an ISO-8601 time"), "{err}");
        let err = failure(&with(&["--format", "xml"]));
        assert!(err.contains("xml"), "{err}");
        let err = failure(&export_args("x; DROP TABLE y", "a", kf, &[]));
        assert!(err.contains("invalid table name"), "{err}");
        let err = failure(&["export", "--table", &table, "--contract", "testville"]);
        assert!(
            err.contains("--keyring-file") || err.contains("--keyring-secret"),
            "{err}"
        );

        // Another feed's keyring cannot even find the contract's rows: the
        // contract is matched by a keyed HMAC.
        let other = dir.path().join("other.json");
        write_keyring(&other, &Keyring::generate());
        let o = stations_cli(&export_args(&table, "testville", other.to_str().unwrap(), &[]));
        assert_eq!(serde_json::from_str::<Vec<Value>>(&stdout(&o)).unwrap().len(), 0);

        // A keyring with the right index key but without the rows' key:
        // refused up front, naming the key id.
        let mut wrong = ring.clone();
        wrong.rotate();
        let mut doc: Value = serde_json::from_str(&wrong.to_json()).unwrap();
        doc["keys"].as_array_mut().unwrap().remove(0);
        let wrong_file = dir.path().join("wrong.json");
        std::fs::write(&wrong_file, doc.to_string()).unwrap();
        let err = failure(&export_args(&table, "testville", wrong_file.to_str().unwrap(), &[]));
        assert!(
            err.contains(ring.primary_id()) && err.contains("does not contain"),
            "{err}"
        );

        // A tampered token: refused, and its plaintext is not printed.
        let pool = pg().await;
        let forged = Keyring::generate().encrypt(b"Forged Road");
        sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE \"{table}\" SET address = $1")))
            .bind(&forged)
            .execute(&pool)
            .await
            .unwrap();
        let o = stations_cli(&with(&[]));
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("field address") && err.contains("does not decrypt"),
            "{err}"
        );
        assert!(!String::from_utf8_lossy(&o.stdout).contains("Forged Road"));
        drop_table(&pool, &table).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn keyring_is_read_from_its_kubernetes_secret() {
        use kube::config::{KubeConfigOptions, Kubeconfig};
        let table = unique("st_cli_k8s");
        let ring = Keyring::generate();
        seed(&table, &ring, &[station(9, 1_770_000_000_000, "9 Dock Road")]).await;

        let kc = Kubeconfig::read_from(env("KUBECONFIG")).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        let ns = format!("fw-stations-cli-{}", rand_hex());
        let nss: kube::Api<Namespace> = kube::Api::all(client.clone());
        nss.create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    labels: Some([("fleetward.io/test".to_string(), "true".to_string())].into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create namespace (is the local kube-apiserver up? `./deploy.sh dev-up`)");
        let secrets: kube::Api<Secret> = kube::Api::namespaced(client, &ns);
        secrets
            .create(
                &PostParams::default(),
                &Secret {
                    metadata: ObjectMeta {
                        name: Some(fleetward_keyring::secret_name("dublin")),
                        ..Default::default()
                    },
                    string_data: Some([(fleetward_keyring::SECRET_DATA_KEY.to_string(), ring.to_json())].into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();

        let reference = format!("{ns}/dublin-keyring");
        let out = stdout(&stations_cli(&[
            "export",
            "--table",
            &table,
            "--contract",
            "testville",
            "--format",
            "csv",
            "--keyring-secret",
            &reference,
        ]));
        assert!(
            out.lines()
                .nth(1)
                .unwrap()
                .starts_with("9,testville,STATION 9,9 Dock Road,53.3,-6.2,"),
            "{out}"
        );

        let err = failure(&[
            "export",
            "--table",
            &table,
            "--contract",
            "testville",
            "--keyring-secret",
            &format!("{ns}/no-such-keyring"),
        ]);
        assert!(
            err.contains("cannot read Secret") && err.contains("no-such-keyring"),
            "{err}"
        );
        let err = failure(&[
            "export",
            "--table",
            &table,
            "--contract",
            "testville",
            "--keyring-secret",
            "just-a-name",
        ]);
        assert!(err.contains("NAMESPACE/NAME"), "{err}");
        let _ = nss.delete(&ns, &DeleteParams::default()).await;
        drop_table(&pg().await, &table).await;
    }
}
