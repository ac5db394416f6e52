//! The last N message ids of one sender. Ids older than the timestamp
//! window are refused by the timestamp check anyway, so a bounded FIFO is
//! enough to refuse every replay that could otherwise pass.

use std::collections::{HashSet, VecDeque};

#[derive(Debug)]
pub struct ReplayWindow {
    capacity: usize,
    order: VecDeque<String>,
    seen: HashSet<String>,
}

impl ReplayWindow {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            order: VecDeque::with_capacity(capacity.min(1024)),
            seen: HashSet::with_capacity(capacity.min(1024)),
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.seen.contains(id)
    }

    /// Records `id`; false when it was already there (a replay).
    pub fn insert(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        self.order.push_back(id.to_string());
        self.seen.insert(id.to_string());
        true
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_last_n_ids() {
        let mut w = ReplayWindow::new(3);
        assert!(w.insert("a"));
        assert!(!w.insert("a"));
        assert!(w.insert("b") && w.insert("c") && w.insert("d"));
        assert_eq!(w.len(), 3);
        // "a" fell out of the window; the timestamp check guards beyond it.
        assert!(!w.contains("a"));
        assert!(w.contains("d") && !w.insert("d"));
    }
}
