//! The indexing queue. Applied vectors get consecutive slots, so the queue is
//! the slot range [watermark, len): workers claim batches from its front,
//! insert them into the graph in parallel, and the watermark advances over
//! completed batches. Searches scan [watermark, len) exactly, so nothing
//! applied is ever invisible.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

#[derive(Debug, Default)]
struct State {
    /// Slots published by the apply path.
    len: usize,
    /// Next slot to hand to a worker.
    claimed: usize,
    /// All slots below this are in the graph.
    watermark: usize,
    /// Completed batches above the watermark (start -> end).
    done: BTreeMap<usize, usize>,
    capacity: usize,
    shutdown: bool,
    /// When the oldest unindexed slot was published, for the lag metric.
    oldest_enqueued: Option<Instant>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueStats {
    pub depth: usize,
    pub watermark: usize,
    pub len: usize,
    pub capacity: usize,
    pub lag: Duration,
}

#[derive(Debug)]
pub struct IndexQueue {
    state: Mutex<State>,
    work: Condvar,
    space: Condvar,
    drained: Condvar,
}

impl IndexQueue {
    pub fn new(capacity: usize) -> Self {
        IndexQueue {
            state: Mutex::new(State {
                capacity: capacity.max(1),
                ..State::default()
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            drained: Condvar::new(),
        }
    }

    /// Starts with slots [0, indexed) already in the graph and [indexed, len) queued.
    pub fn reset(&self, indexed: usize, len: usize) {
        let mut s = self.state.lock();
        s.len = len;
        s.claimed = indexed;
        s.watermark = indexed;
        s.done.clear();
        s.oldest_enqueued = (len > indexed).then(Instant::now);
        self.work.notify_all();
    }

    pub fn set_capacity(&self, capacity: usize) {
        self.state.lock().capacity = capacity.max(1);
        self.space.notify_all();
    }

    /// Backpressure: blocks until `incoming` more slots fit. A batch larger
    /// than the capacity is admitted once the queue is empty, so it never
    /// deadlocks. Returns how long it waited.
    pub fn wait_for_space(&self, incoming: usize) -> Duration {
        let start = Instant::now();
        let mut s = self.state.lock();
        while !s.shutdown {
            let depth = s.len - s.watermark;
            if depth == 0 || depth + incoming <= s.capacity {
                break;
            }
            self.space.wait(&mut s);
        }
        start.elapsed()
    }

    /// The apply path published slots up to `len`.
    pub fn published(&self, len: usize) {
        let mut s = self.state.lock();
        if len > s.len {
            if s.len == s.watermark {
                s.oldest_enqueued = Some(Instant::now());
            }
            s.len = len;
            self.work.notify_all();
        }
    }

    /// Blocks until there is work; None on shutdown. `share` splits the
    /// backlog across workers so all cores help with a large backlog.
    pub fn claim(&self, max_batch: usize, workers: usize) -> Option<Range<usize>> {
        let mut s = self.state.lock();
        loop {
            if s.shutdown {
                return None;
            }
            let pending = s.len - s.claimed;
            if pending > 0 {
                let share = pending.div_ceil(workers.max(1)).clamp(1, max_batch.max(1));
                let r = s.claimed..s.claimed + share;
                s.claimed = r.end;
                return Some(r);
            }
            self.work.wait(&mut s);
        }
    }

    /// Like `claim` but gives up after `timeout` (lets workers notice a resize).
    pub fn claim_timeout(
        &self,
        max_batch: usize,
        workers: usize,
        timeout: Duration,
    ) -> Option<Range<usize>> {
        let mut s = self.state.lock();
        if s.shutdown {
            return None;
        }
        if s.len == s.claimed {
            self.work.wait_for(&mut s, timeout);
        }
        let pending = s.len - s.claimed;
        if s.shutdown || pending == 0 {
            return None;
        }
        let share = pending.div_ceil(workers.max(1)).clamp(1, max_batch.max(1));
        let r = s.claimed..s.claimed + share;
        s.claimed = r.end;
        Some(r)
    }

    pub fn complete(&self, r: Range<usize>) {
        let mut s = self.state.lock();
        s.done.insert(r.start, r.end);
        let mut advanced = false;
        loop {
            let w = s.watermark;
            let Some(end) = s.done.remove(&w) else { break };
            s.watermark = end;
            advanced = true;
        }
        if advanced {
            s.oldest_enqueued = (s.watermark < s.len).then(Instant::now);
            self.space.notify_all();
            if s.watermark == s.len {
                self.drained.notify_all();
            }
        }
    }

    /// Blocks until every published slot is indexed, or the timeout passes.
    /// Returns true when drained.
    pub fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.state.lock();
        while s.watermark < s.len && !s.shutdown {
            if self.drained.wait_until(&mut s, deadline).timed_out() {
                return s.watermark >= s.len;
            }
        }
        s.watermark >= s.len
    }

    pub fn shutdown(&self) {
        self.state.lock().shutdown = true;
        self.work.notify_all();
        self.space.notify_all();
        self.drained.notify_all();
    }

    pub fn is_shutdown(&self) -> bool {
        self.state.lock().shutdown
    }

    pub fn watermark(&self) -> usize {
        self.state.lock().watermark
    }

    /// Everything claimed is complete (no batch in flight).
    pub fn idle(&self) -> bool {
        let s = self.state.lock();
        s.claimed == s.watermark
    }

    pub fn stats(&self) -> QueueStats {
        let s = self.state.lock();
        QueueStats {
            depth: s.len - s.watermark,
            watermark: s.watermark,
            len: s.len,
            capacity: s.capacity,
            lag: s.oldest_enqueued.map_or(Duration::ZERO, |t| t.elapsed()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn watermark_waits_for_gaps() {
        let q = IndexQueue::new(100);
        q.published(10);
        let a = q.claim(4, 1).unwrap();
        let b = q.claim(4, 1).unwrap();
        assert_eq!((a.clone(), b.clone()), (0..4, 4..8));
        q.complete(b);
        assert_eq!(q.watermark(), 0, "a gap below keeps the watermark");
        q.complete(a);
        assert_eq!(q.watermark(), 8);
        let c = q.claim(100, 1).unwrap();
        assert_eq!(c, 8..10);
        q.complete(c);
        assert!(q.drain(Duration::from_millis(10)));
    }

    #[test]
    fn full_queue_blocks_writer_until_indexed() {
        let q = Arc::new(IndexQueue::new(4));
        q.published(4);
        let q2 = q.clone();
        let writer = std::thread::spawn(move || q2.wait_for_space(2));
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !writer.is_finished(),
            "writer must wait while the queue is full"
        );
        let r = q.claim(2, 1).unwrap();
        q.complete(r);
        let waited = writer.join().unwrap();
        assert!(waited >= Duration::from_millis(40));
    }

    #[test]
    fn oversized_batch_is_admitted_when_empty() {
        let q = IndexQueue::new(2);
        assert!(q.wait_for_space(10) < Duration::from_millis(50));
    }
}
