//! Making room by eviction: reclaim (a queue within its guarantee takes back what
//! others borrowed) and priority preemption inside a queue, planned whole units at a
//! time (never half a gang), honouring PodDisruptionBudgets.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::framework::{Outcome, Overlay, schedule_one};
use crate::gang::GangKey;
use crate::model::{PodInfo, PodKey};
use crate::quota::{Candidate, VictimSearch};
use crate::snapshot::Snapshot;
use crate::topology::Within;

use super::{Action, Engine, Eviction, EvictionReason};

/// At most this many other pending pods of a queue share one round of evictions.
const MAX_CLAIMANTS: usize = 32;

/// How long an eviction counts as under way before drover looks again (the pod's
/// grace period may be long).
const EVICTION_HOLD_MS: i64 = 600_000;

impl Engine {
    /// `pod` (alone, or with the rest of its gang in `gang`) fits nowhere: evict so
    /// that it fits. Reclaim when its queue is below its guarantee (whole units of
    /// queues that borrowed beyond theirs); otherwise priority preemption inside its
    /// queue (whole units of lower priority). Nothing is evicted before the pod has
    /// waited `reclaimGraceSeconds`; meanwhile it is retried with backoff. A gang is
    /// planned all or nothing: every member must fit after the evictions.
    pub(super) fn make_room(
        &mut self,
        pod: &Arc<PodInfo>,
        gang: Option<&GangKey>,
        snap: &Snapshot,
        now: i64,
    ) {
        if pod.never_preempts {
            return;
        }
        let queue = self.queue_name(pod);
        // Reclaim needs the queue within its guarantee; preemption, lower-priority
        // pods in the queue. Without either, nothing is looked at.
        let usage = self.ledger.usage(&self.tree);
        let can_reclaim = crate::quota::within_guarantee(&self.tree, &usage, &queue, &pod.requests)
            && self
                .tree
                .queues()
                .any(|q| *q.name != *queue && crate::quota::lends(&usage, q));
        let can_preempt = self
            .ledger
            .lowest_placed_priority(&queue)
            .is_some_and(|p| p < pod.priority);
        if !can_reclaim && !can_preempt {
            return;
        }
        self.evicting
            .retain(|k, e| e.until > now && self.cache.pod(k).is_some());
        self.refused.retain(|_, until| *until > now);
        if !self.evicting.is_empty() {
            // Evictions under way: wait for them (and retry soon).
            self.queue.backoff(&pod.key, now);
            return;
        }
        // A gang's members beyond minMember may go one by one; the rest of it goes
        // whole or not at all.
        let extra = self.gang_extras();
        let unit_of = |p: &PodInfo| -> Arc<str> {
            match GangKey::of(p) {
                Some(g) if !extra.contains(&p.key) => format!("gang/{g}").into(),
                _ => format!("pod/{}", p.key).into(),
            }
        };
        // A unit with a member that refused eviction is left whole (and a gang with
        // any member that refused).
        let blocked: HashSet<Arc<str>> = self
            .refused
            .keys()
            .filter_map(|k| self.cache.pod(k))
            .flat_map(|p| {
                let gang = GangKey::of(p).map(|g| -> Arc<str> { format!("gang/{g}").into() });
                std::iter::once(unit_of(p)).chain(gang)
            })
            .collect();
        let mut candidates: Vec<Candidate> = Vec::new();
        for p in self.cache.pods() {
            if p.node_name.is_none() || p.daemonset || p.deleting || !self.ours(p) {
                continue;
            }
            if !can_reclaim && (p.priority >= pod.priority || self.queue_name(p) != queue) {
                continue;
            }
            let unit = unit_of(p);
            if blocked.contains(&unit) {
                continue;
            }
            let candidate = Candidate {
                pod: p.clone(),
                queue: self.queue_name(p),
                started_ms: self.placed_at.get(&p.key).copied().unwrap_or(p.created_ms),
                unit,
            };
            // A member beyond minMember is its own unit and also part of its gang's:
            // the gang, evicted, goes with every member it has.
            if let Some(g) = GangKey::of(p).filter(|_| extra.contains(&p.key)) {
                candidates.push(Candidate {
                    unit: format!("gang/{g}").into(),
                    ..candidate.clone()
                });
            }
            candidates.push(candidate);
        }
        // Sorted, so that the plan does not depend on hash order.
        candidates.sort_by(|a, b| a.pod.key.cmp(&b.pod.key));
        // Members per unit that each PodDisruptionBudget covers: a unit needing more
        // disruptions than a budget allows now is not a victim (the Eviction API
        // would refuse part of it).
        if !self.pdbs.is_empty() {
            let mut covered: HashMap<(Arc<str>, &str), i32> = HashMap::new();
            for c in &candidates {
                for (name, b) in &self.pdbs {
                    if b.covers(&c.pod) {
                        *covered.entry((c.unit.clone(), name.as_str())).or_default() += 1;
                    }
                }
            }
            let over: HashSet<Arc<str>> = covered
                .iter()
                .filter(|((_, pdb), n)| self.pdbs.get(*pdb).is_some_and(|b| **n > b.allowed))
                .map(|((unit, _), _)| unit.clone())
                .collect();
            candidates.retain(|c| !over.contains(&c.unit));
        }
        if candidates.is_empty() {
            return;
        }
        // The claimants: the gang's pending members (all must fit), or this pod and
        // then every other pending single pod of its queue, so one round of
        // evictions serves them all.
        let all_or_nothing = gang.is_some();
        let claimants: Vec<Arc<PodInfo>> = match gang {
            Some(g) => self.pending_members(g, None),
            None => {
                let mut others: Vec<Arc<PodInfo>> = self
                    .cache
                    .pending_pods()
                    .filter(|p| {
                        p.key != pod.key
                            && self.ours(p)
                            && p.gang.is_none()
                            && !p.never_preempts
                            && self.queue_name(p) == queue
                    })
                    .cloned()
                    .collect();
                others.sort_by(|a, b| {
                    (std::cmp::Reverse(a.priority), a.created_ms, &a.key).cmp(&(
                        std::cmp::Reverse(b.priority),
                        b.created_ms,
                        &b.key,
                    ))
                });
                others.truncate(MAX_CLAIMANTS);
                std::iter::once(pod.clone()).chain(others).collect()
            }
        };
        // A gang that requires a topology level must fit in one domain of it after the
        // evictions: each domain is planned on its own, and the one that evicts the
        // fewest pods wins.
        let level = gang.and_then(|g| {
            let pending = self.pending_members(g, None);
            crate::gang::topology_request(
                self.gangs.group(g),
                &pending,
                &self.opts.config.topology_levels,
            )
            .and_then(Result::ok)
            .filter(|c| c.required)
            .map(|c| c.level)
        });
        let planned = match &level {
            None => self.plan_evictions(
                &claimants,
                &candidates,
                &queue,
                usage,
                snap,
                None,
                all_or_nothing,
                now,
            ),
            Some(l) => crate::topology::domains(snap, l)
                .iter()
                .filter_map(|d| {
                    self.plan_evictions(
                        &claimants,
                        &candidates,
                        &queue,
                        usage.clone(),
                        snap,
                        Some(&d.slots),
                        true,
                        now,
                    )
                })
                .filter(|p| !p.is_empty())
                .min_by_key(|p| p.len()),
        }
        .unwrap_or_default();
        if planned.is_empty() {
            // No eviction makes room any more: a nomination given earlier is void.
            self.nominate(&pod.key, None);
            return;
        }
        // Something can be done: retry soon rather than park, so the grace period
        // is noticed; a gang is decided afresh then.
        if let Some(g) = gang {
            self.gang_tried.remove(g);
        }
        self.queue.backoff(&pod.key, now);
        // A gang's wait is its first member's, whichever member was popped.
        let waiter = match gang {
            Some(_) => claimants.first().map_or(&pod.key, |c| &c.key),
            None => &pod.key,
        };
        let since = *self.waiting_since.entry(waiter.clone()).or_insert(now);
        if now - since < self.opts.config.reclaim_grace_ms {
            return;
        }
        let who = match gang {
            Some(g) => format!("gang {g}"),
            None => format!("pod {}", pod.key),
        };
        tracing::info!(claimant = %who, queue = %queue, victims = planned.len(), "evicting to make room");
        // A single pod whose victims all leave one node is nominated to it, as
        // kube-scheduler does (a gang's members are held by its reservation instead).
        let mut nodes = planned.iter().filter_map(|(v, _)| v.node_name.clone());
        if gang.is_none()
            && let Some(node) = nodes.next()
            && nodes.all(|n| n == node)
        {
            self.nominate(&pod.key, Some(node));
        }
        for (v, reason) in planned {
            let from = self.queue_name(&v);
            let note = match reason {
                EvictionReason::Reclaim => format!(
                    "evicted by drover: queue {queue} reclaims its guarantee (this pod's queue {from} had borrowed beyond its own) for {who}"
                ),
                EvictionReason::Preemption => format!(
                    "evicted by drover: {who} of queue {queue} has a higher priority ({}) than this pod ({})",
                    pod.priority, v.priority
                ),
                EvictionReason::GangRelease => format!("evicted by drover for {who}"),
            };
            self.evicting.insert(
                v.key.clone(),
                Eviction {
                    until: now + EVICTION_HOLD_MS,
                    pod: v.clone(),
                    reason,
                    note,
                    accepted: false,
                },
            );
            self.push(Action::Evict { pod: v, reason });
        }
    }
    /// Gangs that have had some but fewer than minMember members placed for
    /// `gangs.repairSeconds` (a member's bind failed and no node takes it again, a
    /// node was lost, a member was deleted): their placed members are evicted, so the
    /// gang starts again whole instead of holding part of its room forever.
    pub(super) fn release_partial_gangs(&mut self, now: i64) {
        let repair = self.opts.config.gang_repair_ms;
        let gangs: Vec<GangKey> = self.gangs.gangs().cloned().collect();
        let mut partial: HashSet<GangKey> = HashSet::new();
        for g in gangs {
            let Ok(min) = self.gangs.min_member(&g) else {
                continue;
            };
            let c = self.gangs.counts(&g);
            if c.scheduled == 0 || c.scheduled >= min {
                continue;
            }
            partial.insert(g.clone());
            let since = *self.partial_since.entry(g.clone()).or_insert(now);
            if now - since < repair {
                continue;
            }
            let placed: Vec<Arc<PodInfo>> = self
                .gangs
                .members_in(&g, false)
                .iter()
                .filter_map(|k| self.cache.pod(k))
                .filter(|p| p.node_name.is_some() && !p.deleting)
                .cloned()
                .collect();
            // A bind still in flight may complete it; another scheduler's gang is not
            // drover's to release.
            if placed.is_empty()
                || placed.iter().any(|p| {
                    self.cache.is_assumed(&p.key)
                        || !self.ours(p)
                        || self.evicting.contains_key(&p.key)
                })
            {
                continue;
            }
            self.partial_since.remove(&g);
            tracing::warn!(gang = %g, placed = placed.len(), min, "gang stayed partly placed; releasing its placed members");
            for v in placed {
                let note = format!(
                    "evicted by drover: gang {g} had {} of minMember {min} members placed for {}s (gangs.repairSeconds) without being completed; its placed members go so that it starts again whole",
                    c.scheduled,
                    repair / 1000
                );
                self.evicting.insert(
                    v.key.clone(),
                    Eviction {
                        until: now + EVICTION_HOLD_MS,
                        pod: v.clone(),
                        reason: EvictionReason::GangRelease,
                        note,
                        accepted: false,
                    },
                );
                self.push(Action::Evict {
                    pod: v,
                    reason: EvictionReason::GangRelease,
                });
            }
        }
        self.partial_since.retain(|g, _| partial.contains(g));
    }

    /// Plans evictions so that every claimant fits (all of them, or none, when
    /// `all_or_nothing`), on the nodes in `within` only when given. Returns the victims
    /// with why, or `None` when an all-or-nothing set would not fit whole.
    #[allow(clippy::too_many_arguments)]
    fn plan_evictions(
        &self,
        claimants: &[Arc<PodInfo>],
        candidates: &[Candidate],
        queue: &Arc<str>,
        mut usage: crate::quota::Usage,
        snap: &Snapshot,
        within: Option<&[usize]>,
        all_or_nothing: bool,
        now: i64,
    ) -> Option<Vec<(Arc<PodInfo>, EvictionReason)>> {
        let extra = self.gang_extras();
        let profile = &self.opts.config.profile;
        let mut overlay = Overlay::new(snap);
        let mut planned: Vec<(Arc<PodInfo>, EvictionReason)> = Vec::new();
        // Every slot, or the domain's.
        let all: Vec<usize>;
        let slots: &[usize] = match within {
            Some(s) => s,
            None => {
                all = (0..snap.slots()).collect();
                &all
            }
        };
        for claimant in claimants {
            let view = Within {
                overlay: &overlay,
                slots,
            };
            if let Outcome::Placed(p) = schedule_one(profile, claimant, &view) {
                // Room already planned (or free).
                let slot = slots[p.slot];
                overlay.place(slot, claimant.clone());
                usage.charge(&self.tree, queue, &claimant.requests);
                continue;
            }
            let left: Vec<Candidate> = candidates
                .iter()
                .filter(|c| !planned.iter().any(|(v, _)| v.key == c.pod.key))
                .cloned()
                .collect();
            let search = VictimSearch {
                tree: &self.tree,
                usage: &usage,
                profile,
                candidates: &left,
                now_ms: now,
                min_runtime_ms: self.opts.config.min_runtime_ms,
            };
            let view = Within {
                overlay: &overlay,
                slots,
            };
            let found = search
                .reclaim(queue, claimant, &view)
                .map(|v| (v, EvictionReason::Reclaim))
                .or_else(|| {
                    search
                        .preempt(queue, claimant, &view)
                        .map(|v| (v, EvictionReason::Preemption))
                });
            let Some(((mut victims, node), reason)) = found else {
                if all_or_nothing {
                    return None; // a set that would still not fit whole: evict nothing
                }
                continue;
            };
            // A gang that loses a member within minMember goes whole: its members
            // beyond minMember go with it.
            let broken: HashSet<GangKey> = victims
                .iter()
                .filter(|v| !extra.contains(&v.key))
                .filter_map(|v| GangKey::of(v))
                .collect();
            if !broken.is_empty() {
                let mut rest: Vec<Arc<PodInfo>> = self
                    .cache
                    .pods()
                    .filter(|p| {
                        p.node_name.is_some()
                            && GangKey::of(p).is_some_and(|g| broken.contains(&g))
                            && !victims.iter().any(|v| v.key == p.key)
                            && !planned.iter().any(|(v, _)| v.key == p.key)
                    })
                    .cloned()
                    .collect();
                rest.sort_by(|a, b| a.key.cmp(&b.key));
                victims.extend(rest);
            }
            for v in &victims {
                if let Some(s) = v.node_name.as_deref().and_then(|n| snap.slot_of(n)) {
                    overlay.remove(s, &v.key);
                }
                usage.discharge(&self.tree, &self.queue_name(v), &v.requests);
            }
            if let Some(s) = snap.slot_of(&node) {
                overlay.place(s, claimant.clone());
            }
            usage.charge(&self.tree, queue, &claimant.requests);
            planned.extend(victims.into_iter().map(|v| (v, reason)));
        }
        Some(planned)
    }

    /// Gang members beyond minMember (the ones placed last): each may be evicted on
    /// its own, the gang keeps running without it.
    fn gang_extras(&self) -> HashSet<PodKey> {
        let mut by_gang: HashMap<GangKey, Vec<(i64, PodKey)>> = HashMap::new();
        for p in self.cache.pods() {
            if p.node_name.is_some()
                && !p.deleting
                && let Some(g) = GangKey::of(p)
            {
                let at = self.placed_at.get(&p.key).copied().unwrap_or(p.created_ms);
                by_gang.entry(g).or_default().push((at, p.key.clone()));
            }
        }
        let mut extra = HashSet::new();
        for (g, mut members) in by_gang {
            let Ok(min) = self.gangs.min_member(&g) else {
                continue;
            };
            members.sort_by(|a, b| b.cmp(a));
            let beyond = members.len().saturating_sub(min);
            extra.extend(members.into_iter().take(beyond).map(|(_, k)| k));
        }
        extra
    }
}
