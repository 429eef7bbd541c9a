//! What the extender knows beyond the node snapshot: gang members and PodGroups, the
//! gang plans it handed out, fair-share queues and what each holds, and the pods it
//! admitted whose binds the watch has not shown yet.
//!
//! Pure: the watchers (or a test) feed it pods, PodGroups, Queues and namespaces; the
//! verbs ask it questions under one lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use drover::gang::{GangCounts, GangKey, GangProblem, GangTracker, MemberState, PodGroupInfo};
use drover::model::{Phase, PodInfo, PodKey, Resources};
use drover::quota::{Contribution, DEFAULT_QUEUE, Ledger, QueueSpec, QueueTree};

/// How long a pod the extender admitted counts against its queue before the watch shows
/// it bound (or it is deleted). kube-scheduler binds within a second or two of the
/// filter call; a pod it never binds stops counting after this.
pub const ADMISSION_TTL_MS: i64 = 30_000;

/// Where the members of a gang go, as decided all together.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Member → (the member as planned, its node).
    pub members: BTreeMap<PodKey, (Arc<PodInfo>, Arc<str>)>,
    /// When the plan lapses (ms since the epoch).
    pub until_ms: i64,
}

#[derive(Clone, Debug)]
struct Admission {
    queue: Arc<str>,
    requests: Resources,
    until_ms: i64,
}

/// The extender's index of gangs, plans and queues.
#[derive(Debug, Default)]
pub struct ClusterIndex {
    gangs: GangTracker,
    /// The newest version of every pod that names a gang.
    gang_pods: HashMap<PodKey, Arc<PodInfo>>,
    /// UID → key, for the pods in `gang_pods`.
    uids: HashMap<Arc<str>, PodKey>,
    plans: HashMap<GangKey, Plan>,
    queue_specs: BTreeMap<Arc<str>, QueueSpec>,
    tree: QueueTree,
    /// Some queue limits something: usage matters.
    quotas_active: bool,
    namespace_queues: HashMap<Arc<str>, Arc<str>>,
    /// What every pod on a node holds, per queue.
    ledger: Ledger,
    /// Pods on nodes: their own queue label and requests (to move them when their
    /// namespace's default queue changes).
    assigned: HashMap<PodKey, (Option<Arc<str>>, Resources, i32)>,
    admitted: HashMap<PodKey, Admission>,
    exclusive_namespaces: Vec<String>,
    /// Per gang: a counter bumped whenever its members change, and when (ms).
    gang_versions: HashMap<GangKey, (u64, i64)>,
}

impl ClusterIndex {
    /// An empty index; pods in `exclusive_namespaces` are exclusive (drover's config).
    pub fn new(exclusive_namespaces: Vec<String>) -> Self {
        ClusterIndex {
            exclusive_namespaces,
            ..Default::default()
        }
    }

    /// Applies the config's rules to a pod read from the API (exclusive namespaces),
    /// as drover's scheduler does before it decides anything.
    pub fn prepare(&self, mut pod: PodInfo) -> PodInfo {
        if !pod.exclusive
            && self
                .exclusive_namespaces
                .iter()
                .any(|n| **n == *pod.key.namespace)
        {
            pod.exclusive = true;
        }
        pod
    }

    /// A pod was added or changed.
    pub fn apply_pod(&mut self, pod: PodInfo) {
        let pod = Arc::new(self.prepare(pod));
        let key = pod.key.clone();
        let ended = pod.phase.is_terminal();
        if pod.node_name.is_some() && !ended {
            let queue = self.queue_name(&pod);
            self.ledger.set(
                &key,
                Some(Contribution {
                    queue,
                    requests: pod.requests.clone(),
                    placed: true,
                    priority: pod.priority,
                }),
            );
            self.assigned.insert(
                key.clone(),
                (pod.queue.clone(), pod.requests.clone(), pod.priority),
            );
            self.admitted.remove(&key);
        } else {
            if self.assigned.remove(&key).is_some() {
                self.ledger.set(&key, None);
            }
            if ended || pod.deleting {
                self.admitted.remove(&key);
            }
        }
        let state = match (&pod.gang, pod.phase) {
            (Some(g), _) if g.conflict.is_some() => None,
            (None, _) => None,
            (Some(_), Phase::Succeeded) => Some(MemberState::Succeeded),
            (Some(_), Phase::Failed) => Some(MemberState::Failed),
            (Some(_), _) if pod.node_name.is_some() => Some(MemberState::Assigned {
                running: pod.phase == Phase::Running,
            }),
            (Some(_), _) if pod.deleting => None,
            (Some(_), _) => Some(MemberState::Pending),
        };
        match state {
            Some(s) => {
                if let Some(g) = self.gangs.observe(&pod, s) {
                    self.bump(&g);
                }
                if let Some(old) = self.gang_pods.insert(key.clone(), pod.clone())
                    && old.uid != pod.uid
                {
                    self.uids.remove(&old.uid);
                }
                if !pod.uid.is_empty() {
                    self.uids.insert(pod.uid.clone(), key);
                }
            }
            None => self.forget_member(&key),
        }
    }

    fn forget_member(&mut self, key: &PodKey) {
        if let Some(g) = self.gangs.gang_of(key).cloned() {
            self.bump(&g);
        }
        self.gangs.forget(key);
        if let Some(old) = self.gang_pods.remove(key) {
            self.uids.remove(&old.uid);
        }
    }

    fn bump(&mut self, gang: &GangKey) {
        let now = k8s_openapi::jiff::Timestamp::now().as_millisecond();
        let e = self.gang_versions.entry(gang.clone()).or_insert((0, now));
        *e = (e.0 + 1, now);
    }

    /// The gang's change counter and when it last changed (ms): a member arrived,
    /// left, or changed state.
    pub fn gang_version(&self, gang: &GangKey) -> (u64, i64) {
        self.gang_versions.get(gang).copied().unwrap_or((0, 0))
    }

    /// A pod was deleted.
    pub fn delete_pod(&mut self, key: &PodKey) {
        if self.assigned.remove(key).is_some() {
            self.ledger.set(key, None);
        }
        self.admitted.remove(key);
        self.forget_member(key);
    }

    /// Keys of every pod the index holds (for reconciling after a relist).
    pub fn pod_keys(&self) -> Vec<PodKey> {
        let mut v: Vec<PodKey> = self
            .gang_pods
            .keys()
            .chain(self.assigned.keys())
            .cloned()
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// A PodGroup was added or changed.
    pub fn apply_group(&mut self, group: PodGroupInfo) {
        self.plans.remove(&group.key);
        self.bump(&group.key);
        self.gangs.upsert_group(group);
    }

    /// A PodGroup was deleted.
    pub fn delete_group(&mut self, key: &GangKey) {
        self.plans.remove(key);
        self.gangs.delete_group(key);
    }

    /// Every PodGroup's key.
    pub fn group_keys(&self) -> Vec<GangKey> {
        self.gangs.group_keys()
    }

    /// A Queue was added or changed. Returns the tree's problems that are new.
    pub fn apply_queue(&mut self, spec: QueueSpec) -> Vec<String> {
        self.queue_specs.insert(spec.name.clone(), spec);
        self.rebuild_tree()
    }

    /// A Queue was deleted. Returns the tree's problems that are new.
    pub fn delete_queue(&mut self, name: &str) -> Vec<String> {
        self.queue_specs.remove(name);
        self.rebuild_tree()
    }

    /// Names of every Queue.
    pub fn queue_names(&self) -> Vec<Arc<str>> {
        self.queue_specs.keys().cloned().collect()
    }

    fn rebuild_tree(&mut self) -> Vec<String> {
        let before: Vec<String> = self.tree.problems().map(|p| p.to_string()).collect();
        self.tree = QueueTree::build(self.queue_specs.values().cloned());
        self.quotas_active = self.tree.queues().any(|q| q.max.is_some());
        self.tree
            .problems()
            .map(|p| p.to_string())
            .filter(|p| !before.contains(p))
            .collect()
    }

    /// A namespace's `drover.dev/queue` label is now `queue` (or absent).
    pub fn set_namespace_queue(&mut self, namespace: &str, queue: Option<Arc<str>>) {
        let before = self.namespace_queues.get(namespace).cloned();
        if before == queue {
            return;
        }
        match queue {
            Some(q) => self.namespace_queues.insert(namespace.into(), q),
            None => self.namespace_queues.remove(namespace),
        };
        let moved: Vec<(PodKey, Resources, i32)> = self
            .assigned
            .iter()
            .filter(|(k, (label, _, _))| label.is_none() && *k.namespace == *namespace)
            .map(|(k, (_, r, p))| (k.clone(), r.clone(), *p))
            .collect();
        let q = self
            .namespace_queues
            .get(namespace)
            .cloned()
            .unwrap_or_else(|| DEFAULT_QUEUE.into());
        for (k, requests, priority) in moved {
            self.ledger.set(
                &k,
                Some(Contribution {
                    queue: q.clone(),
                    requests,
                    placed: true,
                    priority,
                }),
            );
        }
    }

    /// Namespaces whose default queue is known.
    pub fn namespaces(&self) -> Vec<Arc<str>> {
        self.namespace_queues.keys().cloned().collect()
    }

    /// The pod's fair-share queue: its label, else its namespace's, else `default`.
    pub fn queue_name(&self, pod: &PodInfo) -> Arc<str> {
        pod.queue
            .clone()
            .or_else(|| self.namespace_queues.get(&*pod.key.namespace).cloned())
            .unwrap_or_else(|| DEFAULT_QUEUE.into())
    }

    /// Why `queue` cannot take `request` now, if it cannot: drover's own admission
    /// (`QueueTree::admit`) over what pods on nodes hold plus what the extender admitted
    /// and the watch has not shown bound yet (except the pods in `exclude`, the ones
    /// being asked about).
    pub fn quota_refusal(
        &self,
        queue: &str,
        request: &Resources,
        exclude: &[PodKey],
        now_ms: i64,
    ) -> Option<String> {
        if !self.quotas_active {
            // Nothing is limited: only invalid or unknown queues refuse.
            return self.tree.admit(&Default::default(), queue, request);
        }
        let mut usage = self.ledger.usage(&self.tree);
        for (k, a) in &self.admitted {
            if a.until_ms > now_ms && !exclude.contains(k) {
                usage.charge(&self.tree, &a.queue, &a.requests);
            }
        }
        self.tree.admit(&usage, queue, request)
    }

    /// Counts `pod` against its queue until the watch shows it bound.
    pub fn admit(&mut self, pod: &PodInfo, now_ms: i64) {
        if !self.quotas_active {
            return;
        }
        let queue = self.queue_name(pod);
        self.admitted.insert(
            pod.key.clone(),
            Admission {
                queue,
                requests: pod.requests.clone(),
                until_ms: now_ms + ADMISSION_TTL_MS,
            },
        );
    }

    /// Drops plans and admissions that lapsed, and change records of gangs that are
    /// gone.
    pub fn expire(&mut self, now_ms: i64) {
        self.plans.retain(|_, p| p.until_ms > now_ms);
        self.admitted.retain(|_, a| a.until_ms > now_ms);
        if self.gang_versions.len() > 2 * self.gang_pods.len() + 64 {
            let live: std::collections::HashSet<GangKey> = self.gangs.gangs().cloned().collect();
            self.gang_versions.retain(|g, _| live.contains(g));
        }
    }

    /// The gang's minimum member count, or why it has none.
    pub fn min_member(&self, gang: &GangKey) -> Result<usize, GangProblem> {
        self.gangs.min_member(gang)
    }

    /// Member counts of the gang.
    pub fn counts(&self, gang: &GangKey) -> GangCounts {
        self.gangs.counts(gang)
    }

    /// The gang's PodGroup, if it has one.
    pub fn group(&self, gang: &GangKey) -> Option<&PodGroupInfo> {
        self.gangs.group(gang)
    }

    /// The gang's members without a node that `scheduler` schedules (the ones
    /// kube-scheduler will ask about), oldest first.
    pub fn pending_members(&self, gang: &GangKey, scheduler: &str) -> Vec<Arc<PodInfo>> {
        let mut v: Vec<Arc<PodInfo>> = self
            .gangs
            .members_in(gang, true)
            .iter()
            .filter_map(|k| self.gang_pods.get(k))
            .filter(|p| p.node_name.is_none() && !p.deleting && *p.scheduler_name == *scheduler)
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.created_ms, &a.key).cmp(&(b.created_ms, &b.key)));
        v
    }

    /// The gang's members on nodes.
    pub fn assigned_members(&self, gang: &GangKey) -> Vec<Arc<PodInfo>> {
        self.gangs
            .members_in(gang, false)
            .iter()
            .filter_map(|k| self.gang_pods.get(k))
            .cloned()
            .collect()
    }

    /// The gang member with this UID, if the index holds it.
    pub fn member_by_uid(&self, uid: &str) -> Option<&Arc<PodInfo>> {
        self.gang_pods.get(self.uids.get(uid)?)
    }

    /// The plan that names this member, and its node.
    pub fn planned_node(&self, gang: &GangKey, key: &PodKey) -> Option<Arc<str>> {
        self.plans
            .get(gang)?
            .members
            .get(key)
            .map(|(_, n)| n.clone())
    }

    /// Remembers where a gang's members go.
    pub fn set_plan(&mut self, gang: GangKey, plan: Plan) {
        self.plans.insert(gang, plan);
    }

    /// Forgets a gang's plan (a planned node could no longer take its member).
    pub fn drop_plan(&mut self, gang: &GangKey) {
        self.plans.remove(gang);
    }

    /// Number of plans held.
    pub fn plan_count(&self) -> usize {
        self.plans.len()
    }

    /// Planned members not yet on a node (other than `except`), with their nodes: they
    /// count on those nodes for every other pod, so nobody takes a gang's room between
    /// its members' binds.
    pub fn planned_unbound(&self, except: &PodKey) -> Vec<(Arc<PodInfo>, Arc<str>)> {
        let mut out = Vec::new();
        for plan in self.plans.values() {
            for (key, (pod, node)) in &plan.members {
                if key == except {
                    continue;
                }
                let bound = self
                    .gang_pods
                    .get(key)
                    .is_some_and(|p| p.node_name.is_some() || p.uid != pod.uid);
                if !bound {
                    out.push((pod.clone(), node.clone()));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover::model::GangRef;
    use drover::model::ResourceKind;
    use drover::quota::QUEUE_LABEL;

    fn pod(name: &str, node: Option<&str>, cpu: i64) -> PodInfo {
        PodInfo {
            key: PodKey::new("ns", name),
            uid: format!("uid-{name}").into(),
            scheduler_name: "default-scheduler".into(),
            node_name: node.map(Into::into),
            requests: Resources::cpu_mem(cpu, 0),
            ..Default::default()
        }
    }

    fn member(name: &str, node: Option<&str>) -> PodInfo {
        PodInfo {
            gang: Some(GangRef {
                name: "g".into(),
                min_member: Some("2".into()),
                ..Default::default()
            }),
            ..pod(name, node, 1000)
        }
    }

    #[test]
    fn gang_members_follow_their_pods() {
        let mut ix = ClusterIndex::default();
        let g = GangKey::new("ns", "g");
        ix.apply_pod(member("a", None));
        ix.apply_pod(member("b", Some("n1")));
        assert_eq!(ix.min_member(&g), Ok(2));
        assert_eq!(ix.counts(&g).pending, 1);
        assert_eq!(ix.counts(&g).scheduled, 1);
        assert_eq!(ix.pending_members(&g, "default-scheduler").len(), 1);
        assert!(ix.pending_members(&g, "drover").is_empty());
        assert_eq!(ix.member_by_uid("uid-b").unwrap().key.name.as_ref(), "b");
        ix.delete_pod(&PodKey::new("ns", "b"));
        assert!(ix.member_by_uid("uid-b").is_none());
        assert_eq!(ix.counts(&g).scheduled, 0);
        // A pod that leaves the gang is forgotten.
        ix.apply_pod(pod("a", None, 1));
        assert_eq!(ix.counts(&g).pending, 0);
    }

    #[test]
    fn quota_counts_bound_pods_and_recent_admissions() {
        let mut ix = ClusterIndex::default();
        let mut max = Resources::default();
        max.set(&ResourceKind::Cpu, 2000);
        ix.apply_queue(QueueSpec {
            name: "team".into(),
            max: Some(max),
            max_listed: vec![ResourceKind::Cpu],
            weight: 1,
            ..Default::default()
        });
        let team = |name: &str, node: Option<&str>| PodInfo {
            queue: Some("team".into()),
            ..pod(name, node, 1000)
        };
        ix.apply_pod(team("a", Some("n1")));
        let b = team("b", None);
        assert_eq!(
            ix.quota_refusal("team", &b.requests, std::slice::from_ref(&b.key), 0),
            None
        );
        ix.admit(&b, 0);
        let c = team("c", None);
        let why = ix
            .quota_refusal("team", &c.requests, std::slice::from_ref(&c.key), 1)
            .unwrap();
        assert!(why.contains("would exceed its max cpu"), "{why}");
        // b asking again does not count against itself.
        assert_eq!(
            ix.quota_refusal("team", &b.requests, std::slice::from_ref(&b.key), 1),
            None
        );
        // The admission lapses.
        ix.expire(ADMISSION_TTL_MS + 1);
        assert_eq!(
            ix.quota_refusal("team", &c.requests, &[], ADMISSION_TTL_MS + 1),
            None
        );
        // A namespace default queue moves its unlabelled pods.
        ix.apply_pod(pod("d", Some("n1"), 1000));
        ix.set_namespace_queue("ns", Some("team".into()));
        let why = ix.quota_refusal("team", &c.requests, &[], ADMISSION_TTL_MS + 1);
        assert!(why.is_some(), "a and d both count now");
        // An unknown queue is refused, the implicit default queue never.
        assert!(
            ix.quota_refusal("ghost", &c.requests, &[], 0)
                .unwrap()
                .contains(QUEUE_LABEL)
        );
        assert_eq!(ix.quota_refusal(DEFAULT_QUEUE, &c.requests, &[], 0), None);
    }

    #[test]
    fn without_queues_only_unknown_queue_names_are_refused() {
        let ix = ClusterIndex::default();
        let r = Resources::cpu_mem(1, 1);
        assert_eq!(ix.quota_refusal(DEFAULT_QUEUE, &r, &[], 0), None);
        assert!(ix.quota_refusal("ghost", &r, &[], 0).is_some());
    }

    #[test]
    fn planned_members_count_until_bound() {
        let mut ix = ClusterIndex::default();
        let g = GangKey::new("ns", "g");
        let a = Arc::new(member("a", None));
        let b = Arc::new(member("b", None));
        ix.apply_pod((*a).clone());
        ix.apply_pod((*b).clone());
        ix.set_plan(
            g.clone(),
            Plan {
                members: [
                    (a.key.clone(), (a.clone(), "n1".into())),
                    (b.key.clone(), (b.clone(), "n2".into())),
                ]
                .into(),
                until_ms: 100,
            },
        );
        assert_eq!(ix.planned_node(&g, &a.key).as_deref(), Some("n1"));
        assert_eq!(ix.planned_unbound(&a.key).len(), 1);
        ix.apply_pod(member("b", Some("n2")));
        assert!(ix.planned_unbound(&a.key).is_empty());
        ix.expire(100);
        assert_eq!(ix.planned_node(&g, &a.key), None);
    }
}
