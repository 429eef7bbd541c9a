//! The cluster cache: the one owner of the scheduler's view of nodes and pods.
//!
//! It consumes watch events (`upsert_*` / `delete_*`) and the scheduler's own
//! decisions, and publishes immutable [`Snapshot`]s.
//!
//! A pod's life in the cache, as in kube-scheduler:
//!
//! ```text
//!   pending ──assume──▶ assumed ──watch shows it bound──▶ bound ──delete──▶ gone
//!                          │  ▲
//!              bind failed │  │ (bind is in flight; the pod counts on its node)
//!                 forget   ▼  │
//!                        pending ◀──expire── assumed with a deadline (bind succeeded, or a
//!                                            plan handed to kube-scheduler) and no watch
//!                                            confirmation before it
//! ```
//!
//! Every pod with a `nodeName` counts on its node, whoever bound it. Pods that name a
//! node the cache has not seen get a placeholder node that no filter accepts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::classes::{ClassId, NodeClasses};
use crate::model::{
    Claim, ClaimKey, CsiNode, DeviceClaim, Labels, NodeInfo, Numa, PodInfo, PodKey, Reservation,
    Resources, StorageClass, Volume, VolumeChoice, Volumes,
};
use crate::snapshot::{CHUNK, Chunk, Snapshot};

/// Where a pod stands in the cache.
#[derive(Clone, Debug)]
struct PodState {
    pod: Arc<PodInfo>,
    /// Node the pod counts on (bound or assumed).
    node: Option<Arc<str>>,
    /// Set while the pod is assumed: the deadline (ms) after which an unconfirmed
    /// assumption expires, or `None` while its bind is still in flight.
    assumed: Option<Option<i64>>,
}

/// What an upserted pod means for the scheduler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodChange {
    /// The pod is unbound and not ending: a candidate for scheduling.
    Pending,
    /// The pod is on a node (bound by anyone, or our assumption confirmed).
    Assigned,
    /// The pod ended or is being deleted: it holds no place to schedule.
    Terminal,
}

/// The cache. Not thread-safe by design: one task owns it.
#[derive(Debug, Default)]
pub struct ClusterCache {
    chunks: Vec<Arc<Chunk>>,
    index: Arc<HashMap<Arc<str>, usize>>,
    free_slots: Vec<usize>,
    pods: HashMap<PodKey, PodState>,
    generation: u64,
    /// Slots that carry a gang's reservation, by gang (namespace, name).
    reserved: BTreeMap<(Arc<str>, Arc<str>), Vec<usize>>,
    /// NUMA zones by node name (kept for nodes that are not here yet).
    numa: HashMap<Arc<str>, Arc<Numa>>,
    /// The nodes' equivalence classes.
    classes: NodeClasses,
    /// Namespaces' labels, by name.
    namespaces: Arc<HashMap<Arc<str>, Labels>>,
    /// Claims, volumes, classes and CSI nodes.
    volumes: Arc<Volumes>,
}

impl ClusterCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes the current state. Costs one `Arc` clone per chunk.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::from_parts(
            self.chunks.clone(),
            self.index.clone(),
            self.generation,
            self.classes.len(),
            // Nodes get their zones only from this table.
            !self.numa.is_empty(),
            self.namespaces.clone(),
        )
        .with_volumes(self.volumes.clone())
    }

    /// The node named `name`, if the cache holds it.
    pub fn node(&self, name: &str) -> Option<&Arc<NodeInfo>> {
        let &slot = self.index.get(name)?;
        self.chunks[slot / CHUNK].node(slot % CHUNK)
    }

    /// The claims, volumes, classes and CSI nodes the cache holds.
    pub fn volumes(&self) -> &Arc<Volumes> {
        &self.volumes
    }

    /// Changes the volume store with `f` and publishes a new generation. The store is
    /// copied only while a published snapshot shares it: the changes between two
    /// snapshots (a list of thousands of claims) copy it once.
    fn change_volumes(&mut self, f: impl FnOnce(&mut Volumes)) {
        f(Arc::make_mut(&mut self.volumes));
        self.generation += 1;
    }

    /// Claim `key` is now `claim` (`None`: deleted). Returns true when that changed
    /// anything. A claim that shows its volume bound ends the promise of that volume.
    pub fn set_claim(&mut self, key: ClaimKey, claim: Option<Claim>) -> bool {
        if self.volumes.claims.get(&key).map(|c| &**c) == claim.as_ref() {
            return false;
        }
        self.change_volumes(|v| match claim {
            Some(c) => {
                if c.bound {
                    v.assumed.retain(|_, k| *k != key);
                }
                v.claims.insert(key, Arc::new(c));
            }
            None => {
                v.assumed.retain(|_, k| *k != key);
                v.claims.remove(&key);
            }
        });
        true
    }

    /// Volume `name` is now `volume` (`None`: deleted). Returns true when that changed
    /// anything. A volume whose `claimRef` the API shows ends its promise.
    pub fn set_volume(&mut self, name: &str, volume: Option<Volume>) -> bool {
        if self.volumes.volumes.get(name).map(|v| &**v) == volume.as_ref() {
            return false;
        }
        self.change_volumes(|v| match volume {
            Some(pv) => {
                if pv.claim.is_some() {
                    v.assumed.remove(name);
                }
                v.volumes.insert(name.into(), Arc::new(pv));
            }
            None => {
                v.assumed.remove(name);
                v.volumes.remove(name);
            }
        });
        true
    }

    /// StorageClass `name` is now `class` (`None`: deleted).
    pub fn set_storage_class(&mut self, name: &str, class: Option<StorageClass>) -> bool {
        if self.volumes.classes.get(name).map(|c| &**c) == class.as_ref() {
            return false;
        }
        self.change_volumes(|v| {
            match class {
                Some(c) => v.classes.insert(name.into(), Arc::new(c)),
                None => v.classes.remove(name),
            };
        });
        true
    }

    /// The CSINode of node `name` is now `csi` (`None`: deleted).
    pub fn set_csi_node(&mut self, name: &str, csi: Option<CsiNode>) -> bool {
        if self.volumes.csi_nodes.get(name).map(|c| &**c) == csi.as_ref() {
            return false;
        }
        self.change_volumes(|v| {
            match csi {
                Some(c) => v.csi_nodes.insert(name.into(), Arc::new(c)),
                None => v.csi_nodes.remove(name),
            };
        });
        true
    }

    /// Resource claim `key` is now `claim` (`None`: deleted).
    pub fn set_device_claim(&mut self, key: ClaimKey, claim: Option<DeviceClaim>) -> bool {
        if self.volumes.device_claims.get(&key).map(|c| &**c) == claim.as_ref() {
            return false;
        }
        self.change_volumes(|v| {
            match claim {
                Some(c) => v.device_claims.insert(key, Arc::new(c)),
                None => v.device_claims.remove(&key),
            };
        });
        true
    }

    /// Holds the volumes that `choices` bind for their claims until the API shows the
    /// binding (or [`ClusterCache::forget_volumes`] gives them back), so that no other
    /// claim is offered them meanwhile.
    pub fn assume_volumes(&mut self, choices: &[VolumeChoice]) {
        if !choices
            .iter()
            .any(|c| matches!(c, VolumeChoice::Bind { .. }))
        {
            return;
        }
        self.change_volumes(|v| {
            for c in choices {
                if let VolumeChoice::Bind { claim, volume, .. } = c {
                    v.assumed.insert(volume.clone(), claim.clone());
                }
            }
        });
    }

    /// Gives back the volumes [`ClusterCache::assume_volumes`] held for `choices`.
    pub fn forget_volumes(&mut self, choices: &[VolumeChoice]) {
        // The volumes still held for these claims (the watch may have ended some).
        let held: Vec<Arc<str>> = choices
            .iter()
            .filter_map(|c| match c {
                VolumeChoice::Bind { claim, volume, .. }
                    if self.volumes.assumed.get(volume) == Some(claim) =>
                {
                    Some(volume.clone())
                }
                _ => None,
            })
            .collect();
        if held.is_empty() {
            return;
        }
        self.change_volumes(|v| {
            for volume in &held {
                v.assumed.remove(volume);
            }
        });
    }

    /// Namespace `name` now has `labels` (`None`: it is gone). Returns true when that
    /// changed anything.
    pub fn set_namespace(&mut self, name: &str, labels: Option<Labels>) -> bool {
        let changed = match &labels {
            Some(l) => self.namespaces.get(name) != Some(l),
            None => self.namespaces.contains_key(name),
        };
        if changed {
            let map = Arc::make_mut(&mut self.namespaces);
            match labels {
                Some(l) => {
                    map.insert(name.into(), l);
                }
                None => {
                    map.remove(name);
                }
            }
            self.generation += 1;
        }
        changed
    }

    /// The names of the namespaces the cache knows.
    pub fn namespace_names(&self) -> Vec<Arc<str>> {
        self.namespaces.keys().cloned().collect()
    }

    /// The generation of the newest state.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The pod with `key`, if the cache holds it (bound, assumed or pending).
    pub fn pod(&self, key: &PodKey) -> Option<&Arc<PodInfo>> {
        self.pods.get(key).map(|s| &s.pod)
    }

    /// Number of pods held on nodes (bound or assumed).
    pub fn placed_pods(&self) -> usize {
        self.pods.values().filter(|s| s.node.is_some()).count()
    }

    /// True when the pod is assumed and its binding not yet confirmed.
    pub fn is_assumed(&self, key: &PodKey) -> bool {
        self.pods.get(key).is_some_and(|s| s.assumed.is_some())
    }

    /// Puts `node` in `slot` (`None` frees it), copying the slot's chunk only if shared.
    fn set_slot(&mut self, slot: usize, node: Option<Arc<NodeInfo>>) {
        Arc::make_mut(&mut self.chunks[slot / CHUNK]).set(slot % CHUNK, node);
    }

    /// Applies `f` to the node in `slot`, copying it (and its chunk) only if shared.
    fn with_node(&mut self, slot: usize, f: impl FnOnce(&mut NodeInfo)) {
        Arc::make_mut(&mut self.chunks[slot / CHUNK]).update(slot % CHUNK, f);
        self.generation += 1;
    }

    fn alloc_slot(&mut self, name: Arc<str>) -> usize {
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            let s = self.chunks.len() * CHUNK;
            self.chunks.push(Arc::default());
            for i in (s + 1..s + CHUNK).rev() {
                self.free_slots.push(i);
            }
            s
        });
        Arc::make_mut(&mut self.index).insert(name, slot);
        slot
    }

    fn slot_for_node(&mut self, name: &Arc<str>) -> usize {
        if let Some(&s) = self.index.get(name) {
            return s;
        }
        let s = self.alloc_slot(name.clone());
        self.set_slot(
            s,
            Some(Arc::new(NodeInfo {
                name: name.clone(),
                known: false,
                ..Default::default()
            })),
        );
        s
    }

    /// Adds or updates a node from its spec and status. The pods already on it are
    /// kept; `info.pods`, `requested` and `used_ports` are ignored.
    pub fn upsert_node_info(&mut self, info: NodeInfo) {
        let name = info.name.clone();
        let slot = self.slot_for_node(&name);
        let numa = self.numa.get(&name).cloned();
        let mut classes = std::mem::take(&mut self.classes);
        self.with_node(slot, |n| {
            n.numa = numa;
            n.known = true;
            n.labels = info.labels;
            n.taints = info.taints;
            n.unschedulable = info.unschedulable;
            n.allocatable = info.allocatable;
            n.max_pods = info.max_pods;
            n.gpu_memory_mib = info.gpu_memory_mib;
            n.class = classes.reassign(n.class, n);
            n.generation += 1;
        });
        self.classes = classes;
    }

    /// Adds a node together with the pods already on it (fixtures, the simulator's
    /// start): each pod is upserted as bound to this node.
    pub fn add_node_with_pods(&mut self, mut info: NodeInfo) {
        let pods = std::mem::take(&mut info.pods);
        let name = info.name.clone();
        self.upsert_node_info(info);
        for p in pods {
            let mut p = (*p).clone();
            p.node_name = Some(name.clone());
            self.upsert_pod(p);
        }
    }

    /// Removes a node. Pods still on it stay in the cache on a placeholder until they
    /// are deleted, so the node's return does not double-count them.
    pub fn delete_node(&mut self, name: &str) {
        let Some(&slot) = self.index.get(name) else {
            return;
        };
        let (empty, class) = self
            .slot(slot)
            .map_or((false, ClassId::NONE), |n| (n.pods.is_empty(), n.class));
        self.classes.release(class);
        if empty {
            self.set_slot(slot, None);
            Arc::make_mut(&mut self.index).remove(name);
            self.free_slots.push(slot);
            self.generation += 1;
        } else {
            self.with_node(slot, |n| {
                n.known = false;
                n.class = ClassId::NONE;
                n.generation += 1;
            });
        }
    }

    fn slot(&self, slot: usize) -> Option<&Arc<NodeInfo>> {
        self.chunks.get(slot / CHUNK)?.node(slot % CHUNK)
    }

    fn detach(&mut self, key: &PodKey, node: &Arc<str>) {
        if let Some(&slot) = self.index.get(node) {
            self.with_node(slot, |n| {
                n.remove_pod(key);
            });
            // A placeholder that lost its last pod goes away.
            let gone = self
                .slot(slot)
                .is_some_and(|n| !n.known && n.pods.is_empty());
            if gone {
                self.set_slot(slot, None);
                Arc::make_mut(&mut self.index).remove(node);
                self.free_slots.push(slot);
            }
        }
    }

    fn attach(&mut self, pod: &Arc<PodInfo>, node: &Arc<str>) {
        let slot = self.slot_for_node(node);
        let p = pod.clone();
        self.with_node(slot, |n| n.add_pod(p));
    }

    /// Adds or updates a pod from the watch.
    pub fn upsert_pod(&mut self, pod: PodInfo) -> PodChange {
        let key = pod.key.clone();
        let pod = Arc::new(pod);
        let mut prev = self.pods.remove(&key);
        // A recreated pod (same name, new UID) replaces the old one entirely.
        if let Some(old) = prev.take_if(|p| p.pod.uid != pod.uid && !pod.uid.is_empty())
            && let Some(n) = old.node
        {
            self.detach(&key, &n);
        }
        let was_on = prev.as_ref().and_then(|p| p.node.clone());
        let assumed = prev.as_ref().and_then(|p| p.assumed);

        if pod.phase.is_terminal() || (pod.deleting && pod.node_name.is_none()) {
            if let Some(n) = was_on {
                self.detach(&key, &n);
            }
            return PodChange::Terminal;
        }
        match (pod.node_name.clone(), was_on) {
            (Some(bound), Some(held)) => {
                if bound != held {
                    self.detach(&key, &held);
                    self.attach(&pod, &bound);
                } else {
                    // Same node: refresh the pod's data (requests may have been resized).
                    let old = prev.as_ref().map(|p| p.pod.clone());
                    if old.is_none_or(|o| {
                        o.requests != pod.requests || o.host_ports != pod.host_ports
                    }) {
                        self.detach(&key, &held);
                        self.attach(&pod, &bound);
                    }
                }
                self.pods.insert(
                    key,
                    PodState {
                        pod,
                        node: Some(bound),
                        assumed: None,
                    },
                );
                PodChange::Assigned
            }
            (Some(bound), None) => {
                self.attach(&pod, &bound);
                self.pods.insert(
                    key,
                    PodState {
                        pod,
                        node: Some(bound),
                        assumed: None,
                    },
                );
                PodChange::Assigned
            }
            (None, Some(held)) => {
                // Still unbound in the API while we hold an assumption: keep it.
                if assumed.is_some() {
                    self.pods.insert(
                        key,
                        PodState {
                            pod,
                            node: Some(held),
                            assumed,
                        },
                    );
                    PodChange::Assigned
                } else {
                    self.detach(&key, &held);
                    self.pods.insert(
                        key,
                        PodState {
                            pod,
                            node: None,
                            assumed: None,
                        },
                    );
                    PodChange::Pending
                }
            }
            (None, None) => {
                self.pods.insert(
                    key,
                    PodState {
                        pod,
                        node: None,
                        assumed: None,
                    },
                );
                PodChange::Pending
            }
        }
    }

    /// Removes a pod (the watch says it is gone).
    pub fn delete_pod(&mut self, key: &PodKey) {
        if let Some(state) = self.pods.remove(key)
            && let Some(n) = state.node
        {
            self.detach(key, &n);
        }
    }

    /// Counts `pod` on `node` before the binding is confirmed.
    pub fn assume(&mut self, pod: &PodInfo, node: &str) {
        let node: Arc<str> = self
            .index
            .get_key_value(node)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| node.into());
        let mut placed = pod.clone();
        placed.node_name = Some(node.clone());
        let placed = Arc::new(placed);
        if let Some(prev) = self.pods.remove(&pod.key)
            && let Some(n) = prev.node
        {
            self.detach(&pod.key, &n);
        }
        self.attach(&placed, &node);
        self.pods.insert(
            pod.key.clone(),
            PodState {
                pod: placed,
                node: Some(node),
                assumed: Some(None),
            },
        );
    }

    /// The bind call succeeded: start the clock on the watch's confirmation.
    pub fn finish_binding(&mut self, key: &PodKey, deadline_ms: i64) {
        if let Some(s) = self.pods.get_mut(key)
            && s.assumed.is_some()
        {
            s.assumed = Some(Some(deadline_ms));
        }
    }

    /// The bind failed: the pod no longer counts on the node and is pending again.
    pub fn forget(&mut self, key: &PodKey) {
        if let Some(s) = self.pods.get(key)
            && s.assumed.is_some()
        {
            let mut state = self.pods.remove(key).expect("present");
            if let Some(n) = state.node.take() {
                self.detach(key, &n);
            }
            let mut pod = (*state.pod).clone();
            pod.node_name = None;
            self.pods.insert(
                key.clone(),
                PodState {
                    pod: Arc::new(pod),
                    node: None,
                    assumed: None,
                },
            );
        }
    }

    /// Takes back assumptions whose binding was never confirmed by the deadline: each
    /// pod no longer counts on its node and is pending again. Returns their keys.
    pub fn expire(&mut self, now_ms: i64) -> Vec<PodKey> {
        let mut expired: Vec<PodKey> = self
            .pods
            .iter()
            .filter(|(_, s)| matches!(s.assumed, Some(Some(d)) if d <= now_ms))
            .map(|(k, _)| k.clone())
            .collect();
        expired.sort();
        for k in &expired {
            self.forget(k);
        }
        expired
    }

    /// Pending pods (unbound, not assumed) — used after a restart or a relist.
    pub fn pending_pods(&self) -> impl Iterator<Item = &Arc<PodInfo>> {
        self.pods
            .values()
            .filter(|s| s.node.is_none())
            .map(|s| &s.pod)
    }

    /// Every pod the cache holds, in no particular order.
    pub fn pods(&self) -> impl Iterator<Item = &Arc<PodInfo>> {
        self.pods.values().map(|s| &s.pod)
    }

    /// Keys of every pod the cache holds, sorted (for reconciling after a relist).
    pub fn pod_keys(&self) -> Vec<PodKey> {
        let mut v: Vec<PodKey> = self.pods.keys().cloned().collect();
        v.sort_unstable();
        v
    }

    /// Sets (or, with `None`, clears) a node's NUMA zones.
    pub fn set_numa(&mut self, node: &str, numa: Option<Arc<Numa>>) {
        match &numa {
            Some(z) => {
                self.numa.insert(node.into(), z.clone());
            }
            None => {
                self.numa.remove(node);
            }
        }
        if let Some(&slot) = self.index.get(node)
            && self.slot(slot).is_some_and(|n| n.numa != numa)
        {
            self.with_node(slot, |n| {
                n.numa = numa;
                n.generation += 1;
            });
        }
    }

    /// Names of the nodes with NUMA zones set.
    pub fn numa_nodes(&self) -> Vec<Arc<str>> {
        self.numa.keys().cloned().collect()
    }

    /// Holds capacity for a waiting gang on the planned nodes (slot → amount, pods),
    /// replacing that gang's earlier reservation. A node holds one gang's reservation
    /// at a time: slots another gang holds are left to it.
    pub fn reserve(
        &mut self,
        namespace: &str,
        gang: &str,
        priority: i32,
        plan: &BTreeMap<usize, (Resources, i64)>,
    ) {
        self.clear_reservation(namespace, gang);
        let mut slots = Vec::new();
        for (&slot, (amount, pods)) in plan {
            if self.slot(slot).is_none_or(|n| n.reservation.is_some()) {
                continue;
            }
            let r = Arc::new(Reservation {
                namespace: namespace.into(),
                gang: gang.into(),
                priority,
                amount: amount.clone(),
                pods: *pods,
            });
            self.with_node(slot, |n| {
                n.reservation = Some(r);
                n.generation += 1;
            });
            slots.push(slot);
        }
        self.reserved.insert((namespace.into(), gang.into()), slots);
    }

    /// Drops the gang's reservation, if it has one.
    pub fn clear_reservation(&mut self, namespace: &str, gang: &str) {
        let key: (Arc<str>, Arc<str>) = (namespace.into(), gang.into());
        for slot in self.reserved.remove(&key).unwrap_or_default() {
            if self.slot(slot).is_some_and(|n| n.reservation.is_some()) {
                self.with_node(slot, |n| {
                    n.reservation = None;
                    n.generation += 1;
                });
            }
        }
    }

    /// Drops every reservation.
    pub fn clear_reservations(&mut self) {
        let gangs: Vec<(Arc<str>, Arc<str>)> = self.reserved.keys().cloned().collect();
        for (ns, g) in gangs {
            self.clear_reservation(&ns, &g);
        }
    }

    /// Names of every node the cache knows, sorted.
    pub fn node_names(&self) -> Vec<Arc<str>> {
        let mut v: Vec<Arc<str>> = self.index.keys().cloned().collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Phase, Resources};

    fn node(name: &str, cpu: i64) -> NodeInfo {
        NodeInfo::new(name, Resources::cpu_mem(cpu, 1 << 30), 110)
    }

    fn pod(name: &str, cpu: i64, node: Option<&str>) -> PodInfo {
        PodInfo {
            key: PodKey::new("ns", name),
            uid: format!("uid-{name}").into(),
            requests: Resources::cpu_mem(cpu, 0),
            node_name: node.map(Into::into),
            ..Default::default()
        }
    }

    fn requested(s: &Snapshot, n: &str) -> i64 {
        s.node(n).map_or(-1, |n| n.requested.cpu)
    }

    proptest::proptest! {
        /// Whatever nodes come, change and go, one class id of a snapshot means one
        /// class key, and every id is below the snapshot's class count.
        #[test]
        fn a_class_id_means_one_key(
            ops in proptest::collection::vec((0u8..8, 0u8..4, proptest::bool::ANY, 0u8..3), 1..60),
        ) {
            let mut c = ClusterCache::new();
            let mut held: Vec<Snapshot> = Vec::new();
            for (name, pool, delete, pods) in ops {
                let name = format!("n{name}");
                if delete {
                    c.delete_node(&name);
                } else {
                    let mut n = node(&name, 4000);
                    n.labels = crate::model::Labels::new([
                        (crate::classes::HOSTNAME_LABEL, name.as_str()),
                        ("pool", ["a", "b", "c", "d"][usize::from(pool)]),
                    ]);
                    n.unschedulable = pool == 3;
                    c.upsert_node_info(n);
                    for i in 0..pods {
                        c.upsert_pod(pod(&format!("{name}-{i}"), 10, Some(&name)));
                    }
                }
                held.push(c.snapshot());
            }
            for s in &held {
                let mut keys: HashMap<u32, crate::classes::ClassKey> = HashMap::new();
                for (_, n) in s.nodes() {
                    proptest::prop_assert_eq!(n.known, n.class != ClassId::NONE, "{}", n.name);
                    let Some(id) = n.class.index() else { continue };
                    proptest::prop_assert!(id < s.classes());
                    let key = crate::classes::ClassKey::of(n);
                    let first = keys.entry(n.class.0).or_insert_with(|| key.clone());
                    proptest::prop_assert_eq!(&*first, &key, "class {} of {}", id, n.name);
                }
            }
            proptest::prop_assert!(c.snapshot().classes() <= 4, "ids are reused");
        }
    }

    #[test]
    fn bound_pods_count_whoever_bound_them() {
        let mut c = ClusterCache::new();
        c.upsert_node_info(node("a", 4000));
        assert_eq!(c.upsert_pod(pod("x", 1000, Some("a"))), PodChange::Assigned);
        assert_eq!(c.upsert_pod(pod("y", 500, None)), PodChange::Pending);
        assert_eq!(requested(&c.snapshot(), "a"), 1000);
        c.delete_pod(&PodKey::new("ns", "x"));
        assert_eq!(requested(&c.snapshot(), "a"), 0);
    }

    #[test]
    fn assume_confirm_forget_expire() {
        let mut c = ClusterCache::new();
        c.upsert_node_info(node("a", 4000));
        let p = pod("p", 1000, None);
        c.upsert_pod(p.clone());
        c.assume(&p, "a");
        assert_eq!(requested(&c.snapshot(), "a"), 1000);
        // A stale watch event (still unbound) does not undo the assumption.
        assert_eq!(c.upsert_pod(p.clone()), PodChange::Assigned);
        assert_eq!(requested(&c.snapshot(), "a"), 1000);
        // Forget after a failed bind.
        c.forget(&p.key);
        assert_eq!(requested(&c.snapshot(), "a"), 0);
        assert_eq!(c.pending_pods().count(), 1);
        // Assume, bind ok, confirmation arrives: no double count, no expiry.
        c.assume(&p, "a");
        c.finish_binding(&p.key, 100);
        c.upsert_pod(pod("p", 1000, Some("a")));
        assert_eq!(requested(&c.snapshot(), "a"), 1000);
        assert!(c.expire(1_000).is_empty());
        // Assume, bind ok, no confirmation: expires.
        let q = pod("q", 500, None);
        c.assume(&q, "a");
        c.finish_binding(&q.key, 100);
        assert!(c.expire(50).is_empty(), "not before the deadline");
        assert_eq!(c.expire(100), vec![q.key.clone()]);
        assert_eq!(requested(&c.snapshot(), "a"), 1000);
        assert!(
            c.pending_pods().any(|p| p.key == q.key),
            "an expired pod is pending again, not forgotten"
        );
        assert!(!c.is_assumed(&q.key));
    }

    #[test]
    fn bound_elsewhere_moves_the_pod() {
        let mut c = ClusterCache::new();
        c.upsert_node_info(node("a", 4000));
        c.upsert_node_info(node("b", 4000));
        let p = pod("p", 1000, None);
        c.assume(&p, "a");
        c.upsert_pod(pod("p", 1000, Some("b")));
        let s = c.snapshot();
        assert_eq!((requested(&s, "a"), requested(&s, "b")), (0, 1000));
    }

    #[test]
    fn terminal_pods_release_their_node() {
        let mut c = ClusterCache::new();
        c.upsert_node_info(node("a", 4000));
        c.upsert_pod(pod("p", 1000, Some("a")));
        let mut done = pod("p", 1000, Some("a"));
        done.phase = Phase::Succeeded;
        assert_eq!(c.upsert_pod(done), PodChange::Terminal);
        assert_eq!(requested(&c.snapshot(), "a"), 0);
    }

    #[test]
    fn pods_on_unknown_nodes_wait_on_a_placeholder() {
        let mut c = ClusterCache::new();
        c.upsert_pod(pod("p", 1000, Some("late")));
        let s = c.snapshot();
        let n = s.node("late").expect("placeholder");
        assert!(!n.known);
        c.upsert_node_info(node("late", 4000));
        let s = c.snapshot();
        assert!(s.node("late").unwrap().known);
        assert_eq!(requested(&s, "late"), 1000);
        // Deleting the node keeps its pods' accounting until they go.
        c.delete_node("late");
        assert!(!c.snapshot().node("late").unwrap().known);
        c.delete_pod(&PodKey::new("ns", "p"));
        assert!(c.snapshot().node("late").is_none());
    }

    #[test]
    fn recreated_pod_with_new_uid_is_a_new_pod() {
        let mut c = ClusterCache::new();
        c.upsert_node_info(node("a", 4000));
        c.upsert_pod(pod("p", 1000, Some("a")));
        let mut again = pod("p", 2000, None);
        again.uid = "other".into();
        assert_eq!(c.upsert_pod(again), PodChange::Pending);
        assert_eq!(requested(&c.snapshot(), "a"), 0);
    }

    #[test]
    fn snapshots_share_untouched_chunks() {
        let mut c = ClusterCache::new();
        for i in 0..200 {
            c.upsert_node_info(node(&format!("n{i}"), 4000));
        }
        let before = c.snapshot();
        c.upsert_pod(pod("p", 1000, Some("n0")));
        let after = c.snapshot();
        let same: Vec<bool> = before
            .chunks()
            .iter()
            .zip(after.chunks())
            .map(|(a, b)| Arc::ptr_eq(a, b))
            .collect();
        assert_eq!(
            same.iter().filter(|s| !**s).count(),
            1,
            "only the changed chunk is copied: {same:?}"
        );
        assert_eq!(requested(&before, "n0"), 0, "old snapshots never change");
        assert_eq!(requested(&after, "n0"), 1000);
    }
}
