//! The TLS side of the protocol: a client trusts only its gateway's CA and
//! proves its identity with its certificate (the broker maps the
//! certificate's CN to the MQTT username).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(thiserror::Error, Debug)]
pub enum TlsError {
    #[error("reading {what}: {source}")]
    Pem {
        what: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A rustls client configuration (ring provider) trusting only the CA in
/// `ca_pem` and presenting the certificate and key in `cert_pem`/`key_pem`.
pub fn client_config(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let pem_err = |what: &str| {
        let what = what.to_string();
        move |source| TlsError::Pem { what, source }
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.map_err(pem_err("CA certificate"))?)?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(pem_err("certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(pem_err("private key"))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// The same from PEM files.
pub fn client_config_from_files(
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| TlsError::Pem {
            what: p.display().to_string(),
            source: rustls::pki_types::pem::Error::Io(e),
        })
    };
    client_config(&read(ca)?, &read(cert)?, &read(key)?)
}
