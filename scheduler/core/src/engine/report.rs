//! What drover tells users and operators: PodGroup and Queue status (handed out as
//! actions, each only when it changed), gang timeouts, and the gauges a driver turns
//! into metrics.

use std::sync::Arc;

use crate::gang::{Dialect, GangKey, GangPhase};
use crate::model::Resources;
use crate::plugins::Score;
use crate::quota::dominant_share;

use super::{Action, Engine, EventObject};

/// A PodGroup's `status`, as scheduler-plugins defines it (Volcano's is written from
/// the same figures).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodGroupStatus {
    /// Which API the PodGroup is in.
    pub dialect: Dialect,
    /// `phase`.
    pub phase: GangPhase,
    /// Volcano's `Inqueue`: admitted by its queue and the cluster's free room before
    /// any member need exist (controllers in Volcano mode create pods only then).
    pub admitted: bool,
    /// Members on nodes (bound or binding).
    pub scheduled: usize,
    /// Members running.
    pub running: usize,
    /// Members that succeeded.
    pub succeeded: usize,
    /// Members that failed.
    pub failed: usize,
    /// When drover first attempted the gang (ms), `scheduleStartTime`.
    pub schedule_start_ms: Option<i64>,
    /// scheduleTimeoutSeconds passed before the gang was placed: a
    /// `ScheduleTimedOut` condition.
    pub timed_out: bool,
    /// What is wrong with the PodGroup itself (an unreadable field, minMember below
    /// 1): an `Invalid` condition.
    pub invalid: Option<String>,
}

/// A Queue's `status`.
#[derive(Clone, Debug, PartialEq)]
pub enum QueueStatus {
    /// The queue is valid: what it holds, asks for and should get.
    Valid {
        /// Allocated to it and its children.
        allocated: Resources,
        /// Asked for by its pending pods.
        pending: Resources,
        /// Its fair share now.
        fair_share: Resources,
        /// Its dominant share of the cluster, in thousandths.
        dominant_permille: i64,
    },
    /// The queue has a problem; pods that name it wait.
    Invalid {
        /// `field: what is wrong`.
        message: String,
    },
}

/// One queue's figures, for metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueGauge {
    /// The queue.
    pub name: Arc<str>,
    /// Allocated to it and its children.
    pub allocated: Resources,
    /// Its guarantee.
    pub guaranteed: Resources,
    /// Its fair share.
    pub fair_share: Resources,
    /// Its limit, if any.
    pub max: Option<Resources>,
}

/// The engine's state in numbers, for metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gauges {
    /// Gangs waiting for room (pending members, fewer than minMember on nodes).
    pub gangs_waiting: i64,
    /// Gangs with at least minMember members on nodes.
    pub gangs_running: i64,
    /// How long the oldest waiting gang has waited since its first attempt (ms).
    pub oldest_gang_wait_ms: i64,
    /// Pending pods by queue state: active, backoff, unschedulable, in flight, and
    /// gated (scheduling gates left: not in the queue at all).
    pub pending: [(&'static str, i64); 5],
    /// Pending pods per fair-share queue.
    pub pending_per_queue: Vec<(Arc<str>, i64)>,
    /// Per valid Queue.
    pub queues: Vec<QueueGauge>,
    /// Nodes known.
    pub nodes: i64,
    /// Memory left unused on nodes that run workload pods.
    pub wasted_memory: i64,
    /// With a price table: the hourly price of what those nodes leave unused.
    pub wasted_cost: f64,
    /// Free GPUs on nodes with no GPU in use.
    pub gpus_free_whole: i64,
    /// Free GPUs on nodes with some GPUs in use.
    pub gpus_free_partly: i64,
}

impl Engine {
    /// Hands out the status of every PodGroup whose members changed.
    pub(super) fn sync_group_status(&mut self) {
        let mut due = self.gangs.take_dirty();
        // A Volcano PodGroup not yet admitted is looked at again whenever room may have
        // freed: its controller may create no pod until it is.
        due.extend(self.volcano_admission());
        for g in due {
            let Some(group) = self.gangs.group(&g) else {
                self.group_status.remove(&g);
                continue;
            };
            let c = self.gangs.counts(&g);
            let started = self.gangs.started(&g);
            let min = usize::try_from(group.min_member).unwrap_or(0);
            let phase = c.phase(min, started.is_some());
            let status = PodGroupStatus {
                dialect: group.dialect,
                admitted: self.volcano_admitted.contains(&g),
                phase,
                scheduled: c.scheduled,
                running: c.running,
                succeeded: c.succeeded,
                failed: c.failed,
                schedule_start_ms: started,
                timed_out: self.timed_out.contains(&g) && phase != GangPhase::Running,
                invalid: self.gangs.min_member(&g).err().map(|p| p.message(&g)),
            };
            if self.group_status.get(&g) == Some(&status) {
                continue;
            }
            self.group_status.insert(g.clone(), status.clone());
            self.push(Action::PodGroupStatus { gang: g, status });
        }
    }

    /// Admits the Volcano PodGroups whose minResources fit now, in name order: within
    /// their queue, and within the cluster's free room less what the groups admitted
    /// before them still wait to take. Returns those newly admitted.
    fn volcano_admission(&mut self) -> Vec<GangKey> {
        let volcano = self.gangs.group_keys(Dialect::Volcano);
        // Nothing waits for admission: no need to add up the cluster's free room (this
        // runs after every decision).
        if volcano.iter().all(|g| self.volcano_admitted.contains(g)) {
            return Vec::new();
        }
        let mut free = crate::gang::free_total(&self.cache.snapshot());
        let mut newly = Vec::new();
        for g in volcano {
            let Some(group) = self.gangs.group(&g) else {
                continue;
            };
            let want = group.min_resources.clone();
            let started = self.gangs.counts(&g).scheduled > 0;
            if self.volcano_admitted.contains(&g) {
                // Admitted: what its members have not taken yet is spoken for.
                let mut placed = Resources::default();
                for k in self.gangs.members_in(&g, false) {
                    if let Some(p) = self.cache.pod(&k).filter(|p| p.node_name.is_some()) {
                        placed.add(&p.requests);
                    }
                }
                for (k, v) in want.iter() {
                    let left = (v - placed.get(&k)).max(0);
                    free.set(&k, free.get(&k) - left);
                }
                continue;
            }
            let queue: Arc<str> = group
                .queue
                .clone()
                .unwrap_or_else(|| crate::quota::DEFAULT_QUEUE.into());
            let fits = want.iter().all(|(k, v)| free.get(&k) >= v);
            if started || (fits && self.quota_refusal(&queue, &want).is_none()) {
                if !started {
                    free.sub(&want);
                }
                self.volcano_admitted.insert(g.clone());
                newly.push(g);
            }
        }
        newly
    }

    /// Reports gangs past their scheduleTimeoutSeconds, once each.
    pub(super) fn report_timeouts(&mut self, now: i64) {
        let gangs: Vec<GangKey> = self.gangs.gangs().cloned().collect();
        for g in gangs {
            let Ok(min) = self.gangs.min_member(&g) else {
                continue;
            };
            let c = self.gangs.counts(&g);
            if c.scheduled >= min || c.pending == 0 {
                continue;
            }
            let (Some(start), Some(group)) =
                (self.gangs.started(&g), self.gangs.group(&g).cloned())
            else {
                continue;
            };
            let Some(timeout) = group.schedule_timeout_ms else {
                continue;
            };
            if now - start >= timeout && self.timed_out.insert(g.clone()) {
                let note = format!(
                    "gang {g}: not placed within scheduleTimeoutSeconds ({}s); its pods keep waiting and are retried",
                    timeout / 1000
                );
                tracing::warn!(%note, "gang timed out");
                self.gangs.touch(&g);
                self.event(EventObject::PodGroup(group), true, "ScheduleTimeout", note);
            }
        }
    }

    /// Hands out the status of every Queue whose figures changed.
    pub(super) fn sync_queues(&mut self) {
        let usage = self.ledger.usage(&self.tree);
        let fair = self.tree.fair_shares(&usage, &self.cluster_total);
        let mut out: Vec<(Arc<str>, QueueStatus)> = Vec::new();
        for spec in self.tree.queues() {
            let name = &spec.name;
            let allocated = usage.allocated(name);
            let dominant = dominant_share(&allocated, &self.cluster_total);
            out.push((
                name.clone(),
                QueueStatus::Valid {
                    pending: usage.pending(name),
                    fair_share: fair.get(name).cloned().unwrap_or_default(),
                    dominant_permille: (dominant * 1000.0).round() as i64,
                    allocated,
                },
            ));
        }
        for p in self.tree.problems() {
            out.push((
                p.queue.clone(),
                QueueStatus::Invalid {
                    message: format!("{}: {}", p.field, p.message),
                },
            ));
        }
        for (queue, status) in out {
            if self.queue_status.get(&queue) == Some(&status) {
                continue;
            }
            self.queue_status.insert(queue.clone(), status.clone());
            self.push(Action::QueueStatus { queue, status });
        }
    }

    /// The engine's state in numbers at `now`.
    pub fn gauges(&self, now: i64) -> Gauges {
        let mut g = Gauges::default();
        for gang in self.gangs.gangs() {
            let Ok(min) = self.gangs.min_member(gang) else {
                continue;
            };
            let c = self.gangs.counts(gang);
            if c.scheduled >= min {
                g.gangs_running += 1;
            } else if c.pending + c.gated > 0 {
                g.gangs_waiting += 1;
                if let Some(t) = self.gangs.started(gang) {
                    g.oldest_gang_wait_ms = g.oldest_gang_wait_ms.max(now - t);
                }
            }
        }
        let (a, b, u, f) = self.queue.counts();
        g.pending = [
            ("active", a as i64),
            ("backoff", b as i64),
            ("unschedulable", u as i64),
            ("in_flight", f as i64),
            ("gated", self.gated.len() as i64),
        ];
        g.pending_per_queue = self
            .queue
            .per_queue()
            .map(|(q, n)| (q.clone(), n as i64))
            .collect();
        let usage = self.ledger.usage(&self.tree);
        let fair = self.tree.fair_shares(&usage, &self.cluster_total);
        g.queues = self
            .tree
            .queues()
            .map(|spec| QueueGauge {
                name: spec.name.clone(),
                allocated: usage.allocated(&spec.name),
                guaranteed: spec.guaranteed.clone(),
                fair_share: fair.get(&spec.name).cloned().unwrap_or_default(),
                max: spec.max.clone(),
            })
            .collect();
        let waste = self
            .opts
            .config
            .profile
            .scores
            .iter()
            .find_map(|(s, _)| match s {
                Score::LeastWaste(w) => Some(w),
                _ => None,
            });
        let snap = self.cache.snapshot();
        g.nodes = snap.node_count() as i64;
        for (_, n) in snap.nodes() {
            if n.known && n.allocatable.gpu > 0 {
                let free = (n.allocatable.gpu - n.requested.gpu).max(0);
                if n.requested.gpu == 0 {
                    g.gpus_free_whole += free;
                } else {
                    g.gpus_free_partly += free;
                }
            }
            if !n.known || n.pod_count() == n.system_pods {
                continue;
            }
            let free = n.free();
            g.wasted_memory += free.memory.max(0);
            if let Some(w) = waste
                && let Some(price) = w.price(n)
            {
                g.wasted_cost +=
                    price * w.weigh(&free) as f64 / w.weigh(&n.allocatable).max(1) as f64;
            }
        }
        g
    }
}
