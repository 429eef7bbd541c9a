//! `drover explain`: why a pod is where it is, or why it waits, in words a data
//! scientist can act on. Pure: the caller gathers the pod, a snapshot and the gang's
//! state; this module decides and formats.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use crate::framework::{Profile, rejections, score_nodes};
use crate::gang::{self, GangDecision, GangKey, GangTracker};
use crate::model::PodInfo;
use crate::snapshot::Snapshot;

/// How many node names to list per reason.
const NAMES_PER_REASON: usize = 4;

/// What is known about the pod besides its spec.
#[derive(Clone, Debug, Default)]
pub struct PodStatus {
    /// The node it is bound to, if any (the pod itself is explained as if pending, to
    /// show where else it could go).
    pub bound_to: Option<String>,
    /// The message of its `PodScheduled=False` condition, if any.
    pub unschedulable_message: Option<String>,
}

/// The fair-share queues as the scheduler sees them, for the queue part of an
/// explanation. The pod's queue is [`crate::quota::queue_of`] the pod (the caller has
/// put a namespace's default queue into `pod.queue`).
pub struct QuotaView<'a> {
    /// The validated queue tree.
    pub tree: &'a crate::quota::QueueTree,
    /// What every queue holds and asks for.
    pub usage: &'a crate::quota::Usage,
    /// Fair shares by queue.
    pub fair: &'a BTreeMap<Arc<str>, crate::model::Resources>,
    /// Where the pod's queue comes from, in words.
    pub source: &'a str,
}

fn explain_queue(o: &mut String, pod: &PodInfo, quota: &QuotaView) {
    let queue = crate::quota::queue_of(pod);
    let _ = writeln!(o, "queue: {queue} ({})", quota.source);
    match quota.tree.get(&queue) {
        Some(spec) => {
            let max = spec
                .max
                .as_ref()
                .map_or("none".to_string(), |m| m.to_string());
            let _ = writeln!(
                o,
                "  guaranteed {}  max {max}  weight {}{}",
                spec.guaranteed,
                spec.weight,
                if spec.reclaimable {
                    ""
                } else {
                    "  (not reclaimable)"
                }
            );
            let fair = quota.fair.get(&queue).cloned().unwrap_or_default();
            let _ = writeln!(
                o,
                "  allocated {} (with its children)  pending {}  fair share {fair}",
                quota.usage.allocated(&queue),
                quota.usage.pending(&queue),
            );
        }
        None if queue.as_ref() == crate::quota::DEFAULT_QUEUE => {
            let _ = writeln!(o, "  no Queue object: no guarantee and no limit");
        }
        None => {}
    }
    match quota.tree.admit(quota.usage, &queue, &pod.requests) {
        Some(why) => {
            let _ = writeln!(o, "  admission: waits: {why}");
        }
        None => {
            let _ = writeln!(
                o,
                "  admission: within max (its own and its parents'): placed when a node fits"
            );
        }
    }
}

fn names(list: &[Arc<str>]) -> String {
    let mut s: Vec<&str> = list.iter().take(NAMES_PER_REASON).map(|n| &**n).collect();
    s.sort_unstable();
    let mut out = s.join(", ");
    if list.len() > NAMES_PER_REASON {
        let _ = write!(out, " … (+{})", list.len() - NAMES_PER_REASON);
    }
    out
}

/// Explains `pod` over `snapshot`. `gangs` holds every gang member and PodGroup the
/// caller knows of; `pending` returns the current pending members of a gang.
#[allow(clippy::too_many_arguments)]
pub fn explain(
    profile: &Profile,
    levels: &[Arc<str>],
    pod: &PodInfo,
    status: &PodStatus,
    snapshot: &Snapshot,
    gangs: &GangTracker,
    pending: &dyn Fn(&GangKey) -> Vec<Arc<PodInfo>>,
    quota: &QuotaView,
) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "pod {}  scheduler {}  priority {}",
        pod.key, pod.scheduler_name, pod.priority
    );
    let requests = if pod.declares_requests {
        pod.requests.to_string()
    } else {
        "none declared (placed as the smallest footprint)".to_string()
    };
    let _ = writeln!(o, "requests: {requests}");
    if pod.exclusive {
        let _ = writeln!(o, "exclusive: asks for a node to itself");
    }
    match &status.bound_to {
        Some(n) => {
            let _ = writeln!(o, "status: bound to {n}; below, where else it could go now");
        }
        None => {
            let _ = writeln!(
                o,
                "status: pending{}",
                status
                    .unschedulable_message
                    .as_deref()
                    .map(|m| format!(" — the scheduler said: {m}"))
                    .unwrap_or_default()
            );
        }
    }
    if pod.is_gated() && status.bound_to.is_none() {
        let _ = writeln!(
            o,
            "gates: waiting for gates {}; no scheduler attempts it until they are removed from spec.schedulingGates",
            names(&pod.scheduling_gates)
        );
    }
    explain_queue(&mut o, pod, quota);

    if let Some(g) = &pod.gang {
        let key = GangKey::of(pod).expect("names a gang");
        let _ = write!(o, "gang: {key}");
        if let Some(c) = &g.conflict {
            let _ = writeln!(o, " — {c}");
        } else {
            let source = if gangs.group(&key).is_some() {
                "PodGroup"
            } else {
                gang::MIN_MEMBER_ANNOTATION
            };
            let counts = gangs.counts(&key);
            match gangs.min_member(&key) {
                Err(p) => {
                    let _ = writeln!(o, " — {}", p.message(&key));
                }
                Ok(min) => {
                    let _ = writeln!(
                        o,
                        " (minMember {min} from {source}): {} pending, {} gated, {} scheduled, {} running, {} succeeded, {} failed",
                        counts.pending,
                        counts.gated,
                        counts.scheduled,
                        counts.running,
                        counts.succeeded,
                        counts.failed
                    );
                    if status.bound_to.is_none() {
                        let min_resources = gangs.group(&key).map(|g| g.min_resources.clone());
                        let members = pending(&key);
                        let topology = gang::topology_request(gangs.group(&key), &members, levels);
                        if let Some(t) = &topology {
                            let _ = writeln!(
                                o,
                                "  topology: {}",
                                match t {
                                    Ok(c) => format!(
                                        "{} level {}",
                                        if c.required { "required" } else { "preferred" },
                                        c.level
                                    ),
                                    Err(e) => e.clone(),
                                }
                            );
                        }
                        let gated = gangs.gated_wait(&key, min);
                        let verdict = match gated {
                            Some(m) => m,
                            None => match gang::decide(
                                profile,
                                &key,
                                min,
                                min_resources.as_ref(),
                                topology.and_then(Result::ok).as_ref(),
                                &members,
                                counts.scheduled,
                                snapshot,
                            ) {
                                GangDecision::Running => {
                                    "the gang runs; this pod is placed on its own".to_string()
                                }
                                GangDecision::Wait(m) | GangDecision::NoFit { message: m, .. } => m,
                                GangDecision::Placed { placed: p, where_ } => format!(
                                    "all {} pending members fit now, on {} node(s){}",
                                    p.len(),
                                    p.iter()
                                        .map(|(_, _, n)| n.clone())
                                        .collect::<std::collections::BTreeSet<_>>()
                                        .len(),
                                    where_.map(|w| format!(" in {w}")).unwrap_or_default()
                                ),
                            },
                        };
                        let _ = writeln!(o, "  now: {verdict}");
                    }
                }
            }
        }
    }

    // Per-node verdicts for this pod alone.
    let mut by_reason: BTreeMap<String, Vec<Arc<str>>> = BTreeMap::new();
    let rejected = rejections(profile, pod, snapshot);
    for (node, reasons) in &rejected {
        for r in reasons {
            by_reason
                .entry(r.to_string())
                .or_default()
                .push(node.clone());
        }
    }
    let mut scored = score_nodes(profile, pod, snapshot);
    let evaluated = snapshot.nodes().filter(|(_, n)| n.known).count();
    let _ = writeln!(
        o,
        "nodes: {evaluated} evaluated, {} would take it now, {} would not",
        scored.len(),
        rejected.len()
    );
    let mut reasons: Vec<(String, Vec<Arc<str>>)> = by_reason.into_iter().collect();
    reasons.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
    for (reason, nodes) in &reasons {
        let _ = writeln!(o, "  {:>5}  {reason}: {}", nodes.len(), names(nodes));
    }
    scored.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if !scored.is_empty() {
        let best: Vec<String> = scored
            .iter()
            .take(3)
            .filter_map(|(slot, score)| Some(format!("{} ({score})", snapshot.slot(*slot)?.name)))
            .collect();
        let _ = writeln!(o, "  best now: {}", best.join(", "));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gang::MemberState;
    use crate::model::*;
    use crate::quota::{QueueSpec, QueueTree, Usage};

    /// No Queue objects: every pod is in `default`.
    fn no_queues() -> QuotaView<'static> {
        static TREE: std::sync::OnceLock<QueueTree> = std::sync::OnceLock::new();
        static USAGE: std::sync::OnceLock<Usage> = std::sync::OnceLock::new();
        static FAIR: std::sync::OnceLock<BTreeMap<Arc<str>, Resources>> =
            std::sync::OnceLock::new();
        QuotaView {
            tree: TREE.get_or_init(QueueTree::default),
            usage: USAGE.get_or_init(Usage::default),
            fair: FAIR.get_or_init(BTreeMap::new),
            source: "no drover.dev/queue label",
        }
    }

    #[test]
    fn explains_a_pod_over_its_queue_max() {
        let tree = QueueTree::build([QueueSpec {
            name: "research".into(),
            parent: None,
            guaranteed: Resources::cpu_mem(4_000, 0),
            max: Some(Resources::cpu_mem(8_000, 0)),
            max_listed: vec![ResourceKind::Cpu],
            weight: 2,
            reclaimable: true,
            unreadable: None,
        }]);
        let mut held = pod("held", 7000, None);
        held.queue = Some("research".into());
        let mut p = pod("p", 2000, None);
        p.queue = Some("research".into());
        let usage = Usage::from_pods(&tree, [(&held, true), (&p, false)]);
        let fair = tree.fair_shares(&usage, &Resources::cpu_mem(32_000, 0));
        let explain_in_queue = |p: &PodInfo| {
            explain(
                &Profile::default(),
                &[],
                p,
                &PodStatus::default(),
                &cluster(),
                &GangTracker::new(),
                &|_| Vec::new(),
                &QuotaView {
                    tree: &tree,
                    usage: &usage,
                    fair: &fair,
                    source: "its drover.dev/queue label",
                },
            )
        };
        let out = explain_in_queue(&p);
        for want in [
            "queue: research (its drover.dev/queue label)",
            "guaranteed cpu=4  max cpu=8  weight 2",
            "allocated cpu=7,memory=1Gi (with its children)  pending cpu=2,memory=1Gi  fair share cpu=8",
            "admission: waits: queue research would exceed its max cpu",
        ] {
            assert!(out.contains(want), "missing {want:?} in:\n{out}");
        }
        // Within max, the same pod is told it only waits for a node.
        let small = {
            let mut s = pod("s", 1000, None);
            s.queue = Some("research".into());
            s
        };
        let out = explain_in_queue(&small);
        assert!(out.contains("admission: within max"), "{out}");
    }

    const GI: i64 = 1 << 30;

    fn pod(name: &str, cpu: i64, gang: Option<(&str, &str)>) -> PodInfo {
        PodInfo {
            key: PodKey::new("ml", name),
            uid: name.into(),
            scheduler_name: "drover".into(),
            requests: Resources::cpu_mem(cpu, GI),
            declares_requests: true,
            gang: gang.map(|(g, m)| {
                std::sync::Arc::new(GangRef {
                    name: g.into(),
                    min_member: Some(m.into()),
                    conflict: None,
                    ..Default::default()
                })
            }),
            ..Default::default()
        }
    }

    fn cluster() -> Snapshot {
        let mut nodes = Vec::new();
        for i in 0..6 {
            let mut n = NodeInfo::new(&format!("small-{i}"), Resources::cpu_mem(2000, 8 * GI), 110);
            if i < 2 {
                n.taints.push(Taint {
                    key: "gpu".into(),
                    value: "true".into(),
                    effect: TaintEffect::NoSchedule,
                });
            }
            nodes.push(n);
        }
        nodes.push(NodeInfo::new(
            "big-0",
            Resources::cpu_mem(16000, 64 * GI),
            110,
        ));
        Snapshot::from_nodes(nodes)
    }

    #[test]
    fn groups_rejections_by_reason_and_names_the_best_nodes() {
        let snap = cluster();
        let p = pod("solo", 4000, None);
        let out = explain(
            &Profile::default(),
            &[],
            &p,
            &PodStatus::default(),
            &snap,
            &GangTracker::new(),
            &|_| Vec::new(),
            &no_queues(),
        );
        assert!(out.contains("pod ml/solo"), "{out}");
        assert!(
            out.contains("7 evaluated, 1 would take it now, 6 would not"),
            "{out}"
        );
        assert!(
            out.contains("4  Insufficient cpu: small-2, small-3, small-4, small-5"),
            "{out}"
        );
        assert!(
            out.contains("2  node(s) had untolerated taint {gpu: true}: small-0, small-1"),
            "{out}"
        );
        assert!(out.contains("best now: big-0"), "{out}");
    }

    #[test]
    fn explains_a_waiting_gang() {
        let snap = cluster();
        let mut t = GangTracker::new();
        let members: Vec<Arc<PodInfo>> = (0..3)
            .map(|i| Arc::new(pod(&format!("w-{i}"), 9000, Some(("train", "3")))))
            .collect();
        for m in &members {
            t.observe(m, MemberState::Pending);
        }
        let out = explain(
            &Profile::default(),
            &[],
            &members[0],
            &PodStatus {
                unschedulable_message: Some("gang ml/train: waiting".into()),
                bound_to: None,
            },
            &snap,
            &t,
            &|_| members.clone(),
            &no_queues(),
        );
        assert!(
            out.contains("gang: ml/train (minMember 3 from drover.dev/min-member): 3 pending"),
            "{out}"
        );
        assert!(
            out.contains("now: gang ml/train: 1/3 members placeable at once"),
            "{out}"
        );
        assert!(
            out.contains("the scheduler said: gang ml/train: waiting"),
            "{out}"
        );
    }
}
