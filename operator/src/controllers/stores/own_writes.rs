//! The Secrets this operator wrote or is deleting, kept until the Secrets
//! store has caught up (see the parent module): a reconcile must never
//! mistake its own write for something missing, nor its own write's or
//! deletion's watch event for news.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{ObjectRef, Store};
use sha2::{Digest, Sha256};

use super::slim;

/// resourceVersions are etcd revisions: numbers that only grow. (The API
/// calls them opaque; if one is not a number, the store is trusted.)
fn revision(s: &Secret) -> Option<u64> {
    s.metadata.resource_version.as_deref()?.parse().ok()
}

/// What makes a Secret's content: a digest of its data and annotations
/// (32 bytes kept per write, not a copy of the Secret).
type Content = [u8; 32];

fn content(s: &Secret) -> Content {
    let mut h = Sha256::new();
    for (k, v) in s.data.iter().flatten() {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update((v.0.len() as u64).to_le_bytes());
        h.update(&v.0);
    }
    h.update([0xff]);
    for (k, v) in s.metadata.annotations.iter().flatten() {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    h.finalize().into()
}

#[derive(Default)]
pub(super) struct OwnWrites {
    /// The API server's answers to our writes, until the store has them.
    secrets: Mutex<HashMap<ObjectRef<Secret>, Arc<Secret>>>,
    /// What we last sent per Secret (the newest last, up to `RECENT`),
    /// until the store holds the newest.
    intended: Mutex<HashMap<ObjectRef<Secret>, VecDeque<Content>>>,
    /// Secrets we are deleting, until their deletion event has been seen.
    deleting: Mutex<std::collections::HashSet<ObjectRef<Secret>>>,
}

/// Own contents remembered per Secret. A keys shard is written up to once
/// a second, and under load its watch events arrive seconds late: the
/// event of an earlier write of ours is still ours, not someone's edit
/// (with only the newest content kept, each such event woke the devices
/// missing from it: 4.4 extra reconciles per Device at 10,000 Devices).
const RECENT: usize = 16;

impl OwnWrites {
    pub(super) fn intend(&self, secret: &Secret, namespace: &str) {
        let sent = content(secret);
        let key = ObjectRef::new(&secret.metadata.name.clone().unwrap_or_default()).within(namespace);
        let mut intended = self.intended.lock().expect("own writes");
        let recent = intended.entry(key).or_default();
        if recent.back() != Some(&sent) {
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(sent);
        }
    }

    pub(super) fn record(&self, mut secret: Secret) {
        slim(&mut secret);
        let key = ObjectRef::from_obj(&secret);
        self.secrets.lock().expect("own writes").insert(key, Arc::new(secret));
    }

    pub(super) fn forget(&self, key: &ObjectRef<Secret>) {
        self.secrets.lock().expect("own writes").remove(key);
        self.intended.lock().expect("own writes").remove(key);
    }

    pub(super) fn newest(&self, key: &ObjectRef<Secret>, stored: Option<Arc<Secret>>) -> Option<Arc<Secret>> {
        let mut own = self.secrets.lock().expect("own writes");
        let Some(written) = own.get(key).cloned() else {
            return stored;
        };
        match stored {
            // The store has caught up: it is the truth again.
            Some(s) if revision(&s).zip(revision(&written)).is_none_or(|(a, b)| a >= b) => {
                own.remove(key);
                Some(s)
            }
            _ => Some(written),
        }
    }

    pub(super) fn sweep(&self, store: &Store<Secret>) {
        self.secrets.lock().expect("own writes").retain(|key, written| {
            let stored = store.get(key);
            stored.is_none_or(|s| revision(&s).zip(revision(written)).is_some_and(|(a, b)| a < b))
        });
        self.intended
            .lock()
            .expect("own writes")
            .retain(|key, sent| store.get(key).is_none_or(|s| Some(&content(&s)) != sent.back()));
        self.deleting
            .lock()
            .expect("own writes")
            .retain(|key| store.get(key).is_some());
    }

    /// Records a Secret this operator is about to delete.
    pub(super) fn deleting(&self, key: ObjectRef<Secret>) {
        self.forget(&key);
        self.deleting.lock().expect("own writes").insert(key);
    }

    /// True (once) when `key`'s deletion is one `deleting` recorded.
    pub(super) fn deleted(&self, key: &ObjectRef<Secret>) -> bool {
        self.deleting.lock().expect("own writes").remove(key)
    }

    /// Compared by content, not resourceVersion: the watch event of a write
    /// can arrive before the API server's answer to it.
    pub(super) fn is_own(&self, secret: &Secret) -> bool {
        let key = ObjectRef::from_obj(secret);
        self.intended
            .lock()
            .expect("own writes")
            .get(&key)
            .is_some_and(|sent| sent.contains(&content(secret)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;

    fn secret(rv: &str, value: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("d1-credentials".into()),
                namespace: Some("ns".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            data: Some([("v".to_string(), ByteString(value.as_bytes().to_vec()))].into()),
            ..Default::default()
        }
    }

    #[test]
    fn an_own_write_wins_until_the_store_catches_up() {
        let own = OwnWrites::default();
        let key = ObjectRef::new("d1-credentials").within("ns");
        // Nothing written: the store's copy (or nothing).
        assert!(own.newest(&key, None).is_none());
        own.intend(&secret("", "mine"), "ns");
        // Its watch event may come before the answer: already ours.
        assert!(own.is_own(&secret("12", "mine")));
        own.record(secret("12", "mine"));
        // The store has not seen the write yet (older or missing).
        assert_eq!(
            own.newest(&key, None).unwrap().metadata.resource_version.as_deref(),
            Some("12")
        );
        let older = Arc::new(secret("9", "old"));
        assert_eq!(
            own.newest(&key, Some(older))
                .unwrap()
                .metadata
                .resource_version
                .as_deref(),
            Some("12")
        );
        assert!(own.is_own(&secret("12", "mine")));
        assert!(!own.is_own(&secret("13", "someone else's")));
        // Caught up: the store again, and the own copy is dropped.
        let caught_up = Arc::new(secret("13", "newer"));
        assert_eq!(
            own.newest(&key, Some(caught_up))
                .unwrap()
                .metadata
                .resource_version
                .as_deref(),
            Some("13")
        );
        assert!(own.secrets.lock().unwrap().is_empty());
    }

    #[test]
    fn a_late_event_of_an_earlier_own_write_is_still_own() {
        let own = OwnWrites::default();
        // Three writes of one shard, their watch events arriving after all
        // three answers (a busy API server).
        for (rv, value) in [("20", "a"), ("21", "a+b"), ("22", "a+b+c")] {
            own.intend(&secret("", value), "ns");
            own.record(secret(rv, value));
        }
        assert!(own.is_own(&secret("20", "a")), "the first write's event");
        assert!(own.is_own(&secret("21", "a+b")));
        assert!(own.is_own(&secret("22", "a+b+c")));
        assert!(!own.is_own(&secret("23", "a+c")), "an edit by someone else");
        // Only the last RECENT contents are kept.
        for i in 0..RECENT {
            own.intend(&secret("", &format!("later {i}")), "ns");
        }
        assert!(!own.is_own(&secret("20", "a")));
    }
}
