//! Unit tests of `pki`: real keys and certificates, checked with x509-parser.

use super::*;

fn leaf(ca: &CaBundle, cn: &str) -> Issued {
    ca.issue(&LeafRequest {
        common_name: cn,
        dns_names: &[],
        ip_addresses: &[],
        usage: Usage::Client,
        validity_days: 90,
    })
    .unwrap()
}

#[test]
fn leaf_is_signed_by_its_ca_only() {
    let ca = generate_ca("test CA", 10).unwrap();
    let other = generate_ca("test CA", 10).unwrap();
    let issued = leaf(&ca, "sensor-1");
    assert!(is_issued_by(&issued.cert_pem, &ca.cert_pem));
    // Same subject name, different key: must not be accepted.
    assert!(!is_issued_by(&issued.cert_pem, &other.cert_pem));
    assert_eq!(issued.info.common_name, "sensor-1");
    assert_eq!(issued.info.serial.len(), 32);
    let days = issued.info.not_after.duration_since(issued.info.not_before).as_hours() / 24;
    assert_eq!(days, 90, "validity {days} days");
}

#[test]
fn a_crl_reads_back_its_entries_with_the_serials_inspect_prints() {
    let ca = generate_ca("test CA", 30).unwrap();
    let certs: Vec<CertInfo> = (0..3).map(|i| leaf(&ca, &format!("d{i}")).info).collect();
    let revoked: Vec<Revocation> = certs
        .iter()
        .zip(["superseded", "keyCompromise", "cessationOfOperation"])
        .map(|(c, reason)| Revocation {
            serial: c.serial.clone(),
            revoked_at: "2026-11-23T10:00:00Z".into(),
            subject: c.common_name.clone(),
            reason: reason.into(),
        })
        .collect();
    let pem = ca.sign_crl(&revoked, 7, Timestamp::now(), 30).unwrap();
    let back = crl_entries(&pem).unwrap();
    assert_eq!(back.len(), 3);
    for (want, got) in revoked.iter().zip(&back) {
        assert_eq!(got.serial, want.serial);
        assert_eq!(got.reason, want.reason);
        assert_eq!(got.revoked_at, want.revoked_at);
    }
    // About 75 bytes of PEM per entry: what bounds a ConfigMap CRL.
    let big: Vec<Revocation> = (0..1000u32)
        .map(|i| Revocation {
            serial: format!("{:032X}", 0x4000_0000_0000_0000_0000_0000_0000_0000u128 + i as u128),
            ..revoked[2].clone()
        })
        .collect();
    let per_entry = ca.sign_crl(&big, 8, Timestamp::now(), 30).unwrap().len() / 1000;
    assert!(per_entry < 90, "{per_entry} bytes per CRL entry");
}

#[test]
fn serials_are_unique_and_positive() {
    let ca = generate_ca("test CA", 10).unwrap();
    let a = leaf(&ca, "a").info.serial;
    let b = leaf(&ca, "a").info.serial;
    assert_ne!(a, b);
    assert!(matches!(&a[..1], "4" | "5" | "6" | "7"), "{a}");
}

#[test]
fn validate_detects_a_foreign_key() {
    let ca = generate_ca("test CA", 10).unwrap();
    let other = generate_ca("test CA", 10).unwrap();
    assert!(ca.validate().is_ok());
    let mixed = CaBundle {
        cert_pem: ca.cert_pem.clone(),
        key_pem: other.key_pem.clone(),
    };
    assert!(mixed.validate().is_err());
}

#[test]
fn debug_output_hides_keys() {
    let ca = generate_ca("test CA", 10).unwrap();
    let issued = leaf(&ca, "x");
    assert!(!format!("{ca:?}").contains("PRIVATE"));
    assert!(!format!("{issued:?}").contains("PRIVATE"));
}

#[test]
fn reissue_reasons() {
    let ca = generate_ca("test CA", 10).unwrap();
    let other = generate_ca("other CA", 10).unwrap();
    let issued = leaf(&ca, "d1");
    let now = Timestamp::now();
    let r = |pem: Option<&str>, ca_pem: &str, cn: &str, days: i64, at: Timestamp| {
        reissue_reason(pem, ca_pem, cn, &[], days, at)
    };
    assert_eq!(r(None, &ca.cert_pem, "d1", 30, now), Some(ReissueReason::Missing));
    assert_eq!(
        r(Some("junk"), &ca.cert_pem, "d1", 30, now),
        Some(ReissueReason::Unreadable)
    );
    assert_eq!(
        r(Some(&issued.cert_pem), &other.cert_pem, "d1", 30, now),
        Some(ReissueReason::OtherCa)
    );
    assert_eq!(
        r(Some(&issued.cert_pem), &ca.cert_pem, "d2", 30, now),
        Some(ReissueReason::SubjectChanged)
    );
    assert_eq!(r(Some(&issued.cert_pem), &ca.cert_pem, "d1", 30, now), None);
    let later = now + SignedDuration::from_hours(24 * 61);
    assert_eq!(
        r(Some(&issued.cert_pem), &ca.cert_pem, "d1", 30, later),
        Some(ReissueReason::RenewalDue)
    );
}

#[test]
fn random_secret_is_256_bits_of_hex() {
    let a = random_secret_hex();
    assert_eq!(a.len(), 64);
    assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, random_secret_hex());
}

#[test]
fn a_crl_is_backdated_like_certificates() {
    let ca = generate_ca("test CA", 30).unwrap();
    let now = Timestamp::now();
    let pem = ca.sign_crl(&[], 1, now, 30).unwrap();
    let der = pem_to_der(&pem).unwrap();
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
    let this_update = crl.last_update().timestamp();
    assert_eq!(
        now.as_second() - this_update,
        BACKDATE.as_secs(),
        "thisUpdate before now"
    );
}
