//! What the engine holds about one pod, and what it would do with it now: the answer
//! `drover explain` gets from the leading scheduler, so that the two never disagree
//! (reservations, gang attempts, queue admission and backoff live only here).

use std::sync::Arc;

use serde::Serialize;

use crate::framework::{Outcome, schedule_one};
use crate::gang::{GangDecision, GangKey};
use crate::model::PodKey;
use crate::queue::Spot;

use super::Engine;

/// One pod as the engine sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DecisionState {
    /// `namespace/name`.
    pub pod: String,
    /// Whether this engine leads (only a leader's answer is the scheduler's).
    pub leading: bool,
    /// Whether the engine's cache holds the pod at all.
    pub known: bool,
    /// Its node, when bound (or being bound: then `assumed` is true).
    pub node: Option<String>,
    /// True while drover's bind of it is under way, or its gang's plan holds it.
    pub assumed: bool,
    /// Where it is in the scheduling queue.
    pub queue: Option<Spot>,
    /// Its fair-share queue.
    pub fair_share_queue: Option<String>,
    /// The message it was last given (its condition and Event).
    pub told: Option<String>,
    /// Its gang, if any.
    pub gang: Option<String>,
    /// Capacity held for gangs: gang → the nodes it is held on.
    pub reservations: Vec<(String, Vec<String>)>,
    /// What the engine would do with it now, on its current snapshot.
    pub now: String,
}

impl Engine {
    /// The engine's state for `key` and what it would do with the pod now (nothing
    /// changes: no decision is recorded, no action is queued).
    pub fn decision_state(&mut self, key: &PodKey, now: i64) -> DecisionState {
        self.now = now;
        let pod = self.cache.pod(key).cloned();
        let snap = self.cache.snapshot();
        let mut reservations: Vec<(String, Vec<String>)> = self
            .reservations
            .keys()
            .map(|g| {
                let nodes = snap
                    .nodes()
                    .filter(|(_, n)| {
                        n.reservation
                            .as_ref()
                            .is_some_and(|r| r.gang == g.name && r.namespace == g.namespace)
                    })
                    .map(|(_, n)| n.name.to_string())
                    .collect();
                (g.to_string(), nodes)
            })
            .collect();
        reservations.sort();
        let Some(pod) = pod else {
            return DecisionState {
                pod: key.to_string(),
                leading: self.leading,
                known: false,
                node: None,
                assumed: false,
                queue: None,
                fair_share_queue: None,
                told: None,
                gang: None,
                reservations,
                now: "drover's cache does not hold this pod".into(),
            };
        };
        let verdict = self.verdict_now(&pod, &snap);
        DecisionState {
            pod: key.to_string(),
            leading: self.leading,
            known: true,
            node: pod.node_name.as_deref().map(str::to_string),
            assumed: self.cache.is_assumed(key),
            queue: self.queue.spot(key),
            fair_share_queue: self
                .quotas_active
                .then(|| self.queue_name(&pod).to_string()),
            told: self.last_message.get(key).cloned(),
            gang: GangKey::of(&pod).map(|g| g.to_string()),
            reservations,
            now: verdict,
        }
    }

    fn verdict_now(
        &self,
        pod: &Arc<crate::model::PodInfo>,
        snap: &crate::snapshot::Snapshot,
    ) -> String {
        if let Some(node) = &pod.node_name {
            return if self.cache.is_assumed(&pod.key) {
                format!("being bound to {node}")
            } else {
                format!("bound to {node}")
            };
        }
        if !self.ours(pod) {
            return format!(
                "not drover's: its schedulerName is {:?}",
                pod.scheduler_name
            );
        }
        let profile = &self.opts.config.profile;
        if let Some(g) = GangKey::of(pod) {
            if let Some(conflict) = pod.gang.as_ref().and_then(|r| r.conflict.clone()) {
                return format!("waits: pod {}: {conflict}", pod.key);
            }
            let min = match self.gangs.min_member(&g) {
                Ok(m) => m,
                Err(problem) => return format!("waits: {}", problem.message(&g)),
            };
            let counts = self.gangs.counts(&g);
            if counts.scheduled < min {
                if let Some(message) = self.gangs.gated_wait(&g, min) {
                    return format!("waits: {message}");
                }
                let decided = match self.decide_gang(&g, min, counts.scheduled) {
                    Ok(d) => d,
                    Err(held) => return format!("waits: {}", held.message),
                };
                return match decided.decision {
                    GangDecision::Running => "its gang runs: it goes on its own".into(),
                    GangDecision::Wait(m) => format!("waits: {m}"),
                    GangDecision::NoFit { message, .. } if self.reservations.contains_key(&g) => {
                        format!(
                            "waits: {}; capacity is held for it meanwhile",
                            message.trim_end_matches('.')
                        )
                    }
                    GangDecision::NoFit { message, .. } => format!("waits: {message}"),
                    GangDecision::Placed { placed, .. } => format!(
                        "its gang would be placed now, all {} pending members together",
                        placed.len()
                    ),
                };
            }
        }
        if let Some(why) = self.quota_refusal(&self.queue_name(pod), &pod.requests) {
            return format!("waits: pod {}: {why}", pod.key);
        }
        match schedule_one(profile, pod, snap) {
            Outcome::Placed(p) => format!("a node would take it now: {}", p.node),
            Outcome::Unschedulable(d) => format!("waits: {}", d.message()),
        }
    }
}
