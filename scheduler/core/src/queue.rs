//! The scheduling queue, shaped like kube-scheduler's: an active heap, a backoff queue
//! and a set of unschedulable pods that cluster events move back.
//!
//! ```text
//!  add ──▶ active ──pop──▶ (cycle) ──fits nowhere──▶ unschedulable ──cluster event──▶ backoff/active
//!            ▲                 │                           │
//!            │                 └──error (bind failed)──▶ backoff ──expires──▶ active
//!            └────────────────── unschedulable for `max_unschedulable_ms` ─┘
//! ```
//!
//! Order in the active heap: higher priority first, then older first. Time is passed in
//! (milliseconds), so the queue is pure and the simulator drives it with virtual time.

use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;

use crate::model::{PodInfo, PodKey};

/// Backoff and flush settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Backoff after the first failed attempt.
    pub initial_backoff_ms: i64,
    /// Longest backoff.
    pub max_backoff_ms: i64,
    /// An unschedulable pod is retried at least this often even with no cluster event.
    pub max_unschedulable_ms: i64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        // kube-scheduler's defaults: 1 s, 10 s, 5 min.
        QueueConfig {
            initial_backoff_ms: 1_000,
            max_backoff_ms: 10_000,
            max_unschedulable_ms: 300_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Where {
    Active,
    Backoff(i64),
    Unschedulable(i64),
    /// Popped and being scheduled.
    InFlight,
}

#[derive(Debug)]
struct Queued {
    pod: Arc<PodInfo>,
    attempts: u32,
    at: Where,
    /// Changes each time the pod enters the active heap, so stale heap entries are
    /// skipped.
    seq: u64,
    /// An update arrived while the pod was in flight.
    dirty: bool,
    /// When it was last tried: its backoff runs from then, as kube-scheduler's does,
    /// so a pod that waited long is retried at once when the cluster changes.
    tried_ms: i64,
}

#[derive(Debug, PartialEq, Eq)]
struct HeapEntry {
    /// Goes ahead of everything else (repairing a gang after a failed bind).
    urgent: bool,
    priority: i32,
    created_ms: i64,
    seq: u64,
    key: PodKey,
}

impl Ord for HeapEntry {
    fn cmp(&self, o: &Self) -> Ordering {
        self.urgent
            .cmp(&o.urgent)
            .then_with(|| self.priority.cmp(&o.priority))
            .then_with(|| o.created_ms.cmp(&self.created_ms))
            .then_with(|| o.seq.cmp(&self.seq))
    }
}

impl PartialOrd for HeapEntry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// The queue of pods waiting for a scheduling cycle.
#[derive(Debug, Default)]
pub struct SchedulingQueue {
    cfg: QueueConfig,
    pods: HashMap<PodKey, Queued>,
    active: BinaryHeap<HeapEntry>,
    backoff: BTreeSet<(i64, u64, PodKey)>,
    next_seq: u64,
    /// No parked pod is due for the periodic flush before this instant, so `flush`
    /// (called by every `pop`) skips the scan of every pod until then.
    next_stale_ms: i64,
}

impl SchedulingQueue {
    /// An empty queue.
    pub fn new(cfg: QueueConfig) -> Self {
        SchedulingQueue {
            cfg,
            ..Default::default()
        }
    }

    fn push_active(&mut self, key: &PodKey) {
        self.push_active_as(key, false);
    }

    fn push_active_as(&mut self, key: &PodKey, urgent: bool) {
        self.next_seq += 1;
        let seq = self.next_seq;
        let q = self.pods.get_mut(key).expect("queued");
        q.at = Where::Active;
        q.seq = seq;
        self.active.push(HeapEntry {
            urgent,
            priority: q.pod.priority,
            created_ms: q.pod.created_ms,
            seq,
            key: key.clone(),
        });
    }

    fn backoff_ms(&self, attempts: u32) -> i64 {
        let shift = attempts.saturating_sub(1).min(30);
        (self.cfg.initial_backoff_ms << shift).min(self.cfg.max_backoff_ms)
    }

    fn take_out(&mut self, key: &PodKey) {
        if let Some(q) = self.pods.get(key)
            && let Where::Backoff(t) = q.at
        {
            self.backoff.remove(&(t, q.seq, key.clone()));
        }
    }

    /// Adds a new pending pod, or updates one already queued. An update to a pod that
    /// was waiting as unschedulable gives it another try (after its backoff).
    pub fn add_or_update(&mut self, pod: Arc<PodInfo>, now_ms: i64) {
        let key = pod.key.clone();
        match self.pods.get_mut(&key) {
            None => {
                self.pods.insert(
                    key.clone(),
                    Queued {
                        pod,
                        attempts: 0,
                        at: Where::Active,
                        seq: 0,
                        dirty: false,
                        tried_ms: now_ms,
                    },
                );
                self.push_active(&key);
            }
            Some(q) => {
                let changed = q.pod.uid != pod.uid
                    || q.pod.requests != pod.requests
                    || q.pod.priority != pod.priority
                    || q.pod.tolerations != pod.tolerations
                    || q.pod.node_selector != pod.node_selector
                    || q.pod.required_affinity != pod.required_affinity
                    || q.pod.labels != pod.labels;
                q.pod = pod;
                match q.at {
                    Where::InFlight => q.dirty = true,
                    Where::Active => {
                        self.push_active(&key);
                    }
                    Where::Unschedulable(_) if changed => {
                        self.requeue_after_backoff(&key, now_ms);
                    }
                    _ => {}
                }
            }
        }
    }

    fn requeue_after_backoff(&mut self, key: &PodKey, now_ms: i64) {
        self.take_out(key);
        let q = &self.pods[key];
        let attempts = q.attempts;
        let until = q.tried_ms.saturating_add(self.backoff_ms(attempts));
        if attempts == 0 || until <= now_ms {
            self.push_active(key);
        } else {
            self.next_seq += 1;
            let seq = self.next_seq;
            let q = self.pods.get_mut(key).expect("queued");
            q.at = Where::Backoff(until);
            q.seq = seq;
            self.backoff.insert((until, seq, key.clone()));
        }
    }

    /// Removes a pod (bound, deleted, or no longer ours).
    pub fn remove(&mut self, key: &PodKey) {
        self.take_out(key);
        self.pods.remove(key);
    }

    /// Moves pods whose backoff ended, and pods unschedulable for too long, to active.
    pub fn flush(&mut self, now_ms: i64) {
        while let Some((t, _, _)) = self.backoff.first() {
            if *t > now_ms {
                break;
            }
            let (_, seq, key) = self.backoff.pop_first().expect("non-empty");
            if self.pods.get(&key).is_some_and(|q| q.seq == seq) {
                self.push_active(&key);
            }
        }
        if now_ms < self.next_stale_ms {
            return;
        }
        let max = self.cfg.max_unschedulable_ms;
        let mut next = i64::MAX;
        let mut stale: Vec<PodKey> = Vec::new();
        for (k, q) in &self.pods {
            if let Where::Unschedulable(since) = q.at {
                if now_ms - since >= max {
                    stale.push(k.clone());
                } else {
                    next = next.min(since + max);
                }
            }
        }
        self.next_stale_ms = next;
        // In key order, so that runs do not depend on hash order.
        stale.sort();
        for k in stale {
            self.push_active(&k);
        }
    }

    /// Parks a pod as unschedulable since `now_ms`.
    fn park(&mut self, key: &PodKey, now_ms: i64) {
        self.take_out(key);
        if let Some(q) = self.pods.get_mut(key) {
            q.at = Where::Unschedulable(now_ms);
            self.next_stale_ms = self
                .next_stale_ms
                .min(now_ms.saturating_add(self.cfg.max_unschedulable_ms));
        }
    }

    /// True when a pod is active now (after moving due pods to active); drops stale
    /// heap entries on the way.
    pub fn ready(&mut self, now_ms: i64) -> bool {
        self.flush(now_ms);
        while let Some(e) = self.active.peek() {
            if self
                .pods
                .get(&e.key)
                .is_some_and(|q| q.seq == e.seq && q.at == Where::Active)
            {
                return true;
            }
            self.active.pop();
        }
        false
    }

    /// The next pod to schedule, if any is active now.
    pub fn pop(&mut self, now_ms: i64) -> Option<Arc<PodInfo>> {
        self.flush(now_ms);
        while let Some(e) = self.active.pop() {
            if let Some(q) = self.pods.get_mut(&e.key)
                && q.seq == e.seq
                && q.at == Where::Active
            {
                q.at = Where::InFlight;
                q.attempts += 1;
                q.dirty = false;
                q.tried_ms = now_ms;
                return Some(q.pod.clone());
            }
        }
        None
    }

    /// The pod fit nowhere: park it until a cluster event or the flush interval. If it
    /// was updated while in flight, it goes straight to backoff instead.
    pub fn unschedulable(&mut self, key: &PodKey, now_ms: i64) {
        let Some(q) = self.pods.get_mut(key) else {
            return;
        };
        if q.dirty {
            self.requeue_after_backoff(key, now_ms);
        } else {
            self.park(key, now_ms);
        }
    }

    /// The attempt failed for a passing reason (bind error): retry after backoff.
    pub fn backoff(&mut self, key: &PodKey, now_ms: i64) {
        if self.pods.contains_key(key) {
            self.requeue_after_backoff(key, now_ms);
        }
    }

    /// Takes a pod out of waiting without popping it (a gang member placed together
    /// with the pod that was popped): it counts an attempt and is in flight until
    /// removed or sent back.
    pub fn take(&mut self, key: &PodKey, now_ms: i64) {
        if self.pods.get(key).is_some_and(|q| q.at != Where::InFlight) {
            self.take_out(key);
            let q = self.pods.get_mut(key).expect("checked");
            q.at = Where::InFlight;
            q.attempts += 1;
            q.dirty = false;
            q.tried_ms = now_ms;
        }
    }

    /// Puts a pod at the head of the queue, ahead of every other pod, now (a gang
    /// member whose bind failed while the rest of its gang is bound).
    pub fn urgent(&mut self, key: &PodKey) {
        if self.pods.contains_key(key) {
            self.take_out(key);
            self.push_active_as(key, true);
        }
    }

    /// Returns a popped pod to the queue unchanged (it was not really attempted: for
    /// example a gang member waiting for its gang).
    pub fn hold(&mut self, key: &PodKey, now_ms: i64) {
        self.park(key, now_ms);
    }

    /// Something changed for this parked pod alone (its gang gained a member that
    /// will not enter the queue itself): another try after its backoff.
    pub fn wake(&mut self, key: &PodKey, now_ms: i64) {
        if self
            .pods
            .get(key)
            .is_some_and(|q| matches!(q.at, Where::Unschedulable(_)))
        {
            self.requeue_after_backoff(key, now_ms);
        }
    }

    /// Something changed that may let unschedulable pods fit (a node was added or
    /// grew, a pod went away): give every one of them another try after its backoff.
    pub fn cluster_changed(&mut self, now_ms: i64) {
        let mut parked: Vec<PodKey> = self
            .pods
            .iter()
            .filter(|(_, q)| matches!(q.at, Where::Unschedulable(_)))
            .map(|(k, _)| k.clone())
            .collect();
        parked.sort();
        for k in parked {
            self.requeue_after_backoff(&k, now_ms);
        }
    }

    /// When the next backoff ends, if any pod is backing off.
    pub fn next_wakeup(&self) -> Option<i64> {
        self.backoff.first().map(|(t, _, _)| *t)
    }

    /// True when a pod is active now.
    pub fn has_active(&self) -> bool {
        self.active.iter().any(|e| {
            self.pods
                .get(&e.key)
                .is_some_and(|q| q.seq == e.seq && q.at == Where::Active)
        })
    }

    /// Number of pods the queue holds, in any state.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// True when the queue holds no pod.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// Counts of pods by state: (active, backoff, unschedulable, in flight).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for q in self.pods.values() {
            match q.at {
                Where::Active => c.0 += 1,
                Where::Backoff(_) => c.1 += 1,
                Where::Unschedulable(_) => c.2 += 1,
                Where::InFlight => c.3 += 1,
            }
        }
        c
    }

    /// The number of attempts made for a pod.
    pub fn attempts(&self, key: &PodKey) -> u32 {
        self.pods.get(key).map_or(0, |q| q.attempts)
    }

    /// Where a pod is: `active`, `backoff` (until when), `unschedulable` (since
    /// when) or `in flight`, with its attempts and last attempt (ms).
    pub fn spot(&self, key: &PodKey) -> Option<Spot> {
        let q = self.pods.get(key)?;
        let (state, at_ms) = match q.at {
            Where::Active => ("active", None),
            Where::Backoff(t) => ("backoff", Some(t)),
            Where::Unschedulable(t) => ("unschedulable", Some(t)),
            Where::InFlight => ("in flight", None),
        };
        Some(Spot {
            state,
            at_ms,
            attempts: q.attempts,
            tried_ms: q.tried_ms,
        })
    }

    /// True when the queue holds this pod.
    pub fn contains(&self, key: &PodKey) -> bool {
        self.pods.contains_key(key)
    }
}

/// Where a pod is in its queue.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Spot {
    /// `active`, `backoff`, `unschedulable` or `in flight`.
    pub state: &'static str,
    /// The end of its backoff, or since when it is unschedulable (ms).
    pub at_ms: Option<i64>,
    /// Attempts so far.
    pub attempts: u32,
    /// Its last attempt (ms).
    pub tried_ms: i64,
}

/// One [`SchedulingQueue`] per fair-share queue: work is taken from the queue that
/// ranks first (lowest weighted dominant share), then by priority and age within it.
#[derive(Debug, Default)]
pub struct QueueSet {
    cfg: QueueConfig,
    queues: std::collections::BTreeMap<Arc<str>, SchedulingQueue>,
    of: HashMap<PodKey, Arc<str>>,
}

impl QueueSet {
    /// An empty set.
    pub fn new(cfg: QueueConfig) -> Self {
        QueueSet {
            cfg,
            ..Default::default()
        }
    }

    fn sub(&mut self, key: &PodKey) -> Option<&mut SchedulingQueue> {
        let q = self.of.get(key)?;
        self.queues.get_mut(q)
    }

    /// Adds or updates a pending pod in the fair-share queue `queue`.
    pub fn add_or_update(&mut self, queue: Arc<str>, pod: Arc<PodInfo>, now_ms: i64) {
        if let Some(old) = self.of.get(&pod.key)
            && *old != queue
        {
            let key = pod.key.clone();
            self.remove(&key);
        }
        self.of.insert(pod.key.clone(), queue.clone());
        let cfg = self.cfg;
        self.queues
            .entry(queue)
            .or_insert_with(|| SchedulingQueue::new(cfg))
            .add_or_update(pod, now_ms);
    }

    /// Removes a pod.
    pub fn remove(&mut self, key: &PodKey) {
        if let Some(q) = self.of.remove(key)
            && let Some(sq) = self.queues.get_mut(&q)
        {
            sq.remove(key);
            if sq.is_empty() {
                self.queues.remove(&q);
            }
        }
    }

    /// The next pod: from the ready queue that `rank` puts first (ties by name).
    pub fn pop<K: PartialOrd>(
        &mut self,
        now_ms: i64,
        rank: impl Fn(&str) -> K,
    ) -> Option<Arc<PodInfo>> {
        let mut best: Option<(K, Arc<str>)> = None;
        for (name, q) in self.queues.iter_mut() {
            if !q.ready(now_ms) {
                continue;
            }
            let r = rank(name);
            if best.as_ref().is_none_or(|(b, _)| r < *b) {
                best = Some((r, name.clone()));
            }
        }
        let (_, name) = best?;
        self.queues.get_mut(&name)?.pop(now_ms)
    }

    /// True when some pod is active now (after moving due pods to active).
    pub fn ready(&mut self, now_ms: i64) -> bool {
        self.queues.values_mut().any(|q| q.ready(now_ms))
    }

    /// See [`SchedulingQueue::unschedulable`].
    pub fn unschedulable(&mut self, key: &PodKey, now_ms: i64) {
        if let Some(q) = self.sub(key) {
            q.unschedulable(key, now_ms);
        }
    }

    /// See [`SchedulingQueue::backoff`].
    pub fn backoff(&mut self, key: &PodKey, now_ms: i64) {
        if let Some(q) = self.sub(key) {
            q.backoff(key, now_ms);
        }
    }

    /// See [`SchedulingQueue::hold`].
    pub fn hold(&mut self, key: &PodKey, now_ms: i64) {
        if let Some(q) = self.sub(key) {
            q.hold(key, now_ms);
        }
    }

    /// See [`SchedulingQueue::spot`].
    pub fn spot(&self, key: &PodKey) -> Option<Spot> {
        self.queues.get(self.of.get(key)?)?.spot(key)
    }

    /// See [`SchedulingQueue::take`].
    pub fn take(&mut self, key: &PodKey, now_ms: i64) {
        if let Some(q) = self.sub(key) {
            q.take(key, now_ms);
        }
    }

    /// See [`SchedulingQueue::urgent`].
    pub fn urgent(&mut self, key: &PodKey) {
        if let Some(q) = self.sub(key) {
            q.urgent(key);
        }
    }

    /// See [`SchedulingQueue::wake`].
    pub fn wake(&mut self, key: &PodKey, now_ms: i64) {
        if let Some(q) = self.sub(key) {
            q.wake(key, now_ms);
        }
    }

    /// See [`SchedulingQueue::cluster_changed`].
    pub fn cluster_changed(&mut self, now_ms: i64) {
        for q in self.queues.values_mut() {
            q.cluster_changed(now_ms);
        }
    }

    /// When the next backoff ends, in any queue.
    pub fn next_wakeup(&self) -> Option<i64> {
        self.queues.values().filter_map(|q| q.next_wakeup()).min()
    }

    /// True when the set holds this pod.
    pub fn contains(&self, key: &PodKey) -> bool {
        self.of.contains_key(key)
    }

    /// Number of pods held.
    pub fn len(&self) -> usize {
        self.of.len()
    }

    /// True when no pod is held.
    pub fn is_empty(&self) -> bool {
        self.of.is_empty()
    }

    /// Counts by state over every queue: (active, backoff, unschedulable, in flight).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        self.queues
            .values()
            .map(|q| q.counts())
            .fold((0, 0, 0, 0), |a, b| {
                (a.0 + b.0, a.1 + b.1, a.2 + b.2, a.3 + b.3)
            })
    }

    /// Pods held per fair-share queue.
    pub fn per_queue(&self) -> impl Iterator<Item = (&Arc<str>, usize)> {
        self.queues.iter().map(|(n, q)| (n, q.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, priority: i32, created: i64) -> Arc<PodInfo> {
        Arc::new(PodInfo {
            key: PodKey::new("ns", name),
            uid: name.into(),
            priority,
            created_ms: created,
            ..Default::default()
        })
    }

    fn names(q: &mut SchedulingQueue, now: i64) -> Vec<String> {
        std::iter::from_fn(|| q.pop(now))
            .map(|p| p.key.name.to_string())
            .collect()
    }

    #[test]
    fn priority_then_age() {
        let mut q = SchedulingQueue::new(QueueConfig::default());
        q.add_or_update(pod("old-low", 0, 1), 0);
        q.add_or_update(pod("new-high", 10, 5), 0);
        q.add_or_update(pod("new-low", 0, 3), 0);
        q.add_or_update(pod("old-high", 10, 2), 0);
        assert_eq!(
            names(&mut q, 0),
            ["old-high", "new-high", "old-low", "new-low"]
        );
    }

    #[test]
    fn unschedulable_waits_for_an_event_then_backs_off() {
        let mut q = SchedulingQueue::new(QueueConfig::default());
        q.add_or_update(pod("p", 0, 0), 0);
        let p = q.pop(0).unwrap();
        q.unschedulable(&p.key, 0);
        assert!(q.pop(5_000).is_none(), "parked until an event");
        // The backoff runs from the attempt: 1 s after it, long past at 5 s.
        q.cluster_changed(5_000);
        assert_eq!(
            q.pop(5_000).map(|p| p.key.name.to_string()),
            Some("p".into()),
            "tried at once: its 1 s backoff ended long ago"
        );
        q.unschedulable(&p.key, 5_000);
        q.cluster_changed(5_500);
        assert!(q.pop(6_999).is_none(), "2 s after the second attempt");
        assert!(q.pop(7_000).is_some());
        assert_eq!(q.attempts(&p.key), 3);
    }

    #[test]
    fn backoff_is_capped_and_flush_retries_parked_pods() {
        let cfg = QueueConfig::default();
        let mut q = SchedulingQueue::new(cfg);
        q.add_or_update(pod("p", 0, 0), 0);
        let mut t = 0;
        for _ in 0..10 {
            let p = q.pop(t).unwrap();
            q.backoff(&p.key, t);
            let next = q.next_wakeup().unwrap();
            assert!(next - t <= cfg.max_backoff_ms);
            if next == t + cfg.max_backoff_ms {
                t = next;
                break;
            }
            t = next;
        }
        let p = q.pop(t).unwrap();
        q.backoff(&p.key, t);
        assert_eq!(q.next_wakeup(), Some(t + cfg.max_backoff_ms), "capped");
        let p = q.pop(t + cfg.max_backoff_ms).unwrap();
        q.unschedulable(&p.key, 100_000);
        assert!(q.pop(100_000 + cfg.max_unschedulable_ms - 1).is_none());
        assert!(q.pop(100_000 + cfg.max_unschedulable_ms).is_some());
    }

    #[test]
    fn removed_and_updated_pods() {
        let mut q = SchedulingQueue::new(QueueConfig::default());
        q.add_or_update(pod("a", 0, 0), 0);
        q.add_or_update(pod("b", 0, 1), 0);
        q.remove(&PodKey::new("ns", "a"));
        q.add_or_update(pod("b", 0, 1), 0);
        assert_eq!(
            names(&mut q, 0),
            ["b"],
            "removed pods and stale heap entries are skipped"
        );
        // An update while in flight sends the pod to backoff instead of parking it.
        q.add_or_update(pod("c", 0, 0), 0);
        let c = q.pop(0).unwrap();
        q.add_or_update(pod("c", 5, 0), 0);
        q.unschedulable(&c.key, 0);
        assert_eq!(q.counts(), (0, 1, 0, 1));
        assert_eq!(q.pop(1_000).unwrap().priority, 5);
    }

    #[test]
    fn urgent_goes_ahead_of_everything_and_take_marks_in_flight() {
        let mut q = SchedulingQueue::new(QueueConfig::default());
        q.add_or_update(pod("high", 100, 0), 0);
        q.add_or_update(pod("repair", 0, 50), 0);
        q.add_or_update(pod("member", 0, 60), 0);
        // A gang member placed with the popped pod is taken without a pop.
        q.take(&PodKey::new("ns", "member"), 0);
        assert_eq!(q.counts(), (2, 0, 0, 1));
        assert_eq!(q.attempts(&PodKey::new("ns", "member")), 1);
        // A pod parked after a failed bind is put at the head, above higher priority.
        let p = q.pop(0).unwrap();
        assert_eq!(&*p.key.name, "high");
        q.unschedulable(&p.key, 0);
        q.urgent(&PodKey::new("ns", "repair"));
        assert_eq!(&*q.pop(0).unwrap().key.name, "repair");
        q.urgent(&PodKey::new("ns", "absent"));
        assert!(q.pop(0).is_none());
    }

    #[test]
    fn parking_a_backing_off_pod_takes_it_out_of_backoff() {
        let mut q = SchedulingQueue::new(QueueConfig::default());
        q.add_or_update(pod("a", 0, 0), 0);
        let p = q.pop(0).unwrap();
        q.backoff(&p.key, 0);
        assert_eq!(q.counts(), (0, 1, 0, 0));
        // A gang parks all its waiting members, whatever state they are in.
        q.hold(&p.key, 0);
        assert_eq!(q.counts(), (0, 0, 1, 0));
        q.remove(&p.key);
        // No stale backoff entry is left to resurrect the removed pod.
        assert!(q.pop(60_000).is_none());
        assert!(q.is_empty());
    }

    #[test]
    fn the_set_takes_from_the_queue_ranked_first() {
        let mut qs = QueueSet::new(QueueConfig::default());
        qs.add_or_update("a".into(), pod("a1", 100, 0), 0);
        qs.add_or_update("b".into(), pod("b1", 0, 5), 0);
        qs.add_or_update("b".into(), pod("b2", 0, 6), 0);
        // b ranks first whatever the priorities across queues; inside b, age.
        let rank = |q: &str| if q == "b" { 0 } else { 1 };
        assert_eq!(&*qs.pop(0, rank).unwrap().key.name, "b1");
        assert_eq!(&*qs.pop(0, rank).unwrap().key.name, "b2");
        assert_eq!(&*qs.pop(0, rank).unwrap().key.name, "a1");
        assert!(qs.pop(0, rank).is_none());
        assert_eq!(qs.counts(), (0, 0, 0, 3));
        // A pod that moves to another queue leaves the first.
        qs.add_or_update("a".into(), pod("b1", 0, 5), 0);
        assert_eq!(qs.per_queue().map(|(_, n)| n).sum::<usize>(), 3);
        qs.remove(&PodKey::new("ns", "b1"));
        qs.remove(&PodKey::new("ns", "b2"));
        qs.remove(&PodKey::new("ns", "a1"));
        assert!(qs.is_empty());
    }
}
