//! How every fleetward workload connects to Kafka: one place that reads the
//! connection's security from the environment the operator sets, so the
//! gateway, the ingestor, the encryptor, the telemetry writer and billing
//! cannot disagree on it.
//!
//! - `KAFKA_SECURITY_PROTOCOL`: `plaintext` (the default), `ssl`,
//!   `sasl_plaintext` or `sasl_ssl`.
//! - `KAFKA_TLS_DIR`: a directory holding `ca.crt` (the brokers' CA) and,
//!   for mutual TLS, `tls.crt` and `tls.key` (this workload's identity). The
//!   operator mounts its Secret `<workload>-kafka` there.
//! - `KAFKA_SASL_MECHANISM`, `KAFKA_SASL_USERNAME`, `KAFKA_SASL_PASSWORD`:
//!   a SASL identity (e.g. SCRAM-SHA-512 on Amazon MSK).
//!
//! Errors name the variable or file, never a credential's value.

use std::path::{Path, PathBuf};

#[cfg(feature = "kafka")]
use rdkafka::ClientConfig;

pub const SECURITY_PROTOCOL_ENV: &str = "KAFKA_SECURITY_PROTOCOL";
pub const TLS_DIR_ENV: &str = "KAFKA_TLS_DIR";
pub const SASL_MECHANISM_ENV: &str = "KAFKA_SASL_MECHANISM";
pub const SASL_USERNAME_ENV: &str = "KAFKA_SASL_USERNAME";
pub const SASL_PASSWORD_ENV: &str = "KAFKA_SASL_PASSWORD";

/// Where the operator mounts a workload's Kafka client Secret.
pub const TLS_DIR: &str = "/var/run/fleetward/kafka";
/// The keys of that Secret.
pub const CA_FILE: &str = "ca.crt";
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

#[derive(thiserror::Error, Debug, PartialEq)]
pub enum KafkaSecurityError {
    #[error("{SECURITY_PROTOCOL_ENV}={0:?}: use plaintext, ssl, sasl_plaintext or sasl_ssl")]
    Protocol(String),
    #[error("{SECURITY_PROTOCOL_ENV}={0} needs {1}")]
    Missing(&'static str, &'static str),
    #[error("{0} is set but {SECURITY_PROTOCOL_ENV}={1} does not use it")]
    Unused(&'static str, &'static str),
    #[error("{TLS_DIR_ENV}: {0} is missing")]
    MissingFile(PathBuf),
    #[error("{TLS_DIR_ENV}: {CERT_FILE} and {KEY_FILE} go together")]
    HalfIdentity,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// A SASL identity; its password never appears in `Debug`.
#[derive(Clone, PartialEq)]
pub struct Sasl {
    pub mechanism: String,
    pub username: String,
    password: String,
}

impl std::fmt::Debug for Sasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The security of a workload's Kafka connection.
#[derive(Clone, Debug, PartialEq)]
pub struct Security {
    pub protocol: Protocol,
    /// The brokers' CA (else the system's trust store).
    pub ca: Option<PathBuf>,
    /// Certificate and key presented to the brokers.
    pub identity: Option<(PathBuf, PathBuf)>,
    pub sasl: Option<Sasl>,
}

impl Security {
    /// Reads the variables above from the process environment.
    pub fn from_env() -> Result<Self, KafkaSecurityError> {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// Reads the variables above through `get` (the environment, or a
    /// test's map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, KafkaSecurityError> {
        let protocol = match get(SECURITY_PROTOCOL_ENV).map(|p| p.to_ascii_lowercase()).as_deref() {
            None | Some("plaintext") => Protocol::Plaintext,
            Some("ssl") => Protocol::Ssl,
            Some("sasl_plaintext") => Protocol::SaslPlaintext,
            Some("sasl_ssl") => Protocol::SaslSsl,
            Some(other) => return Err(KafkaSecurityError::Protocol(other.into())),
        };
        let (mut ca, mut identity) = (None, None);
        match get(TLS_DIR_ENV) {
            Some(_) if !protocol.tls() => return Err(KafkaSecurityError::Unused(TLS_DIR_ENV, protocol.as_str())),
            Some(dir) => {
                let dir = Path::new(&dir);
                let file = |name: &str| Some(dir.join(name)).filter(|p| p.exists());
                ca = file(CA_FILE);
                identity = match (file(CERT_FILE), file(KEY_FILE)) {
                    (Some(cert), Some(key)) => Some((cert, key)),
                    (None, None) => None,
                    _ => return Err(KafkaSecurityError::HalfIdentity),
                };
                if ca.is_none() && identity.is_none() {
                    return Err(KafkaSecurityError::MissingFile(dir.join(CA_FILE)));
                }
            }
            None => {}
        }
        let sasl = match (get(SASL_MECHANISM_ENV), get(SASL_USERNAME_ENV), get(SASL_PASSWORD_ENV)) {
            (None, None, None) => None,
            _ if !protocol.sasl() => return Err(KafkaSecurityError::Unused(SASL_MECHANISM_ENV, protocol.as_str())),
            (Some(mechanism), Some(username), Some(password)) => Some(Sasl {
                mechanism,
                username,
                password,
            }),
            (None, _, _) => return Err(KafkaSecurityError::Missing(protocol.as_str(), SASL_MECHANISM_ENV)),
            (_, None, _) => return Err(KafkaSecurityError::Missing(protocol.as_str(), SASL_USERNAME_ENV)),
            (_, _, None) => return Err(KafkaSecurityError::Missing(protocol.as_str(), SASL_PASSWORD_ENV)),
        };
        if protocol.sasl() && sasl.is_none() {
            return Err(KafkaSecurityError::Missing(protocol.as_str(), SASL_MECHANISM_ENV));
        }
        Ok(Self {
            protocol,
            ca,
            identity,
            sasl,
        })
    }

    /// A client configuration for `brokers` with this security.
    #[cfg(feature = "kafka")]
    pub fn client_config(&self, brokers: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", brokers);
        self.apply(&mut config);
        config
    }

    /// Sets the connection's security on a client configuration.
    #[cfg(feature = "kafka")]
    pub fn apply(&self, config: &mut ClientConfig) {
        config.set("security.protocol", self.protocol.as_str());
        if let Some(ca) = &self.ca {
            config.set("ssl.ca.location", ca.display().to_string());
        }
        if let Some((cert, key)) = &self.identity {
            config.set("ssl.certificate.location", cert.display().to_string());
            config.set("ssl.key.location", key.display().to_string());
        }
        if self.protocol.tls() {
            // The broker's name must match its certificate (librdkafka's
            // default, stated so a future default cannot drop it).
            config.set("ssl.endpoint.identification.algorithm", "https");
        }
        if let Some(s) = &self.sasl {
            config.set("sasl.mechanism", &s.mechanism);
            config.set("sasl.username", &s.username);
            config.set("sasl.password", &s.password);
        }
    }
}

#[cfg(feature = "kafka")]
/// A client configuration for `brokers` with the security of this
/// process's environment: where every fleetward Kafka client starts.
pub fn client_config(brokers: &str) -> Result<ClientConfig, KafkaSecurityError> {
    Ok(Security::from_env()?.client_config(brokers))
}

#[cfg(all(test, feature = "kafka"))]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<Security, KafkaSecurityError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Security::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn nothing_set_is_plaintext() {
        let s = read(&[]).unwrap();
        assert_eq!(s.protocol, Protocol::Plaintext);
        let mut c = ClientConfig::new();
        s.apply(&mut c);
        assert_eq!(c.get("security.protocol"), Some("plaintext"));
        assert_eq!(c.get("ssl.ca.location"), None);
    }

    #[test]
    fn a_tls_dir_gives_the_ca_and_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        for f in [CA_FILE, CERT_FILE, KEY_FILE] {
            std::fs::write(dir.path().join(f), "pem").unwrap();
        }
        let d = dir.path().to_str().unwrap();
        let s = read(&[(SECURITY_PROTOCOL_ENV, "SSL"), (TLS_DIR_ENV, d)]).unwrap();
        let mut c = ClientConfig::new();
        s.apply(&mut c);
        assert_eq!(c.get("security.protocol"), Some("ssl"));
        assert_eq!(
            c.get("ssl.ca.location"),
            Some(dir.path().join(CA_FILE).to_str().unwrap())
        );
        assert_eq!(
            c.get("ssl.certificate.location"),
            Some(dir.path().join(CERT_FILE).to_str().unwrap())
        );
        assert_eq!(
            c.get("ssl.key.location"),
            Some(dir.path().join(KEY_FILE).to_str().unwrap())
        );
        assert_eq!(c.get("ssl.endpoint.identification.algorithm"), Some("https"));

        std::fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
        assert_eq!(
            read(&[(SECURITY_PROTOCOL_ENV, "ssl"), (TLS_DIR_ENV, d)]),
            Err(KafkaSecurityError::HalfIdentity)
        );
        assert_eq!(
            read(&[(TLS_DIR_ENV, d)]),
            Err(KafkaSecurityError::Unused(TLS_DIR_ENV, "plaintext")),
            "certificates with a plaintext connection are a mistake, not ignored"
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            read(&[
                (SECURITY_PROTOCOL_ENV, "ssl"),
                (TLS_DIR_ENV, empty.path().to_str().unwrap())
            ]),
            Err(KafkaSecurityError::MissingFile(_))
        ));
    }

    #[test]
    fn sasl_needs_all_three_and_never_shows_its_password() {
        let full = [
            (SECURITY_PROTOCOL_ENV, "sasl_ssl"),
            (SASL_MECHANISM_ENV, "SCRAM-SHA-512"),
            (SASL_USERNAME_ENV, "billing"),
            (SASL_PASSWORD_ENV, "hunter2-secret"),
        ];
        let s = read(&full).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"), "{s:?}");
        let mut c = ClientConfig::new();
        s.apply(&mut c);
        assert_eq!(c.get("sasl.username"), Some("billing"));
        assert_eq!(c.get("sasl.password"), Some("hunter2-secret"));

        let e = read(&full[..3]).unwrap_err();
        assert_eq!(e, KafkaSecurityError::Missing("sasl_ssl", SASL_PASSWORD_ENV));
        assert!(!e.to_string().contains("hunter2"));
        assert_eq!(
            read(&full[..1]),
            Err(KafkaSecurityError::Missing("sasl_ssl", SASL_MECHANISM_ENV))
        );
        assert_eq!(
            read(&full[1..]),
            Err(KafkaSecurityError::Unused(SASL_MECHANISM_ENV, "plaintext"))
        );
        assert_eq!(
            read(&[(SECURITY_PROTOCOL_ENV, "tls")]),
            Err(KafkaSecurityError::Protocol("tls".into()))
        );
    }
}
