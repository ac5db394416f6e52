//! The encryption keyring of a StationFeed, shared by the operator (which
//! creates and rotates it), the encryptor (which encrypts with its primary
//! key) and the export CLI (which decrypts with any of its keys).
//!
//! Stored in the Secret `<feed>-keyring` under `keyring.json`:
//!
//! ```json
//! {"primary":"k2-5c1e0a9b","indexKey":"<base64url 32 bytes>",
//!  "keys":[{"id":"k1-0f3a…","key":"<Fernet key>","createdAt":"2026-…"},
//!          {"id":"k2-5c1e…","key":"<Fernet key>","createdAt":"2026-…"}]}
//! ```
//!
//! Field values are Fernet tokens (AES-128-CBC + HMAC-SHA256, the format
//! of Python's `cryptography.fernet`, as seed 000 used), so any Fernet
//! implementation given the key decrypts them. Each stored row records the
//! id of the key that encrypted it; rotation adds a new primary key and
//! keeps the old ones, so old rows stay readable.
//!
//! `indexKey` never rotates: it keys the HMAC "blind index" that lets the
//! encryptor deduplicate and the CLI look up rows by contract without the
//! contract name being stored readable (seed 000 encrypts `contract_name`).
//!
//! This crate is deliberately light (no Kubernetes or Kafka dependencies)
//! so the operator can depend on it.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use chrono::{DateTime, Utc};
use fernet::Fernet;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Key of the keyring document inside the Secret.
pub const SECRET_DATA_KEY: &str = "keyring.json";

/// Name of the keyring Secret of StationFeed `feed`.
pub fn secret_name(feed: &str) -> String {
    format!("{feed}-keyring")
}

/// Errors never carry key material or plaintext: they are logged and
/// shown to users.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum KeyringError {
    #[error("keyring is not valid JSON of the expected shape: {0}")]
    Format(String),
    #[error("keyring has no keys")]
    Empty,
    #[error("keyring names primary key id {0:?}, which it does not contain")]
    MissingPrimary(String),
    #[error("keyring contains key id {0:?} more than once")]
    DuplicateId(String),
    #[error("key {0:?} is not a Fernet key (base64url of 32 bytes)")]
    InvalidKey(String),
    #[error("indexKey is not base64url of 32 bytes")]
    InvalidIndexKey,
    #[error("key id {0:?} is not in the keyring (was the keyring replaced?)")]
    UnknownKeyId(String),
    #[error("token does not decrypt with key {0:?}: wrong key, or the token was altered")]
    Decrypt(String),
}

pub type Result<T, E = KeyringError> = std::result::Result<T, E>;

/// The serialized form (what the Secret holds).
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct Document {
    primary: String,
    index_key: String,
    keys: Vec<KeyEntry>,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct KeyEntry {
    id: String,
    key: String,
    created_at: DateTime<Utc>,
}

/// A validated keyring. `Debug` prints key ids only, never keys.
#[derive(Clone)]
pub struct Keyring {
    doc: Document,
    /// Parsed Fernet keys, in `doc.keys` order.
    fernets: Vec<Fernet>,
    index_key: Vec<u8>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.doc.primary)
            .field("key_ids", &self.key_ids())
            .finish_non_exhaustive()
    }
}

impl PartialEq for Keyring {
    fn eq(&self, other: &Self) -> bool {
        self.doc == other.doc
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill_bytes(&mut b);
    b
}

/// Key ids are `k<n>-<8 hex>`: the number orders them for people, the
/// random part keeps an id from ever naming two different keys (e.g. when
/// a deleted keyring is generated anew, its `k1` is not the old `k1`).
fn new_key_id(n: usize) -> String {
    format!("k{n}-{}", hex::encode(random_bytes::<4>()))
}

impl Keyring {
    /// A new keyring with one (primary) key and a fresh index key.
    pub fn generate() -> Self {
        let doc = Document {
            primary: String::new(),
            index_key: URL_SAFE.encode(random_bytes::<32>()),
            keys: Vec::new(),
        };
        let mut ring = Self {
            doc,
            fernets: Vec::new(),
            index_key: Vec::new(),
        };
        ring.index_key = URL_SAFE.decode(&ring.doc.index_key).expect("just encoded");
        ring.rotate();
        ring
    }

    /// Adds a new key and makes it the primary; returns its id. Older keys
    /// stay so rows they encrypted remain readable.
    pub fn rotate(&mut self) -> String {
        let mut id = new_key_id(self.doc.keys.len() + 1);
        while self.doc.keys.iter().any(|k| k.id == id) {
            id = new_key_id(self.doc.keys.len() + 1);
        }
        let key = Fernet::generate_key();
        self.fernets.push(Fernet::new(&key).expect("generated key is valid"));
        self.doc.keys.push(KeyEntry {
            id: id.clone(),
            key,
            created_at: Utc::now(),
        });
        self.doc.primary = id.clone();
        id
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let doc: Document = serde_json::from_str(text).map_err(|e| {
            // serde's message can quote input; keep only where it failed.
            KeyringError::Format(format!("line {} column {} ({:?})", e.line(), e.column(), e.classify()))
        })?;
        Self::from_document(doc)
    }

    fn from_document(doc: Document) -> Result<Self> {
        if doc.keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        let mut fernets = Vec::with_capacity(doc.keys.len());
        for (i, k) in doc.keys.iter().enumerate() {
            if doc.keys[..i].iter().any(|o| o.id == k.id) {
                return Err(KeyringError::DuplicateId(k.id.clone()));
            }
            fernets.push(Fernet::new(&k.key).ok_or_else(|| KeyringError::InvalidKey(k.id.clone()))?);
        }
        if !doc.keys.iter().any(|k| k.id == doc.primary) {
            return Err(KeyringError::MissingPrimary(doc.primary.clone()));
        }
        let index_key = URL_SAFE
            .decode(&doc.index_key)
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or(KeyringError::InvalidIndexKey)?;
        Ok(Self {
            doc,
            fernets,
            index_key,
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.doc).expect("keyring serializes")
    }

    /// Id of the key new values are encrypted with.
    pub fn primary_id(&self) -> &str {
        &self.doc.primary
    }

    /// Every key id, oldest first.
    pub fn key_ids(&self) -> Vec<String> {
        self.doc.keys.iter().map(|k| k.id.clone()).collect()
    }

    /// When the primary key was created (the last rotation).
    pub fn primary_created_at(&self) -> DateTime<Utc> {
        self.doc
            .keys
            .iter()
            .find(|k| k.id == self.doc.primary)
            .map(|k| k.created_at)
            .expect("validated: primary exists")
    }

    /// The Fernet key (base64url) of `id`, for handing to another Fernet
    /// implementation. Callers must not log it.
    pub fn fernet_key(&self, id: &str) -> Option<&str> {
        self.doc.keys.iter().find(|k| k.id == id).map(|k| k.key.as_str())
    }

    fn fernet(&self, id: &str) -> Result<&Fernet> {
        self.doc
            .keys
            .iter()
            .position(|k| k.id == id)
            .map(|i| &self.fernets[i])
            .ok_or_else(|| KeyringError::UnknownKeyId(id.to_string()))
    }

    /// Encrypts with the primary key; returns the Fernet token. The caller
    /// records `primary_id()` beside it.
    pub fn encrypt(&self, plaintext: &[u8]) -> String {
        self.fernet(&self.doc.primary)
            .expect("validated: primary exists")
            .encrypt(plaintext)
    }

    /// Decrypts a token made with key `key_id`.
    ///
    /// Stored values have no time-to-live, so like Python's
    /// `Fernet.decrypt` without `ttl` this does not reject a token whose
    /// timestamp is ahead of this machine's clock (the `fernet` crate
    /// would, with 60 s of tolerance: a CLI on a laptop whose clock lags
    /// the encryptor's could not read fresh rows). Authenticity is still
    /// checked (HMAC-SHA256, constant time) before decrypting.
    pub fn decrypt(&self, key_id: &str, token: &str) -> Result<Vec<u8>> {
        let f = self.fernet(key_id)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let at = token_timestamp(token).map_or(now, |ts| ts.max(now));
        f.decrypt_at_time(token, None, at)
            .map_err(|_| KeyringError::Decrypt(key_id.to_string()))
    }

    /// HMAC-SHA256 (index key) of `value`, hex: a stable, keyed stand-in for
    /// a value that is stored encrypted but must still be matched on.
    pub fn blind_index(&self, value: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.index_key).expect("HMAC takes any key length");
        mac.update(value.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// The timestamp field of a Fernet token (seconds), if it parses.
fn token_timestamp(token: &str) -> Option<u64> {
    // 0x80 + 8-byte timestamp = 9 bytes = 12 base64 characters.
    let head = URL_SAFE.decode(token.get(..12)?).ok()?;
    (head.first() == Some(&0x80)).then(|| u64::from_be_bytes(head[1..9].try_into().expect("9 bytes")))
}

/// Decrypts `token` with a single Fernet key at a given time, with an
/// optional TTL: what the Fernet specification's test vectors exercise.
pub fn decrypt_at(key: &str, token: &str, ttl: Option<u64>, now: u64) -> Result<Vec<u8>> {
    let f = Fernet::new(key).ok_or_else(|| KeyringError::InvalidKey("<given>".into()))?;
    f.decrypt_at_time(token, ttl, now)
        .map_err(|_| KeyringError::Decrypt("<given>".into()))
}

/// Encrypts with a single Fernet key at a given time (random IV).
pub fn encrypt_at(key: &str, plaintext: &[u8], now: u64) -> Result<String> {
    let f = Fernet::new(key).ok_or_else(|| KeyringError::InvalidKey("<given>".into()))?;
    Ok(f.encrypt_at_time(plaintext, now))
}

#[cfg(test)]
mod tests;
