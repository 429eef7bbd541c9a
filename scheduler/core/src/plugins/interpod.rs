//! `InterPodAffinity`: required and preferred pod affinity and anti-affinity, decided
//! as kube-scheduler's plugin of that name decides them.
//!
//! What a node's fate depends on is counted once per cycle over every node of the
//! source ([`State::new`], kube-scheduler's PreFilter and PreScore), per topology
//! domain — a `(topologyKey, value)` pair:
//! - `affinity`: existing pods that match **all** the pod's required affinity terms,
//!   counted in the domain of each term;
//! - `anti`: existing pods that match one of the pod's required anti-affinity terms;
//! - `existing_anti`: existing pods whose own required anti-affinity terms match the
//!   pod (anti-affinity is symmetric: a pod that keeps others away keeps this one away
//!   too);
//! - `scores`: the pod's preferred terms against existing pods (weight, negative for
//!   anti-affinity), and existing pods' preferred terms and required affinity terms
//!   (the latter with `hardPodAffinityWeight`) against the pod.
//!
//! A node passes when each required affinity term's domain holds a matching pod — or
//! no pod anywhere matches them and the pod matches them itself (the first pod of a
//! group that wants to be together) —, no required anti-affinity term's domain holds a
//! matching pod, and no existing pod's anti-affinity covers the node's domain. Terms
//! look at the pods of their namespaces (the pod's own by default; `namespaceSelector`
//! against the namespaces' labels).

use std::collections::HashMap;
use std::sync::Arc;

use crate::framework::NodeSource;
use crate::model::{Labels, NodeInfo, PodAffinity, PodAffinityTerm, PodInfo, Row};

use super::Reason;

/// kube-scheduler's default `hardPodAffinityWeight`: how much an existing pod's
/// required affinity to the incoming pod weighs in its score.
pub const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// Counts per topology domain: key → value → count.
type Counts = HashMap<Arc<str>, HashMap<Arc<str>, i64>>;

fn add(counts: &mut Counts, key: &Arc<str>, value: &Arc<str>, n: i64) {
    *counts
        .entry(key.clone())
        .or_default()
        .entry(value.clone())
        .or_default() += n;
}

#[inline]
fn count(counts: &Counts, key: &str, value: &str) -> i64 {
    counts
        .get(key)
        .and_then(|v| v.get(value))
        .copied()
        .unwrap_or(0)
}

/// What one cycle knows about the pods around one incoming pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    /// The incoming pod's terms (empty when it has none).
    terms: Arc<PodAffinity>,
    /// See the module docs.
    affinity: Counts,
    anti: Counts,
    existing_anti: Counts,
    /// The pod matches all its own required affinity terms.
    self_affine: bool,
    /// Topology key → value → raw score.
    scores: Counts,
    /// Which halves were counted: the pod's own terms for the filter and the score,
    /// existing pods' terms for either.
    own_filter: bool,
    own_score: bool,
    filter: bool,
    score: bool,
    /// Some own term has a `namespaceSelector`.
    own_reads_namespaces: bool,
}

/// The node's value of `key`, shared.
#[inline]
fn value_of<'a>(labels: &'a Labels, key: &str) -> Option<&'a Arc<str>> {
    labels.get_shared(key)
}

impl State {
    /// Counts what `pod`'s placement depends on over `nodes`. `filter` and `score`
    /// say which halves the profile runs. `None` when nothing constrains or scores the
    /// pod: it has no term and no existing pod has any.
    pub fn new<N: NodeSource + ?Sized>(
        pod: &PodInfo,
        nodes: &N,
        filter: bool,
        score: bool,
    ) -> Option<State> {
        let terms = pod.pod_affinity.clone().unwrap_or_default();
        let own_filter = filter && !(terms.required.is_empty() && terms.required_anti.is_empty());
        let own_score = score && !(terms.preferred.is_empty() && terms.preferred_anti.is_empty());
        let others = (filter || score) && nodes.may_have_pod_affinity();
        if !own_filter && !own_score && !others {
            return None;
        }
        let pod_ns = nodes.namespace_labels(&pod.key.namespace);
        let mut s = State {
            self_affine: terms.required.iter().all(|t| t.matches(pod, pod_ns)),
            own_reads_namespaces: terms
                .required
                .iter()
                .chain(&terms.required_anti)
                .chain(terms.preferred.iter().map(|(_, t)| t))
                .chain(terms.preferred_anti.iter().map(|(_, t)| t))
                .any(|t| t.namespaces.selector.is_some()),
            terms,
            own_filter,
            own_score,
            filter,
            score,
            ..State::default()
        };
        let own = own_filter || own_score;
        nodes.visit_all(&mut |node, row| {
            if !node.known || (!own && !row.has(Row::AFFINITY)) {
                return;
            }
            for existing in &node.pods {
                if existing.key == pod.key {
                    continue;
                }
                if own {
                    s.count_own(existing, node, nodes, own_filter, own_score);
                }
                if others && let Some(theirs) = &existing.pod_affinity {
                    s.count_theirs(theirs, pod, pod_ns, node, filter, score);
                }
            }
        });
        Some(s)
    }

    /// The incoming pod's terms against `existing` on `node`.
    fn count_own<N: NodeSource + ?Sized>(
        &mut self,
        existing: &PodInfo,
        node: &NodeInfo,
        nodes: &N,
        filter: bool,
        score: bool,
    ) {
        // A namespace's labels are looked up only for terms with a namespaceSelector.
        let ns = if self.own_reads_namespaces {
            nodes.namespace_labels(&existing.key.namespace)
        } else {
            None
        };
        let terms = self.terms.clone();
        if filter {
            if !terms.required.is_empty() && terms.required.iter().all(|t| t.matches(existing, ns))
            {
                for t in &terms.required {
                    if let Some(v) = value_of(&node.labels, &t.topology_key) {
                        add(&mut self.affinity, &t.topology_key, v, 1);
                    }
                }
            }
            for t in &terms.required_anti {
                if t.matches(existing, ns)
                    && let Some(v) = value_of(&node.labels, &t.topology_key)
                {
                    add(&mut self.anti, &t.topology_key, v, 1);
                }
            }
        }
        if score {
            for (sign, list) in [(1, &terms.preferred), (-1, &terms.preferred_anti)] {
                for (w, t) in list {
                    self.score_term(t, i64::from(*w) * sign, existing, ns, node);
                }
            }
        }
    }

    /// `existing`'s terms (`theirs`) against the incoming `pod` on `node`.
    fn count_theirs(
        &mut self,
        theirs: &PodAffinity,
        pod: &PodInfo,
        pod_ns: Option<&Labels>,
        node: &NodeInfo,
        filter: bool,
        score: bool,
    ) {
        if filter {
            for t in &theirs.required_anti {
                if t.matches(pod, pod_ns)
                    && let Some(v) = value_of(&node.labels, &t.topology_key)
                {
                    add(&mut self.existing_anti, &t.topology_key, v, 1);
                }
            }
        }
        if score {
            for t in &theirs.required {
                self.score_term(t, HARD_POD_AFFINITY_WEIGHT, pod, pod_ns, node);
            }
            for (sign, list) in [(1, &theirs.preferred), (-1, &theirs.preferred_anti)] {
                for (w, t) in list {
                    self.score_term(t, i64::from(*w) * sign, pod, pod_ns, node);
                }
            }
        }
    }

    fn score_term(
        &mut self,
        t: &PodAffinityTerm,
        weight: i64,
        subject: &PodInfo,
        subject_ns: Option<&Labels>,
        node: &NodeInfo,
    ) {
        if weight != 0
            && t.matches(subject, subject_ns)
            && let Some(v) = value_of(&node.labels, &t.topology_key)
        {
            add(&mut self.scores, &t.topology_key, v, weight);
        }
    }

    /// Counts `placed`, just put on `node`, as one more existing pod, for a next pod
    /// that asks the same question (same namespace, labels and terms) — what
    /// [`State::new`] would count over the nodes with `placed` on them. Returns the
    /// topology domains `(key, value)` whose counts may have changed: the nodes in
    /// them must be evaluated again.
    pub fn count_placed<N: NodeSource + ?Sized>(
        &mut self,
        placed: &PodInfo,
        node: &NodeInfo,
        nodes: &N,
    ) -> Vec<(Arc<str>, Arc<str>)> {
        if self.own_filter || self.own_score {
            self.count_own(placed, node, nodes, self.own_filter, self.own_score);
        }
        let theirs = placed.pod_affinity.clone().unwrap_or_default();
        if self.filter || self.score {
            let ns = nodes.namespace_labels(&placed.key.namespace);
            self.count_theirs(&theirs, placed, ns, node, self.filter, self.score);
        }
        let mut domains: Vec<(Arc<str>, Arc<str>)> = [&*self.terms, &*theirs]
            .into_iter()
            .flat_map(|a| {
                a.required
                    .iter()
                    .chain(&a.required_anti)
                    .chain(a.preferred.iter().map(|(_, t)| t))
                    .chain(a.preferred_anti.iter().map(|(_, t)| t))
            })
            .filter_map(|t| {
                Some((
                    t.topology_key.clone(),
                    value_of(&node.labels, &t.topology_key)?.clone(),
                ))
            })
            .collect();
        domains.sort();
        domains.dedup();
        domains
    }

    /// True when the filter can reject some node.
    pub fn filters(&self) -> bool {
        !self.terms.required.is_empty()
            || !self.terms.required_anti.is_empty()
            || !self.existing_anti.is_empty()
    }

    /// True when the score can tell nodes apart.
    pub fn scores(&self) -> bool {
        !self.scores.is_empty()
    }

    /// The filter: false (with the reason) when `node` breaks a required term.
    #[inline]
    pub fn filter(&self, node: &NodeInfo, why: &mut dyn FnMut(Reason)) -> bool {
        if !self.terms.required.is_empty() {
            let mut found = true;
            for t in &self.terms.required {
                match node.labels.get(&t.topology_key) {
                    Some(v) => found &= count(&self.affinity, &t.topology_key, v) > 0,
                    None => {
                        why(Reason::PodAffinity);
                        return false;
                    }
                }
            }
            // The first pod of a group with affinity to itself goes anywhere.
            let first_of_group = self.affinity.is_empty() && self.self_affine;
            if !found && !first_of_group {
                why(Reason::PodAffinity);
                return false;
            }
        }
        for t in &self.terms.required_anti {
            if let Some(v) = node.labels.get(&t.topology_key)
                && count(&self.anti, &t.topology_key, v) > 0
            {
                why(Reason::PodAntiAffinity);
                return false;
            }
        }
        for (key, values) in &self.existing_anti {
            if let Some(v) = node.labels.get(key)
                && values.get(v).is_some_and(|n| *n > 0)
            {
                why(Reason::ExistingAntiAffinity);
                return false;
            }
        }
        true
    }

    /// The raw score of `node`: the weights of the terms its domains satisfy.
    #[inline]
    pub fn score(&self, node: &NodeInfo) -> i64 {
        self.scores
            .iter()
            .filter_map(|(key, values)| values.get(node.labels.get(key)?))
            .sum()
    }
}

/// kube-scheduler's normalization of this score: `MAX_SCORE * (raw - min) / (max -
/// min)` over the feasible nodes; all 0 when they score alike.
#[inline]
pub fn normalized(raw: i64, min: i64, max: i64) -> i64 {
    if max > min {
        super::MAX_SCORE * (raw - min) / (max - min)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::{Outcome, Profile, diagnose, schedule_one};
    use crate::model::{LabelSelector, NamespaceScope, PodKey, Requirement, Resources, SelectorOp};
    use crate::plugins::testutil::feasible_names as feasible;
    use crate::snapshot::Snapshot;

    const HOST: &str = "kubernetes.io/hostname";
    const ZONE: &str = "topology.kubernetes.io/zone";

    fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector(
            pairs
                .iter()
                .map(|(k, v)| Requirement {
                    key: (*k).into(),
                    op: SelectorOp::In,
                    values: vec![(*v).into()],
                    bound: 0,
                    field: false,
                })
                .collect(),
        )
    }

    fn term(key: &str, pairs: &[(&str, &str)]) -> PodAffinityTerm {
        PodAffinityTerm {
            selector: Some(sel(pairs)),
            namespaces: NamespaceScope {
                names: vec!["ns".into()],
                selector: None,
            },
            topology_key: key.into(),
        }
    }

    fn pod(name: &str, labels: &[(&str, &str)], affinity: Option<PodAffinity>) -> PodInfo {
        PodInfo {
            key: PodKey::new("ns", name),
            uid: name.into(),
            requests: Resources::cpu_mem(100, 1 << 20),
            declares_requests: true,
            labels: Labels::new(labels.iter().copied()),
            pod_affinity: affinity.map(Arc::new),
            ..Default::default()
        }
    }

    fn anti(key: &str, pairs: &[(&str, &str)]) -> PodAffinity {
        PodAffinity {
            required_anti: vec![term(key, pairs)],
            ..Default::default()
        }
    }

    fn affine(key: &str, pairs: &[(&str, &str)]) -> PodAffinity {
        PodAffinity {
            required: vec![term(key, pairs)],
            ..Default::default()
        }
    }

    /// Nodes `n0..`, in zones `a`, `a`, `b`, `b`, `c`... (two per zone), with pods.
    fn cluster(pods: &[(usize, PodInfo)], nodes: usize) -> Snapshot {
        Snapshot::from_nodes((0..nodes).map(|i| {
            let name = format!("n{i}");
            let zone = ["a", "b", "c", "d"][i / 2 % 4];
            let mut n = NodeInfo::new(&name, Resources::cpu_mem(8000, 16 << 30), 110);
            n.labels = Labels::new([(HOST, name.as_str()), (ZONE, zone)]);
            for (at, p) in pods {
                if *at == i {
                    let mut p = p.clone();
                    p.node_name = Some(name.as_str().into());
                    n.add_pod(Arc::new(p));
                }
            }
            n
        }))
    }

    #[test]
    fn required_terms_table() {
        let web = [("app", "web")];
        let db = [("role", "db")];
        // (what, existing pods by node, incoming pod, the nodes it may go to)
        type Case = (
            &'static str,
            Vec<(usize, PodInfo)>,
            PodInfo,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "anti-affinity on hostname keeps off the nodes that run a match",
                vec![(0, pod("w0", &web, None)), (2, pod("w1", &web, None))],
                pod("w2", &web, Some(anti(HOST, &web))),
                vec!["n1", "n3"],
            ),
            (
                "anti-affinity on zone keeps off the whole zone",
                vec![(0, pod("w0", &web, None))],
                pod("w1", &web, Some(anti(ZONE, &web))),
                vec!["n2", "n3"],
            ),
            (
                "an existing pod's anti-affinity keeps a matching pod away (symmetry)",
                vec![(0, pod("w0", &web, Some(anti(HOST, &web))))],
                pod("w1", &web, None),
                vec!["n1", "n2", "n3"],
            ),
            (
                "an existing pod's anti-affinity does not touch a pod it does not select",
                vec![(0, pod("w0", &web, Some(anti(HOST, &web))))],
                pod("other", &db, None),
                vec!["n0", "n1", "n2", "n3"],
            ),
            (
                "affinity to a db pod on the same host",
                vec![(3, pod("db", &db, None))],
                pod("app", &web, Some(affine(HOST, &db))),
                vec!["n3"],
            ),
            (
                "affinity to a db pod in the same zone",
                vec![(3, pod("db", &db, None))],
                pod("app", &web, Some(affine(ZONE, &db))),
                vec!["n2", "n3"],
            ),
            (
                "affinity to a label no pod has: nowhere",
                vec![(3, pod("db", &db, None))],
                pod("app", &web, Some(affine(ZONE, &[("role", "cache")]))),
                vec![],
            ),
            (
                "the first pod of a self-affine group goes anywhere",
                vec![],
                pod("w0", &web, Some(affine(ZONE, &web))),
                vec!["n0", "n1", "n2", "n3"],
            ),
            (
                "then the next joins its zone",
                vec![(2, pod("w0", &web, None))],
                pod("w1", &web, Some(affine(ZONE, &web))),
                vec!["n2", "n3"],
            ),
            (
                "a pod in another namespace is not seen by a term of this one",
                vec![(0, {
                    let mut p = pod("w0", &web, None);
                    p.key = PodKey::new("elsewhere", "w0");
                    p
                })],
                pod("w1", &web, Some(anti(HOST, &web))),
                vec!["n0", "n1", "n2", "n3"],
            ),
        ];
        for (what, existing, incoming, want) in cases {
            let snap = cluster(&existing, 4);
            assert_eq!(feasible(&incoming, &snap), want, "{what}");
        }
    }

    #[test]
    fn a_node_without_the_topology_key_fails_required_affinity_not_anti_affinity() {
        let web = [("app", "web")];
        let mut n = NodeInfo::new("bare", Resources::cpu_mem(8000, 16 << 30), 110);
        n.labels = Labels::default();
        let snap = Snapshot::from_nodes([n]);
        assert!(feasible(&pod("a", &web, Some(affine("rack", &web))), &snap).is_empty());
        assert_eq!(
            feasible(&pod("b", &web, Some(anti("rack", &web))), &snap),
            vec!["bare"]
        );
    }

    #[test]
    fn namespace_selectors_read_namespace_labels() {
        let web = [("app", "web")];
        let mut in_team = pod("w0", &web, None);
        in_team.key = PodKey::new("team-a", "w0");
        let mut t = term(HOST, &web);
        t.namespaces = NamespaceScope {
            names: vec![],
            selector: Some(sel(&[("team", "a")])),
        };
        let incoming = pod(
            "w1",
            &web,
            Some(PodAffinity {
                required_anti: vec![t.clone()],
                ..Default::default()
            }),
        );
        let mut cache = crate::cache::ClusterCache::default();
        let snap0 = cluster(&[(0, in_team)], 2);
        for (_, n) in snap0.nodes() {
            cache.add_node_with_pods((**n).clone());
        }
        // Unknown namespace labels: the selector matches nothing.
        assert_eq!(feasible(&incoming, &cache.snapshot()), vec!["n0", "n1"]);
        cache.set_namespace("team-a", Some(Labels::new([("team", "a")])));
        assert_eq!(feasible(&incoming, &cache.snapshot()), vec!["n1"]);
        // An empty namespaceSelector is every namespace.
        t.namespaces.selector = Some(LabelSelector::default());
        let everywhere = pod(
            "w2",
            &web,
            Some(PodAffinity {
                required_anti: vec![t],
                ..Default::default()
            }),
        );
        let snap = cluster(
            &[(1, {
                let mut p = pod("x", &web, None);
                p.key = PodKey::new("unlabelled", "x");
                p
            })],
            2,
        );
        assert_eq!(feasible(&everywhere, &snap), vec!["n0"]);
    }

    #[test]
    fn rejections_use_kube_schedulers_words() {
        let web = [("app", "web")];
        let snap = cluster(&[(0, pod("w0", &web, Some(anti(HOST, &web))))], 1);
        let d = diagnose(&Profile::default(), &pod("w1", &web, None), &snap);
        assert!(
            d.message()
                .contains("1 node(s) didn't satisfy existing pods anti-affinity rules"),
            "{}",
            d.message()
        );
        let d = diagnose(
            &Profile::default(),
            &pod("w1", &web, Some(anti(HOST, &web))),
            &cluster(&[(0, pod("w0", &web, None))], 1),
        );
        assert!(
            d.message()
                .contains("1 node(s) didn't match pod anti-affinity rules"),
            "{}",
            d.message()
        );
        let d = diagnose(
            &Profile::default(),
            &pod("app", &web, Some(affine(HOST, &[("role", "db")]))),
            &cluster(&[], 1),
        );
        assert!(
            d.message()
                .contains("1 node(s) didn't match pod affinity rules"),
            "{}",
            d.message()
        );
    }

    #[test]
    fn preferred_terms_and_existing_pods_terms_score_like_kube_scheduler() {
        let web = [("app", "web")];
        let db = [("role", "db")];
        let prefer = |w: i32, t: PodAffinityTerm, anti: bool| PodAffinity {
            preferred: if anti { vec![] } else { vec![(w, t.clone())] },
            preferred_anti: if anti { vec![(w, t)] } else { vec![] },
            ..Default::default()
        };
        let profile = Profile::default();
        // Preferred affinity to the db pod's zone: 10 there, 0 elsewhere.
        let snap = cluster(&[(3, pod("db", &db, None))], 6);
        let p = pod("app", &web, Some(prefer(10, term(ZONE, &db), false)));
        let s = State::new(&p, &snap, true, true).expect("counted");
        let raw: Vec<i64> = snap.nodes().map(|(_, n)| s.score(n)).collect();
        assert_eq!(raw, vec![0, 0, 10, 10, 0, 0]);
        // Preferred anti-affinity: negative where the match is.
        let p = pod("app", &web, Some(prefer(7, term(HOST, &db), true)));
        let s = State::new(&p, &snap, true, true).expect("counted");
        let raw: Vec<i64> = snap.nodes().map(|(_, n)| s.score(n)).collect();
        assert_eq!(raw, vec![0, 0, 0, -7, 0, 0]);
        // An existing pod's required affinity to the incoming pod weighs
        // hardPodAffinityWeight; its preferred terms their weight.
        let existing = pod(
            "e",
            &db,
            Some(PodAffinity {
                required: vec![term(HOST, &web)],
                preferred: vec![(5, term(ZONE, &web))],
                ..Default::default()
            }),
        );
        let snap = cluster(&[(4, existing)], 6);
        let p = pod("w", &web, None);
        let s = State::new(&p, &snap, true, true).expect("existing pods have terms");
        let raw: Vec<i64> = snap.nodes().map(|(_, n)| s.score(n)).collect();
        assert_eq!(raw, vec![0, 0, 0, 0, 5 + HARD_POD_AFFINITY_WEIGHT, 5]);
        // And the cycle follows it.
        match schedule_one(&profile, &p, &snap) {
            Outcome::Placed(pl) => assert_eq!(&*pl.node, "n4"),
            o => panic!("{o:?}"),
        }
        assert_eq!(normalized(6, 0, 6), 100);
        assert_eq!(normalized(5, 0, 6), 83);
        assert_eq!(normalized(-7, -7, 0), 0);
        assert_eq!(normalized(3, 3, 3), 0);
    }

    #[test]
    fn nothing_is_counted_when_no_pod_has_terms() {
        let snap = cluster(&[(0, pod("w0", &[("app", "web")], None))], 2);
        assert!(!snap.may_have_pod_affinity());
        assert!(State::new(&pod("w1", &[("app", "web")], None), &snap, true, true).is_none());
        let snap = cluster(&[(0, pod("w0", &[], Some(anti(HOST, &[("x", "y")]))))], 2);
        assert!(snap.may_have_pod_affinity());
    }
}
