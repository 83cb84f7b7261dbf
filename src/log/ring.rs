//! In-memory log history for `brig logs`: one ring per source (each service, and brig itself),
//! bounded in bytes, so a chatty service can only push out its own old lines.
//!
//! Every line gets a global sequence number; followers (`brig logs -f`) remember the last one
//! they were sent and pick up from there.

use std::collections::{BTreeMap, VecDeque};
use std::time::SystemTime;

/// One captured line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    /// Wall-clock time of capture, in milliseconds since the epoch (for humans reading logs).
    pub time_ms: u64,
    pub source: String,
    pub pid: Option<i32>,
    pub text: String,
}

/// Bookkeeping bytes counted per entry besides its text.
const ENTRY_OVERHEAD: usize = 48;

#[derive(Debug, Default)]
struct Ring {
    entries: VecDeque<Entry>,
    bytes: usize,
}

#[derive(Debug)]
pub struct Rings {
    rings: BTreeMap<String, Ring>,
    /// Byte budget of each ring.
    capacity: usize,
    next_seq: u64,
}

impl Rings {
    pub const fn new(capacity: usize) -> Self {
        Rings { rings: BTreeMap::new(), capacity, next_seq: 1 }
    }

    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        for ring in self.rings.values_mut() {
            trim(ring, capacity);
        }
    }

    pub fn push(&mut self, source: &str, pid: Option<i32>, text: &str) {
        let time_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let entry = Entry {
            seq: self.next_seq,
            time_ms,
            source: source.to_string(),
            pid,
            text: text.to_string(),
        };
        self.next_seq += 1;
        if !self.rings.contains_key(source) {
            self.rings.insert(source.to_string(), Ring::default());
        }
        if let Some(ring) = self.rings.get_mut(source) {
            ring.bytes += entry.text.len() + ENTRY_OVERHEAD;
            ring.entries.push_back(entry);
            trim(ring, self.capacity);
        }
    }

    /// The last `n` lines of `source` (all sources merged in order when None) with a sequence
    /// number above `after`.
    pub fn tail(&self, source: Option<&str>, n: usize, after: u64) -> Vec<Entry> {
        let mut picked: Vec<&Entry> = match source {
            Some(name) => self.rings.get(name).map_or(Vec::new(), |r| {
                r.entries.iter().rev().take_while(|e| e.seq > after).take(n).collect()
            }),
            None => {
                let mut all: Vec<&Entry> = self
                    .rings
                    .values()
                    .flat_map(|r| r.entries.iter().rev().take_while(|e| e.seq > after).take(n))
                    .collect();
                all.sort_by_key(|e| std::cmp::Reverse(e.seq));
                all.truncate(n);
                all
            }
        };
        picked.reverse();
        picked.sort_by_key(|e| e.seq);
        picked.into_iter().cloned().collect()
    }

    /// The sequence number the next line will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Forgets a source, for a service removed by a reload.
    pub fn remove(&mut self, source: &str) {
        self.rings.remove(source);
    }
}

fn trim(ring: &mut Ring, capacity: usize) {
    while ring.bytes > capacity {
        match ring.entries.pop_front() {
            Some(old) => ring.bytes -= old.text.len() + ENTRY_OVERHEAD,
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest_lines_within_its_budget() {
        let mut r = Rings::new(3 * (ENTRY_OVERHEAD + 5));
        for i in 0..10 {
            r.push("web", None, &format!("line{i}"));
        }
        let texts: Vec<String> = r.tail(Some("web"), 100, 0).into_iter().map(|e| e.text).collect();
        assert_eq!(texts, vec!["line7", "line8", "line9"]);
    }

    #[test]
    fn a_chatty_source_does_not_evict_another() {
        let mut r = Rings::new(2 * (ENTRY_OVERHEAD + 5));
        r.push("quiet", None, "hello");
        for _ in 0..50 {
            r.push("noisy", None, "xxxxx");
        }
        assert_eq!(r.tail(Some("quiet"), 10, 0).len(), 1);
    }

    #[test]
    fn merged_tail_is_in_capture_order_and_respects_after() {
        let mut r = Rings::new(10_000);
        r.push("a", Some(1), "1");
        r.push("b", Some(2), "2");
        r.push("a", Some(1), "3");
        let all: Vec<String> = r.tail(None, 10, 0).into_iter().map(|e| e.text).collect();
        assert_eq!(all, vec!["1", "2", "3"]);
        let last2: Vec<String> = r.tail(None, 2, 0).into_iter().map(|e| e.text).collect();
        assert_eq!(last2, vec!["2", "3"]);
        let after: Vec<String> = r.tail(None, 10, 2).into_iter().map(|e| e.text).collect();
        assert_eq!(after, vec!["3"]);
    }
}
