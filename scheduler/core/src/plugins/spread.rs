//! `PodTopologySpread`: `topologySpreadConstraints`, decided as kube-scheduler's
//! plugin of that name decides them.
//!
//! Once per cycle ([`State::new`], kube-scheduler's PreFilter and PreScore), each
//! constraint counts, per domain of its `topologyKey`, the pods of the incoming pod's
//! namespace that its selector matches (pods being deleted left out). Only *eligible*
//! nodes count: they carry every topology key of the pod's constraints of that kind
//! (`DoNotSchedule` ones for the filter, `ScheduleAnyway` ones for the score), and
//! pass the constraint's node inclusion policies (`nodeAffinityPolicy: Honor`, the
//! default: the pod's nodeSelector and required node affinity; `nodeTaintsPolicy:
//! Honor`: its tolerations of NoSchedule and NoExecute taints). Every eligible node's
//! domain is a domain, with 0 pods if need be.
//!
//! - **Filter** (`DoNotSchedule`): a node without the topology key fails; otherwise
//!   `pods in its domain + (1 if the pod matches the selector) - global minimum` must
//!   not exceed `maxSkew`. The global minimum is the least count over the domains, or
//!   0 while there are fewer domains than `minDomains`.
//! - **Score** (`ScheduleAnyway`): over the feasible nodes that carry every key, each
//!   constraint adds `pods in the domain × ln(domains + 2) + maxSkew - 1` (for
//!   `kubernetes.io/hostname`, the node's own pods, and the number of such nodes as
//!   its domains); fewer is better. The sum, rounded, is normalized as
//!   `MAX_SCORE × (max + min - score) / max` (all `MAX_SCORE` when `max` is 0); the
//!   nodes without every key score 0.
//!
//! A pod without constraints of its own gets the profile's default constraints, when
//! some are configured, counting the pods of its controller (kube-scheduler's
//! `defaultConstraints` with `defaultingType: List`). There are none by default:
//! drover packs.

use std::collections::HashMap;
use std::sync::Arc;

use crate::framework::NodeSource;
use crate::model::{
    NodeInfo, PodInfo, SpreadConstraint, SpreadSelector, TaintEffect, labels::tolerated,
};

use super::{MAX_SCORE, Reason, node_affinity};

/// The topology key whose domains are single nodes.
pub const HOSTNAME: &str = "kubernetes.io/hostname";

/// One constraint with what was counted for it.
#[derive(Clone, Debug, PartialEq)]
struct Counted {
    c: SpreadConstraint,
    /// The incoming pod matches the constraint's selector.
    self_match: bool,
    /// Matching pods per eligible domain (every eligible domain is present).
    counts: HashMap<Arc<str>, i64>,
    /// [`Counted::global_min`] of `counts`, kept so the filter does not look over
    /// every domain for every node.
    min: i64,
}

impl Counted {
    /// The global minimum the skew is measured from.
    fn global_min(&self) -> i64 {
        if (self.counts.len() as i64) < i64::from(self.c.min_domains) {
            return 0;
        }
        // No eligible domain: nothing to be skewed against.
        self.counts.values().copied().min().unwrap_or(i64::MAX / 2)
    }
}

/// What one cycle counted for one pod's spread constraints.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    namespace: Arc<str>,
    /// `DoNotSchedule` constraints (when the profile filters).
    hard: Vec<Counted>,
    /// `ScheduleAnyway` constraints (when the profile scores).
    soft: Vec<Counted>,
}

/// True when constraint `c` of a pod in `namespace` counts `existing` (see the module
/// docs).
#[inline]
fn counts_pod(c: &SpreadConstraint, namespace: &str, existing: &PodInfo) -> bool {
    !existing.deleting && *existing.key.namespace == *namespace && c.selector.selects(existing)
}

/// The node inclusion policies of `c` for `pod` on `node`.
#[inline]
fn included(c: &SpreadConstraint, pod: &PodInfo, node: &NodeInfo) -> bool {
    (!c.honor_node_affinity || node_affinity::matches(pod, node))
        && (!c.honor_taints
            || node.taints.iter().all(|t| {
                t.effect == TaintEffect::PreferNoSchedule || tolerated(&pod.tolerations, t)
            }))
}

/// True when `node` carries the topology key of every constraint in `cs`.
#[inline]
fn has_keys(cs: &[Counted], node: &NodeInfo) -> bool {
    cs.iter()
        .all(|c| node.labels.get(&c.c.topology_key).is_some())
}

impl State {
    /// Counts what `pod`'s spread constraints depend on over `nodes`; `defaults`
    /// stand in for a pod with none of its own. `filter` and `score` say which kinds
    /// the profile runs. `None` when no constraint applies.
    pub fn new<N: NodeSource + ?Sized>(
        pod: &PodInfo,
        nodes: &N,
        defaults: &[SpreadConstraint],
        filter: bool,
        score: bool,
    ) -> Option<State> {
        let own: Vec<SpreadConstraint> = match &pod.topology_spread {
            Some(cs) => cs.to_vec(),
            None => match &pod.owner {
                Some(uid) if !defaults.is_empty() => defaults
                    .iter()
                    .map(|d| SpreadConstraint {
                        selector: SpreadSelector::Owner(uid.clone()),
                        ..d.clone()
                    })
                    .collect(),
                _ => Vec::new(),
            },
        };
        let counted = |hard: bool| -> Vec<Counted> {
            own.iter()
                .filter(|c| c.hard == hard)
                .map(|c| Counted {
                    self_match: c.selector.selects(pod),
                    c: c.clone(),
                    counts: HashMap::new(),
                    min: 0,
                })
                .collect()
        };
        let mut s = State {
            namespace: pod.key.namespace.clone(),
            hard: if filter { counted(true) } else { Vec::new() },
            soft: if score { counted(false) } else { Vec::new() },
        };
        if s.hard.is_empty() && s.soft.is_empty() {
            return None;
        }
        let ns = s.namespace.clone();
        nodes.visit_all(&mut |node, _| {
            if !node.known {
                return;
            }
            for group in [&mut s.hard, &mut s.soft] {
                if !has_keys(group, node) {
                    continue;
                }
                for c in group.iter_mut() {
                    if !included(&c.c, pod, node) {
                        continue;
                    }
                    let v = node
                        .labels
                        .get_shared(&c.c.topology_key)
                        .expect("has_keys checked");
                    let n = node
                        .pods
                        .iter()
                        .filter(|e| e.key != pod.key && counts_pod(&c.c, &ns, e))
                        .count() as i64;
                    *c.counts.entry(v.clone()).or_default() += n;
                }
            }
        });
        for c in s.hard.iter_mut().chain(&mut s.soft) {
            c.min = c.global_min();
        }
        Some(s)
    }

    /// True when the filter can reject some node.
    pub fn filters(&self) -> bool {
        !self.hard.is_empty()
    }

    /// True when the score applies.
    pub fn scores(&self) -> bool {
        !self.soft.is_empty()
    }

    /// The filter: false (with the reason) when `node` lacks a topology key or placing
    /// the pod there would skew a domain past `maxSkew`.
    #[inline]
    pub fn filter(&self, node: &NodeInfo, why: &mut dyn FnMut(Reason)) -> bool {
        for c in &self.hard {
            let Some(v) = node.labels.get(&c.c.topology_key) else {
                why(Reason::SpreadMissingLabel);
                return false;
            };
            let here = c.counts.get(v).copied().unwrap_or(0);
            let skew = here + i64::from(c.self_match) - c.min;
            if skew > i64::from(c.c.max_skew) {
                why(Reason::Spread);
                return false;
            }
        }
        true
    }

    /// Counts `placed`, just put on `node`, for a next pod that asks the same
    /// question (the same constraints, labels and node constraints): what
    /// [`State::new`] would count with `placed` there. Returns the topology domains
    /// `(key, value)` whose nodes' verdicts may have changed: the node's own, or every
    /// domain of the key when the global minimum moved.
    pub fn count_placed(&mut self, placed: &PodInfo, node: &NodeInfo) -> Vec<(Arc<str>, Arc<str>)> {
        let mut changed = Vec::new();
        let ns = self.namespace.clone();
        for (hard, group) in [(true, &mut self.hard), (false, &mut self.soft)] {
            if !node.known || !has_keys(group, node) {
                continue;
            }
            for c in group.iter_mut() {
                // `placed` is not among the node's pods it is compared with: the
                // incoming pod is another one that asks the same question.
                if !included(&c.c, placed, node) || !counts_pod(&c.c, &ns, placed) {
                    continue;
                }
                let v = node
                    .labels
                    .get_shared(&c.c.topology_key)
                    .expect("has_keys checked")
                    .clone();
                let before = c.min;
                *c.counts.entry(v.clone()).or_default() += 1;
                c.min = c.global_min();
                if !hard {
                    continue;
                }
                if c.min != before {
                    changed.extend(
                        c.counts
                            .keys()
                            .map(|k| (c.c.topology_key.clone(), k.clone())),
                    );
                } else {
                    changed.push((c.c.topology_key.clone(), v));
                }
            }
        }
        changed.sort();
        changed.dedup();
        changed
    }

    /// The normalized scores (0..=[`MAX_SCORE`]) of the feasible nodes `feasible`, in
    /// their order (see the module docs).
    pub fn normalized_scores(&self, feasible: &[&NodeInfo]) -> Vec<i64> {
        let counted: Vec<bool> = feasible.iter().map(|n| has_keys(&self.soft, n)).collect();
        let weights: Vec<f64> = self
            .soft
            .iter()
            .map(|c| {
                let size = if &*c.c.topology_key == HOSTNAME {
                    counted.iter().filter(|x| **x).count()
                } else {
                    let mut values: Vec<&str> = feasible
                        .iter()
                        .zip(&counted)
                        .filter(|(_, x)| **x)
                        .filter_map(|(n, _)| n.labels.get(&c.c.topology_key))
                        .collect();
                    values.sort_unstable();
                    values.dedup();
                    values.len()
                };
                ((size + 2) as f64).ln()
            })
            .collect();
        let raw: Vec<Option<i64>> = feasible
            .iter()
            .zip(&counted)
            .map(|(n, x)| {
                x.then(|| {
                    let mut score = 0.0;
                    for (c, w) in self.soft.iter().zip(&weights) {
                        let count = if &*c.c.topology_key == HOSTNAME {
                            n.pods
                                .iter()
                                .filter(|e| counts_pod(&c.c, &self.namespace, e))
                                .count() as i64
                        } else {
                            n.labels
                                .get(&c.c.topology_key)
                                .and_then(|v| c.counts.get(v))
                                .copied()
                                .unwrap_or(0)
                        };
                        score += count as f64 * w + f64::from(c.c.max_skew - 1);
                    }
                    score.round() as i64
                })
            })
            .collect();
        let min = raw.iter().flatten().copied().min().unwrap_or(0);
        let max = raw.iter().flatten().copied().max().unwrap_or(0).max(0);
        raw.iter()
            .map(|r| match r {
                None => 0,
                Some(_) if max == 0 => MAX_SCORE,
                Some(s) => MAX_SCORE * (max + min - s) / max,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::{Outcome, Profile, diagnose, schedule_one};
    use crate::model::{
        LabelSelector, Labels, PodKey, Requirement, Resources, SelectorOp, SelectorTerm, Taint,
    };
    use crate::plugins::testutil::feasible_names as feasible;
    use crate::snapshot::Snapshot;

    const ZONE: &str = "topology.kubernetes.io/zone";

    fn web() -> SpreadSelector {
        SpreadSelector::Labels(LabelSelector(vec![Requirement {
            key: "app".into(),
            op: SelectorOp::In,
            values: vec!["web".into()],
            bound: 0,
            field: false,
        }]))
    }

    fn pod(name: &str, spread: Vec<SpreadConstraint>) -> PodInfo {
        PodInfo {
            key: PodKey::new("ns", name),
            uid: name.into(),
            requests: Resources::cpu_mem(100, 1 << 20),
            declares_requests: true,
            labels: Labels::new([("app", "web")]),
            topology_spread: (!spread.is_empty()).then(|| spread.into()),
            ..Default::default()
        }
    }

    fn zone(max_skew: i32, hard: bool) -> SpreadConstraint {
        SpreadConstraint::new(max_skew, ZONE, hard, web())
    }

    /// Nodes `n0..` with zones (`None`: no zone label) and their web pods.
    fn cluster(nodes: &[(Option<&str>, usize)]) -> Snapshot {
        Snapshot::from_nodes(nodes.iter().enumerate().map(|(i, (z, pods))| {
            let name = format!("n{i}");
            let mut n = NodeInfo::new(&name, Resources::cpu_mem(64_000, 256 << 30), 110);
            let mut labels = vec![(HOSTNAME, name.as_str())];
            if let Some(z) = z {
                labels.push((ZONE, z));
            }
            n.labels = Labels::new(labels);
            for j in 0..*pods {
                let mut p = pod(&format!("{name}-w{j}"), vec![]);
                p.node_name = Some(name.as_str().into());
                n.add_pod(Arc::new(p));
            }
            n
        }))
    }

    #[test]
    fn do_not_schedule_table() {
        let a = Some("a");
        let b = Some("b");
        let c = Some("c");
        // (what, nodes (zone, web pods), the incoming pod's constraints, where it may go)
        type Case = (
            &'static str,
            Vec<(Option<&'static str>, usize)>,
            Vec<SpreadConstraint>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "an empty cluster: any zone",
                vec![(a, 0), (b, 0), (c, 0)],
                vec![zone(1, true)],
                vec!["n0", "n1", "n2"],
            ),
            (
                "a zone ahead by one: the others",
                vec![(a, 1), (b, 0), (c, 0)],
                vec![zone(1, true)],
                vec!["n1", "n2"],
            ),
            (
                "maxSkew 2 lets the zone ahead take one more",
                vec![(a, 1), (b, 0), (c, 0)],
                vec![zone(2, true)],
                vec!["n0", "n1", "n2"],
            ),
            (
                "a node without the zone label fails",
                vec![(a, 0), (None, 0)],
                vec![zone(1, true)],
                vec!["n0"],
            ),
            (
                "the domain is the zone, not the node",
                vec![(a, 1), (a, 0), (b, 0)],
                vec![zone(1, true)],
                vec!["n2"],
            ),
            (
                "minDomains above the domains there are: the minimum counts as 0",
                vec![(a, 1), (b, 1)],
                vec![SpreadConstraint {
                    min_domains: 3,
                    ..zone(1, true)
                }],
                vec![],
            ),
            (
                "minDomains met: the minimum is the least count",
                vec![(a, 1), (b, 1), (c, 1)],
                vec![SpreadConstraint {
                    min_domains: 3,
                    ..zone(1, true)
                }],
                vec!["n0", "n1", "n2"],
            ),
            (
                "no labelSelector counts no pod: nothing is skewed",
                vec![(a, 5), (b, 0)],
                vec![SpreadConstraint::new(
                    1,
                    ZONE,
                    true,
                    SpreadSelector::Nothing,
                )],
                vec!["n0", "n1"],
            ),
            (
                "ScheduleAnyway never filters",
                vec![(a, 5), (b, 0)],
                vec![zone(1, false)],
                vec!["n0", "n1"],
            ),
            (
                "hostname: one per node",
                vec![(a, 1), (a, 0), (b, 1)],
                vec![SpreadConstraint::new(1, HOSTNAME, true, web())],
                vec!["n1"],
            ),
        ];
        for (what, nodes, spread, want) in cases {
            assert_eq!(
                feasible(&pod("new", spread), &cluster(&nodes)),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn node_inclusion_policies_decide_which_domains_count() {
        // Zone c holds no web pod but only nodes the pod cannot use.
        let mut snap_nodes: Vec<NodeInfo> =
            cluster(&[(Some("a"), 1), (Some("b"), 1), (Some("c"), 0)])
                .nodes()
                .map(|(_, n)| (**n).clone())
                .collect();
        snap_nodes[2].labels = Labels::new([(HOSTNAME, "n2"), (ZONE, "c"), ("pool", "other")]);
        snap_nodes[2].taints = vec![Taint {
            key: "dedicated".into(),
            value: "x".into(),
            effect: TaintEffect::NoSchedule,
        }];
        let snap = Snapshot::from_nodes(snap_nodes);
        let mut p = pod("new", vec![zone(1, true)]);
        p.node_selector = SelectorTerm(vec![Requirement {
            key: "pool".into(),
            op: SelectorOp::NotIn,
            values: vec!["other".into()],
            bound: 0,
            field: false,
        }]);
        // nodeAffinityPolicy Honor: zone c does not count, the minimum is 1.
        assert_eq!(feasible(&p, &snap), vec!["n0", "n1"]);
        // Ignore: zone c counts with 0 pods, so a and b are one ahead (c itself is
        // rejected by the node selector).
        p.topology_spread = Some(
            vec![SpreadConstraint {
                honor_node_affinity: false,
                ..zone(1, true)
            }]
            .into(),
        );
        assert_eq!(feasible(&p, &snap), Vec::<String>::new());
        // nodeTaintsPolicy Honor takes zone c out again; Ignore (the default) kept it.
        p.topology_spread = Some(
            vec![SpreadConstraint {
                honor_node_affinity: false,
                honor_taints: true,
                ..zone(1, true)
            }]
            .into(),
        );
        assert_eq!(feasible(&p, &snap), vec!["n0", "n1"]);
    }

    #[test]
    fn rejections_use_kube_schedulers_words() {
        let d = diagnose(
            &Profile::default(),
            &pod("new", vec![zone(1, true)]),
            &cluster(&[(Some("a"), 1), (Some("b"), 0), (None, 0)]),
        );
        let m = d.message();
        assert!(
            m.contains("1 node(s) didn't match pod topology spread constraints,")
                || m.contains("1 node(s) didn't match pod topology spread constraints."),
            "{m}"
        );
        assert!(
            m.contains(
                "1 node(s) didn't match pod topology spread constraints (missing required label)"
            ),
            "{m}"
        );
    }

    #[test]
    fn schedule_anyway_scores_like_kube_scheduler() {
        // Zones a (3 web pods), b (1), c (0); one node each.
        let snap = cluster(&[(Some("a"), 3), (Some("b"), 1), (Some("c"), 0), (None, 0)]);
        let p = pod("new", vec![zone(1, false)]);
        let s = State::new(&p, &snap, &[], true, true).expect("constraints");
        let nodes: Vec<&NodeInfo> = snap.nodes().map(|(_, n)| &**n).collect();
        // 3 domains among the counted feasible nodes: weight ln(5) = 1.609;
        // raw a = round(3 × 1.609) = 5, b = 2, c = 0; normalized 100 × (5 + 0 - s) / 5;
        // the node without a zone scores 0.
        assert_eq!(s.normalized_scores(&nodes), vec![0, 60, 100, 0]);
        // With maxSkew 3 every raw score is 2 higher: min 2, max 7.
        let p3 = pod("new", vec![zone(3, false)]);
        let s = State::new(&p3, &snap, &[], true, true).expect("constraints");
        assert_eq!(s.normalized_scores(&nodes), vec![28, 71, 100, 0]);
        // And the cycle picks zone c despite packing.
        match schedule_one(&Profile::default(), &p, &snap) {
            Outcome::Placed(pl) => assert_eq!(&*pl.node, "n2"),
            o => panic!("{o:?}"),
        }
        // All alike: MAX_SCORE each.
        let even = cluster(&[(Some("a"), 0), (Some("b"), 0)]);
        let s = State::new(&p, &even, &[], true, true).expect("constraints");
        let nodes: Vec<&NodeInfo> = even.nodes().map(|(_, n)| &**n).collect();
        assert_eq!(s.normalized_scores(&nodes), vec![100, 100]);
    }

    #[test]
    fn default_constraints_apply_to_controlled_pods_without_their_own() {
        let snap = cluster(&[(Some("a"), 0), (Some("b"), 0)]);
        let defaults = [SpreadConstraint::new(
            1,
            ZONE,
            true,
            SpreadSelector::Nothing,
        )];
        let mut p = pod("new", vec![]);
        assert!(
            State::new(&p, &snap, &defaults, true, true).is_none(),
            "no owner"
        );
        p.owner = Some("rs-1".into());
        assert!(
            State::new(&p, &snap, &[], true, true).is_none(),
            "no defaults"
        );
        let s = State::new(&p, &snap, &defaults, true, true).expect("defaults");
        assert!(s.filters());
        assert_eq!(
            s.hard[0].c.selector,
            SpreadSelector::Owner("rs-1".into()),
            "counts the pods of its controller"
        );
        assert!(s.hard[0].self_match);
        // A pod's own constraints replace the defaults.
        let own = pod("own", vec![zone(1, false)]);
        let s = State::new(&own, &snap, &defaults, true, true).expect("own");
        assert!(!s.filters() && s.scores());
    }

    #[test]
    fn counting_a_placed_pod_matches_counting_afresh() {
        let nodes = [
            (Some("a"), 1),
            (Some("a"), 0),
            (Some("b"), 0),
            (Some("c"), 0),
        ];
        let snap = cluster(&nodes);
        let p = pod("new", vec![zone(1, true), zone(1, false)]);
        let mut s = State::new(&p, &snap, &[], true, true).expect("constraints");
        // Place a web pod on n2 (zone b): the minimum stays 0, only zone b changed.
        let mut placed = pod("w", vec![]);
        placed.node_name = Some("n2".into());
        let (_, n2) = snap.nodes().nth(2).expect("n2");
        let changed = s.count_placed(&placed, n2);
        assert_eq!(changed, vec![(ZONE.into(), "b".into())]);
        let fresh = State::new(
            &p,
            &cluster(&[
                (Some("a"), 1),
                (Some("a"), 0),
                (Some("b"), 1),
                (Some("c"), 0),
            ]),
            &[],
            true,
            true,
        )
        .expect("constraints");
        assert_eq!(s, fresh);
        // Then on n3 (zone c): the minimum moves to 1, every zone changed.
        let (_, n3) = snap.nodes().nth(3).expect("n3");
        let changed = s.count_placed(&placed, n3);
        assert_eq!(changed.len(), 3, "{changed:?}");
    }
}
