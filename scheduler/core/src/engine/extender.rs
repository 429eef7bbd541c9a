//! The extender's questions, answered from the same state: before kube-scheduler's
//! candidates are filtered, what drover decided for the pod — its gang, planned all
//! together and held in the cache as assumptions until each member is seen bound (or
//! the plan lapses), and its queue's admission.

use std::sync::Arc;

use crate::gang::{self, GangDecision, GangKey, MemberState};
use crate::model::{PodInfo, PodKey};

use super::{Engine, Mode};

/// What drover decided for a pod before any node is looked at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every node fails with this message; preemption would not help.
    Hold(String),
    /// Every node fails: the gang waits for members. Its change counter when decided,
    /// and when it last changed (a member the watch has not delivered yet may be
    /// about to arrive).
    HoldForMembers {
        /// Why.
        message: String,
        /// The gang.
        gang: GangKey,
        /// Its change counter and the time of its last change.
        version: (u64, i64),
    },
    /// A gang member that goes to exactly this node (planned with its gang).
    Planned {
        /// The gang.
        gang: GangKey,
        /// The member's node.
        node: Arc<str>,
    },
    /// drover has not seen this pod (with this UID) yet; it may be on its way.
    Unknown,
    /// Run the filters; the pod is within its queue.
    Filter,
}

impl Engine {
    fn extender_ttls(&self) -> (i64, i64) {
        match self.opts.mode {
            Mode::Extender {
                plan_ttl_ms,
                admission_ttl_ms,
            } => (plan_ttl_ms, admission_ttl_ms),
            Mode::Scheduler => (60_000, 30_000),
        }
    }

    /// The gang's change counter and when it last changed: a member arrived, left or
    /// changed state, or its PodGroup changed.
    pub fn gang_version(&self, gang: &GangKey) -> (u64, i64) {
        self.gang_versions.get(gang).copied().unwrap_or((0, 0))
    }

    /// The node drover holds for `key` as part of its gang's plan, if any.
    pub fn planned_node(&self, key: &PodKey) -> Option<Arc<str>> {
        if !self.cache.is_assumed(key) {
            return None;
        }
        self.cache.pod(key)?.node_name.clone()
    }

    /// What drover decided for `pod`, which kube-scheduler asks about; `pod` is the
    /// request's copy. A gang is decided all together when its first member asks:
    /// every member is assumed on its node until the watch shows it bound or the plan
    /// lapses, so no other pod takes a member's place meanwhile.
    pub fn extender_verdict(&mut self, pod: &PodInfo, now: i64) -> Verdict {
        self.now = now;
        let known = self
            .cache
            .pod(&pod.key)
            // The request's UID must be the cached pod's: a call naming a pod by its
            // key alone is not that pod.
            .filter(|p| p.uid == pod.uid)
            .cloned();
        if let Some(g) = &pod.gang {
            if let Some(conflict) = &g.conflict {
                return Verdict::Hold(format!("pod {}: {conflict}", pod.key));
            }
            let Some(current) = known.clone() else {
                return Verdict::Unknown;
            };
            let gang = GangKey::of(pod).expect("the pod names a gang");
            if let Some(node) = self.planned_node(&pod.key) {
                return Verdict::Planned { gang, node };
            }
            // None: the gang runs, and members beyond minMember go one by one.
            if let Some(v) = self.decide_for_extender(&gang, &current, now) {
                return v;
            }
        }
        let queue = self.queue_name(pod);
        if let Some(why) = self.quota_refusal(&queue, &pod.requests) {
            return Verdict::Hold(format!("pod {}: {why}", pod.key));
        }
        if self.quotas_active && known.is_none() {
            // Admission counts only pods drover holds: a request for a pod that does
            // not exist must not take a real pod's room in its queue.
            return Verdict::Unknown;
        }
        Verdict::Filter
    }

    /// The pod passed filter on some node: it counts against its queue until the
    /// watch shows it bound, or for the admission TTL. Only the cached pod with the
    /// request's UID counts; a request for any other pod admits nothing.
    pub fn admit(&mut self, request: &PodInfo, now: i64) {
        if !self.quotas_active {
            return;
        }
        let key = &request.key;
        let Some(pod) = self
            .cache
            .pod(key)
            .filter(|p| p.uid == request.uid)
            .cloned()
        else {
            return;
        };
        if pod.node_name.is_some() {
            return;
        }
        let (_, ttl) = self.extender_ttls();
        self.admitted.insert(key.clone(), now + ttl);
        self.ledger.set(key, Some(self.contribution(&pod, true)));
    }

    /// kube-scheduler was told that `member` passes on its planned node: it binds it
    /// there, so the member keeps that node even if the rest of the plan is dropped.
    pub fn hand_over(&mut self, member: &PodKey) {
        if self.cache.is_assumed(member) {
            self.handed.insert(member.clone());
        }
    }

    /// The planned node of `member` cannot take it any more (kube-scheduler did not
    /// offer it, or it no longer fits): the gang's plan is dropped — every member not
    /// yet bound, and not already passed to kube-scheduler on its node, is pending
    /// again — so the gang is decided afresh.
    pub fn drop_plan(&mut self, member: &PodKey, now: i64) {
        self.now = now;
        let Some(gang) = self.gangs.gang_of(member).cloned() else {
            return;
        };
        self.handed.remove(member);
        for k in self.gangs.members_in(&gang, false) {
            if self.cache.is_assumed(&k) && !self.handed.contains(&k) {
                self.unassume(&k);
            }
        }
        self.gang_tried.remove(&gang);
        self.bump(&gang, now);
    }

    fn decide_for_extender(
        &mut self,
        gang: &GangKey,
        pod: &Arc<PodInfo>,
        now: i64,
    ) -> Option<Verdict> {
        let min = match self.gangs.min_member(gang) {
            Ok(m) => m,
            Err(problem) => return Some(Verdict::Hold(problem.message(gang))),
        };
        let counts = self.gangs.counts(gang);
        if counts.scheduled >= min {
            return None;
        }
        if let Some(message) = self.gangs.gated_wait(gang, min) {
            // Lifting a gate changes the gang's version: it is decided again then.
            return Some(Verdict::HoldForMembers {
                message,
                gang: gang.clone(),
                version: self.gang_version(gang),
            });
        }
        let mut pending = self.pending_members(gang, Some(&pod.scheduler_name));
        if let Err(message) = self.gang_quota(gang, min, counts.scheduled, &mut pending) {
            return Some(Verdict::Hold(message));
        }
        let topology = match gang::topology_request(
            self.gangs.group(gang),
            &pending,
            &self.opts.config.topology_levels,
        ) {
            Some(Err(problem)) => return Some(Verdict::Hold(format!("gang {gang}: {problem}"))),
            Some(Ok(c)) => Some(c),
            None => None,
        };
        let min_resources = self.gangs.group(gang).map(|g| g.min_resources.clone());
        let snap = self.cache.snapshot();
        let topology = self.hold_domain(gang, topology, &snap);
        self.stats.decisions += 1;
        let decision = gang::decide(
            &self.opts.config.profile,
            gang,
            min,
            min_resources.as_ref(),
            topology.as_ref(),
            &pending,
            counts.scheduled,
            &snap,
        );
        match decision {
            GangDecision::Running => None,
            GangDecision::Wait(message) if pending.len() < min - counts.scheduled => {
                tracing::debug!(%gang, %message, "gang waits for members");
                Some(Verdict::HoldForMembers {
                    message,
                    gang: gang.clone(),
                    version: self.gang_version(gang),
                })
            }
            GangDecision::Wait(message) | GangDecision::NoFit { message, .. } => {
                tracing::debug!(%gang, %message, "gang held");
                self.stats.unschedulable += 1;
                Some(Verdict::Hold(message))
            }
            GangDecision::Placed { placed, where_ } => {
                tracing::info!(%gang, members = placed.len(), where_ = where_.as_deref().unwrap_or(""), "gang placed all together");
                self.stats.gangs_placed += 1;
                let (plan_ttl, _) = self.extender_ttls();
                let count = placed.len();
                let mut mine = None;
                for (member, _, node) in placed {
                    if member.key == pod.key {
                        mine = Some(node.clone());
                    }
                    // Held in the cache until the watch shows it bound (or the plan
                    // lapses): every other pod counts it on its node.
                    self.handed.remove(&member.key);
                    self.cache.assume(&member, &node);
                    self.cache.finish_binding(&member.key, now + plan_ttl);
                    self.gangs
                        .observe(&member, MemberState::Assigned { running: false });
                    self.ledger
                        .set(&member.key, Some(self.contribution(&member, true)));
                }
                self.bump(gang, now);
                Some(match mine {
                    Some(node) => Verdict::Planned {
                        gang: gang.clone(),
                        node,
                    },
                    None => Verdict::Hold(format!(
                        "gang {gang}: placed with {count} other members (minMember {min}); this pod waits until the gang runs"
                    )),
                })
            }
        }
    }
}
