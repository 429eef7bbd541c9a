//! One scheduling decision: the next unit from the queue (fair share, then priority,
//! then age), a single pod or a whole gang, placed over one snapshot or parked with
//! its reason; reservation for a blocked gang and repair after a failed bind.

use std::sync::Arc;

use crate::framework::{Outcome, same_question, schedule_one};
use crate::gang::{self, GangDecision, GangKey, MemberState};
use crate::model::{PodInfo, Resources, VolumeChoice};
use crate::plugins::volume;

use super::{Action, Engine, EventObject, InFlight};

/// What came of looking at a gang before any node.
pub(super) enum GangStep {
    /// At least minMember members are on nodes: this member goes on its own.
    Runs,
    /// The gang was handled (placed, or its members wait).
    Done,
}

/// A gang decided by [`Engine::decide_gang`].
pub(super) struct Decided {
    /// The decision.
    pub decision: GangDecision,
    /// Every pending member, before quota cut them to the ones the gang needs.
    pub all: Vec<Arc<PodInfo>>,
    /// The topology it was placed under, if it asks for one.
    pub topology: Option<crate::topology::Constraint>,
    /// The snapshot it was decided on.
    pub snap: crate::snapshot::Snapshot,
}

/// Why a gang was not decided: its queue's quota (`quota`) or its topology request,
/// and the members to tell.
pub(super) struct Held {
    /// Why.
    pub message: String,
    /// The members that hear it.
    pub members: Vec<Arc<PodInfo>>,
    /// The quota held it (else its topology request).
    pub quota: bool,
}

impl Engine {
    /// Schedules one unit if one is ready. Returns false when none was.
    pub(super) fn schedule_next(&mut self, now: i64) -> bool {
        let usage = self.ledger.usage(&self.tree);
        let (tree, cluster) = (&self.tree, &self.cluster_total);
        let fair = tree.fair_shares(&usage, cluster);
        let Some(pod) = self
            .queue
            .pop(now, |q| tree.order_key(&usage, &fair, cluster, q))
        else {
            return false;
        };
        // The queue may hold a pod the watch has since bound or removed.
        let current = self.cache.pod(&pod.key).cloned();
        if current
            .as_ref()
            .is_none_or(|c| c.node_name.is_some() || c.uid != pod.uid)
            || self.cache.is_assumed(&pod.key)
            || self.conflicted.get(&pod.key) == Some(&pod.uid)
        {
            self.queue.remove(&pod.key);
            return true;
        }
        if let Some(g) = &pod.gang {
            if let Some(conflict) = g.conflict.clone() {
                self.wait(&pod, &format!("pod {}: {conflict}", pod.key), now);
                return true;
            }
            let gang = GangKey::of(&pod).expect("names a gang");
            if let GangStep::Done = self.schedule_gang(&gang, &pod, now) {
                return true;
            }
        }
        if let Some(why) = self.quota_refusal(&self.queue_name(&pod), &pod.requests) {
            self.stats.unschedulable += 1;
            self.wait(&pod, &format!("pod {}: {why}", pod.key), now);
            return true;
        }
        let snap = self.cache.snapshot();
        // An identical pod already failed on this very snapshot: same answer.
        if self.memo.generation != snap.generation {
            self.memo.generation = snap.generation;
            self.memo.failed.clear();
        }
        let remembered = self
            .memo
            .failed
            .iter()
            .find(|(p, _)| same_question(p, &pod, &snap))
            .map(|(_, d)| d.clone());
        let outcome = match remembered {
            Some(d) => Outcome::Unschedulable(d),
            None => {
                self.stats.decisions += 1;
                schedule_one(&self.opts.config.profile, &pod, &snap)
            }
        };
        match outcome {
            Outcome::Placed(p) => {
                tracing::debug!(pod = %pod.key, node = %p.node, score = p.score, feasible = p.feasible, "placed");
                self.place(pod, p.node);
            }
            Outcome::Unschedulable(d) => {
                self.stats.unschedulable += 1;
                let mut message = d.message();
                if let Some(never) = crate::framework::beyond_every_node(&pod, &snap) {
                    message.push(' ');
                    message.push_str(&never);
                }
                self.wait(&pod, &message, now);
                if self.memo.failed.len() < 64
                    && !self
                        .memo
                        .failed
                        .iter()
                        .any(|(p, _)| same_question(p, &pod, &snap))
                {
                    self.memo.failed.push((pod.clone(), d));
                }
                self.make_room(&pod, None, &snap, now);
            }
        }
        true
    }

    /// Counts `pod` on `node` and hands out its bind, with what binding its waiting
    /// claims takes there.
    fn place(&mut self, pod: Arc<PodInfo>, node: Arc<str>) {
        let volumes = match self.volume_choices(&pod, &node) {
            Ok(v) => v,
            Err(why) => {
                // Another pod was promised the volume since the decision (a member of
                // the same gang): decided again from the next snapshot.
                let message = format!("0/1 nodes are available: 1 {why} on {node}");
                self.wait(&pod, &message, self.now);
                return;
            }
        };
        self.cache.assume_volumes(&volumes);
        self.cache.assume(&pod, &node);
        if pod.gang.is_some() {
            self.gangs
                .observe(&pod, MemberState::Assigned { running: false });
        }
        self.ledger
            .set(&pod.key, Some(self.contribution(&pod, true)));
        self.in_flight.insert(
            pod.key.clone(),
            InFlight {
                pod: pod.clone(),
                node: node.clone(),
                volumes: volumes.clone(),
            },
        );
        self.push(Action::Bind { pod, node, volumes });
    }

    /// What binding `pod`'s waiting claims takes on `node` (nothing for a pod without
    /// claims), over the newest volumes: a volume promised since the decision is not
    /// offered twice.
    fn volume_choices(
        &self,
        pod: &PodInfo,
        node: &str,
    ) -> Result<Arc<[VolumeChoice]>, crate::plugins::Reason> {
        if pod.claims.is_none() {
            return Ok(Arc::from([]));
        }
        let Some(info) = self.cache.node(node) else {
            return Ok(Arc::from([]));
        };
        let state = volume::State::new(pod, Some(self.cache.volumes()), &mut |_| false)
            .expect("the pod has claims");
        Ok(state.choose(pod, info)?.into())
    }

    /// Parks a pending pod as unschedulable with `message`, handing out the condition
    /// and a `FailedScheduling` Event when the message is new for it.
    pub(super) fn wait(&mut self, pod: &Arc<PodInfo>, message: &str, now: i64) {
        self.queue.unschedulable(&pod.key, now);
        self.say_unschedulable(pod, message);
    }

    /// Hands out the pod's Unschedulable condition and a `FailedScheduling` Event with
    /// `message`, when the message is new for it.
    pub(super) fn say_unschedulable(&mut self, pod: &Arc<PodInfo>, message: &str) {
        if self.last_message.get(&pod.key).map(String::as_str) != Some(message) {
            tracing::info!(pod = %pod.key, %message, "unschedulable");
            self.last_message
                .insert(pod.key.clone(), message.to_string());
            if self.writes() {
                self.push(Action::Unschedulable {
                    pod: pod.key.clone(),
                    message: message.to_string(),
                });
            }
            self.event(
                EventObject::Pod(pod.clone()),
                true,
                "FailedScheduling",
                message.to_string(),
            );
        }
    }

    fn wait_all(&mut self, pending: &[Arc<PodInfo>], pod: &Arc<PodInfo>, message: &str, now: i64) {
        for p in pending {
            self.wait(p, message, now);
        }
        self.wait(pod, message, now);
    }

    /// The gang's pending members that drover can place: current, unbound, not
    /// assumed, its own (of `scheduler` when given), oldest first.
    pub(super) fn pending_members(
        &self,
        gang: &GangKey,
        scheduler: Option<&str>,
    ) -> Vec<Arc<PodInfo>> {
        let mut v: Vec<Arc<PodInfo>> = self
            .gangs
            .members_in(gang, true)
            .iter()
            .filter_map(|k| self.cache.pod(k))
            .filter(|p| p.node_name.is_none() && !p.deleting && self.ours(p))
            .filter(|p| scheduler.is_none_or(|s| *p.scheduler_name == *s))
            .filter(|p| !self.cache.is_assumed(&p.key))
            .filter(|p| self.conflicted.get(&p.key) != Some(&p.uid))
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.created_ms, &a.key).cmp(&(b.created_ms, &b.key)));
        // A gang partly placed (a bind failed, a node went) is completed ahead of
        // capacity held for other gangs: its placed members are idle until it is whole.
        let scheduled = self.gangs.counts(gang).scheduled;
        if scheduled > 0 && self.gangs.min_member(gang).is_ok_and(|m| scheduled < m) {
            for p in &mut v {
                let mut completing = PodInfo::clone(p);
                completing.completes_gang = true;
                *p = Arc::new(completing);
            }
        }
        v
    }

    /// For a level the gang requires: the domain its placed members already hold, so
    /// that members placed again (after a failed bind or a lost node) join them.
    pub(super) fn hold_domain(
        &self,
        gang: &GangKey,
        topology: Option<crate::topology::Constraint>,
        snap: &crate::snapshot::Snapshot,
    ) -> Option<crate::topology::Constraint> {
        let mut c = topology?;
        if c.required {
            c.within = self
                .gangs
                .members_in(gang, false)
                .iter()
                .filter_map(|k| self.cache.pod(k))
                .filter(|p| !p.deleting)
                .filter_map(|p| snap.slot_of(p.node_name.as_deref()?))
                .filter_map(|s| snap.slot(s))
                .map(|n| crate::topology::domain_of(n, &c.level))
                .min();
        }
        Some(c)
    }

    /// A gang's decision over the current snapshot, once its size allows an attempt,
    /// without side effects: the scheduling cycle and `drover explain`'s question to the
    /// engine both ask it, so the two never disagree.
    pub(super) fn decide_gang(
        &self,
        gang: &GangKey,
        min: usize,
        scheduled: usize,
    ) -> Result<Decided, Held> {
        let mut pending = self.pending_members(gang, None);
        // Quota may cut `pending` to the members the gang needs; every pending member
        // still hears why it waits.
        let all = pending.clone();
        if let Err(message) = self.gang_quota(gang, min, scheduled, &mut pending) {
            return Err(Held {
                message,
                members: pending,
                quota: true,
            });
        }
        let topology = match gang::topology_request(
            self.gangs.group(gang),
            &pending,
            &self.opts.config.topology_levels,
        ) {
            Some(Err(problem)) => {
                return Err(Held {
                    message: format!("gang {gang}: {problem}"),
                    members: pending,
                    quota: false,
                });
            }
            Some(Ok(c)) => Some(c),
            None => None,
        };
        let snap = self.cache.snapshot();
        let topology = self.hold_domain(gang, topology, &snap);
        let min_resources = self.gangs.group(gang).map(|g| g.min_resources.clone());
        let decision = gang::decide(
            &self.opts.config.profile,
            gang,
            min,
            min_resources.as_ref(),
            topology.as_ref(),
            &pending,
            scheduled,
            &snap,
        );
        Ok(Decided {
            decision,
            all,
            topology,
            snap,
        })
    }

    /// Decides `pod`'s gang all together.
    fn schedule_gang(&mut self, gang: &GangKey, pod: &Arc<PodInfo>, now: i64) -> GangStep {
        let min = match self.gangs.min_member(gang) {
            Ok(m) => m,
            Err(problem) => {
                let message = problem.message(gang);
                let pending = self.pending_members(gang, None);
                self.wait_all(&pending, pod, &message, now);
                return GangStep::Done;
            }
        };
        let counts = self.gangs.counts(gang);
        if counts.scheduled >= min {
            return GangStep::Runs;
        }
        if let Some(message) = self.gangs.gated_wait(gang, min) {
            let pending = self.pending_members(gang, None);
            self.wait_all(&pending, pod, &message, now);
            return GangStep::Done;
        }
        if self.gang_tried.get(gang) == Some(&self.cache.generation()) {
            // Nothing changed since this gang last failed: do not decide it again.
            self.queue.hold(&pod.key, now);
            return GangStep::Done;
        }
        let Decided {
            decision,
            all,
            topology,
            snap,
        } = match self.decide_gang(gang, min, counts.scheduled) {
            Ok(d) => d,
            Err(held) => {
                self.wait_all(&held.members, pod, &held.message, now);
                if held.quota {
                    self.gang_tried
                        .insert(gang.clone(), self.cache.generation());
                }
                return GangStep::Done;
            }
        };
        self.stats.decisions += 1;
        match decision {
            GangDecision::Running => GangStep::Runs,
            GangDecision::Wait(message) if gang::is_short_of_members(gang, &message) => {
                // Only the count changed for members already told that the gang waits
                // for its pods: telling each of them again on every arrival would cost
                // the API server a write per member per member. The pod being decided
                // hears the current count.
                for p in all.iter().filter(|p| p.key != pod.key) {
                    let told = self
                        .last_message
                        .get(&p.key)
                        .is_some_and(|m| gang::is_short_of_members(gang, m));
                    if told {
                        self.queue.unschedulable(&p.key, now);
                    } else {
                        self.wait(p, &message, now);
                    }
                }
                self.wait(pod, &message, now);
                self.gang_tried
                    .insert(gang.clone(), self.cache.generation());
                GangStep::Done
            }
            GangDecision::Wait(message) => {
                // Every member exists (minResources not free, or more than all nodes
                // hold): an attempt, which the gang's schedule timeout counts from.
                self.gangs.attempted(gang, now);
                self.stats.unschedulable += 1;
                self.wait_all(&all, pod, &message, now);
                self.gang_tried
                    .insert(gang.clone(), self.cache.generation());
                GangStep::Done
            }
            GangDecision::NoFit { message, tried } => {
                self.gangs.attempted(gang, now);
                self.stats.unschedulable += 1;
                for p in &all {
                    self.wait(p, &message, now);
                }
                // A gang that requires a level holds capacity inside one domain of it.
                let required = topology.as_ref().filter(|c| c.required);
                self.reserve_for(gang, &tried, required.map(|c| &*c.level), now);
                self.gang_tried
                    .insert(gang.clone(), self.cache.generation());
                self.make_room(pod, Some(gang), &snap, now);
                GangStep::Done
            }
            GangDecision::Placed { placed, where_ } => {
                tracing::info!(gang = %gang, members = placed.len(), "gang placed");
                if let (Some(where_), Some(c)) = (where_, &topology) {
                    let mut total = Resources::default();
                    for (m, _, _) in &placed {
                        total.add(&m.requests);
                    }
                    let note = format!(
                        "gang {gang}: {} members ({total}) in {where_}, {} level {}",
                        placed.len(),
                        if c.required { "required" } else { "preferred" },
                        c.level
                    );
                    let first = placed[0].0.clone();
                    self.event(EventObject::Pod(first), false, "GangPlaced", note.clone());
                    if let Some(g) = self.gangs.group(gang).cloned() {
                        self.event(EventObject::PodGroup(g), false, "GangPlaced", note);
                    }
                }
                self.stats.gangs_placed += 1;
                let first = self.gangs.attempted(gang, now);
                self.stats.gang_waits_ms.push((now - first).max(0));
                self.release_reservation(gang, now);
                self.gang_tried.remove(gang);
                let left: Vec<Arc<PodInfo>> = all
                    .iter()
                    .filter(|p| !placed.iter().any(|(m, _, _)| m.key == p.key))
                    .cloned()
                    .collect();
                // In the order the decision placed them: the volumes each member's
                // claims bind are then the ones the decision promised it.
                let mut placed = placed;
                placed.sort_by(|(a, _, _), (b, _, _)| gang::placement_cmp(a, b));
                for (member, _, node) in placed {
                    self.queue.take(&member.key, now);
                    self.place(member, node);
                }
                // Members beyond the ones placed (the gang needed fewer, or quota cut
                // them) are tried again one by one once the gang runs.
                for p in left {
                    self.queue.backoff(&p.key, now);
                }
                if !self.in_flight.contains_key(&pod.key) {
                    self.queue.backoff(&pod.key, now);
                }
                GangStep::Done
            }
        }
    }

    /// Quota for a gang: the whole set of pending members must fit the queue's max;
    /// failing that, exactly the members the gang still needs (`pending` is cut to
    /// them); failing that, the message it waits with.
    pub(super) fn gang_quota(
        &self,
        gang: &GangKey,
        min: usize,
        scheduled: usize,
        pending: &mut Vec<Arc<PodInfo>>,
    ) -> Result<(), String> {
        let Some(first) = pending.first() else {
            return Ok(());
        };
        let queue = self.queue_name(first);
        let needed = min.saturating_sub(scheduled).min(pending.len());
        let sum = |ps: &[Arc<PodInfo>]| {
            let mut r = Resources::default();
            for p in ps {
                r.add(&p.requests);
            }
            r
        };
        if self.quota_refusal(&queue, &sum(pending)).is_some() {
            if let Some(why) = self.quota_refusal(&queue, &sum(&pending[..needed])) {
                return Err(format!("gang {gang}: {why}"));
            }
            pending.truncate(needed);
        }
        Ok(())
    }

    /// Holds capacity for a blocked gang, on nodes no other gang holds, so that small
    /// pods cannot starve it (at most `gangs.maxReservations` gangs at once; a hold that
    /// ran out is planned afresh); inside one domain of `level` when the gang requires
    /// one.
    fn reserve_for(
        &mut self,
        gang: &GangKey,
        members: &[Arc<PodInfo>],
        level: Option<&str>,
        now: i64,
    ) {
        let Some(hold_ms) = self.opts.config.gang_reservation_ms else {
            return;
        };
        match self.reservations.get(gang) {
            // Held and not run out: it stands.
            Some(until) if *until > now => return,
            // Run out: planned afresh below.
            Some(_) => {}
            None if self.reservations.len() >= self.opts.config.max_reservations => return,
            None => {}
        }
        let snap = self.cache.snapshot();
        let profile = &self.opts.config.profile;
        let plan = match level {
            Some(l) => gang::plan_reservation_in_domain(profile, members, &snap, l),
            None => gang::plan_reservation(profile, members, &snap),
        };
        let Some(plan) = plan else {
            tracing::info!(gang = %gang, "gang does not fit even on drained nodes; nothing reserved");
            return;
        };
        let priority = members.iter().map(|m| m.priority).max().unwrap_or(0);
        self.cache
            .reserve(&gang.namespace, &gang.name, priority, &plan);
        self.reservations.insert(gang.clone(), now + hold_ms);
        let nodes: Vec<String> = plan
            .keys()
            .filter_map(|s| snap.slot(*s).map(|n| n.name.to_string()))
            .collect();
        let note = format!(
            "holding capacity on {} node(s) for gang {gang} for up to {}s while they drain; smaller pods use only what the gang does not need: {}",
            nodes.len(),
            hold_ms / 1000,
            nodes.join(", ")
        );
        tracing::info!(gang = %gang, %note, "reserved");
        if let Some(group) = self.gangs.group(gang).cloned() {
            self.event(EventObject::PodGroup(group), false, "Reserved", note);
        }
    }

    /// A gang member's bind failed after its gang was placed: place it again ahead
    /// of other work (after a short backoff once it has failed a few times).
    pub(super) fn repair_gang(
        &mut self,
        gang: &GangKey,
        pod: &Arc<PodInfo>,
        node: &str,
        why: &str,
        now: i64,
    ) {
        let failures = self.bind_failures.entry(pod.key.clone()).or_default();
        *failures += 1;
        if *failures <= 3 {
            self.queue.urgent(&pod.key);
        } else {
            self.queue.backoff(&pod.key, now);
        }
        let counts = self.gangs.counts(gang);
        let note = format!(
            "gang {gang}: binding {} to {node} failed ({why}); {} member(s) bound or binding, placing it again ahead of other work",
            pod.key, counts.scheduled
        );
        tracing::warn!(%note, "gang repair");
        self.stats.gang_repairs += 1;
        self.event(
            EventObject::Pod(pod.clone()),
            true,
            "GangRepair",
            note.clone(),
        );
        if let Some(g) = self.gangs.group(gang).cloned() {
            self.event(EventObject::PodGroup(g), true, "GangRepair", note);
        }
    }
}
