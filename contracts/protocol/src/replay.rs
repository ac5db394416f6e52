//! The message ids of one sender whose timestamps are still inside the
//! freshness window. An id is kept until its message's timestamp leaves the
//! window (from then on the timestamp check refuses the message anyway), so
//! a replay is refused for as long as it could otherwise pass, however many
//! messages came between. Memory is bounded by what the sender may get
//! accepted in one window: callers record an id only once the message passed
//! its rate limit.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct ReplayWindow {
    seen: HashSet<Arc<str>>,
    /// Ids by the Unix second after which they may be forgotten, soonest first.
    expiry: BinaryHeap<Reverse<(i64, Arc<str>)>>,
}

impl ReplayWindow {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.seen.contains(id)
    }

    /// Records `id`, remembered until `expires` (Unix seconds: the message's
    /// timestamp plus the window); false when it was already there (a replay).
    pub fn insert(&mut self, id: &str, expires: i64) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        let id: Arc<str> = Arc::from(id);
        self.seen.insert(id.clone());
        self.expiry.push(Reverse((expires, id)));
        true
    }

    /// Forgets the ids that expired before `now`; returns how many.
    pub fn expire(&mut self, now: i64) -> usize {
        let mut n = 0;
        while let Some(Reverse((at, _))) = self.expiry.peek()
            && *at < now
        {
            let Reverse((_, id)) = self.expiry.pop().expect("peeked");
            self.seen.remove(&id);
            n += 1;
        }
        n
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_ids_until_their_timestamp_leaves_the_window() {
        let mut w = ReplayWindow::new();
        assert!(w.insert("a", 1300));
        assert!(!w.insert("a", 1300));
        // However many ids come between, "a" stays until it expires.
        for i in 0..5000 {
            assert!(w.insert(&format!("m{i}"), 1400 + i));
        }
        assert_eq!(w.expire(1300), 0);
        assert!(w.contains("a") && !w.insert("a", 1300));
        assert_eq!(w.expire(1301), 1);
        assert!(!w.contains("a"));
        assert_eq!(w.expire(1400 + 5000), 5000);
        assert!(w.is_empty());
    }

    #[test]
    fn expires_in_time_order_whatever_the_insert_order() {
        let mut w = ReplayWindow::new();
        for (id, at) in [("late", 30), ("early", 10), ("mid", 20)] {
            w.insert(id, at);
        }
        assert_eq!(w.expire(15), 1);
        assert!(!w.contains("early") && w.contains("mid") && w.contains("late"));
        assert_eq!(w.len(), 2);
    }
}
