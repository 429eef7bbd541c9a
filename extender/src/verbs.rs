//! The verbs: kube-scheduler's questions answered by drover's own core.
//!
//! - **filter** runs drover's profile filters (`drover::framework::feasible`, and
//!   `rejections` for the reasons) over the candidates, after drover's rules that
//!   kube-scheduler lacks: gang readiness (a gang is decided all together by
//!   `drover::gang::decide`; until it fits, every node fails for its members; once it
//!   fits, each member is filtered to exactly its planned node), required topology
//!   (part of the gang decision) and fair-share queue admission
//!   (`drover::quota::QueueTree::admit`).
//! - **prioritize** maps drover's weighted score totals
//!   (`drover::framework::score_nodes`) onto 0..=10, keeping their order.
//! - **preempt** passes kube-scheduler's victims through, but never a part of a gang
//!   that would leave it below minMember.
//! - **bind** binds through the `binding` subresource with the pod's UID.
//!
//! The functions here take parsed arguments and return the verb's result, or a
//! [`RequestError`]; [`Extender::handle`] adds JSON on both sides and never panics on
//! any input.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use drover::config::Config;
use drover::framework::{NodeSource, Overlay, feasible, rejections, score_nodes};
use drover::gang::{self, GangDecision, GangKey, GangProblem};
use drover::k8s::convert::{ConvertError, pod_info};
use drover::model::{PodInfo, PodKey, Resources};
use drover::plugins::Reason;
use drover::snapshot::Snapshot;
use k8s_openapi::api::core::v1::Pod;
use rayon::prelude::*;
use serde::Serialize;

use crate::candidates::{Candidates, Subset};
use crate::error::RequestError;
use crate::index::{ClusterIndex, Plan};
use crate::wire::{
    ErrorResult, ExtenderArgs, ExtenderBindingArgs, ExtenderBindingResult, ExtenderFilterResult,
    ExtenderPreemptionArgs, ExtenderPreemptionResult, FailedNodesMap, HostPriority,
    HostPriorityList, MAX_EXTENDER_PRIORITY, MetaPod, MetaVictims, NodeList,
};

/// Below this many candidates the filters run on the calling thread.
const PARALLEL_MIN: usize = 512;

/// How long a gang plan holds by default: its members must all have come through
/// filter by then, or the gang is decided again.
pub const DEFAULT_PLAN_TTL: Duration = Duration::from_secs(60);

/// One of kube-scheduler's extender calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `filterVerb`.
    Filter,
    /// `prioritizeVerb`.
    Prioritize,
    /// `preemptVerb`.
    Preempt,
    /// `bindVerb`.
    Bind,
}

impl Verb {
    /// Every verb.
    pub const ALL: [Verb; 4] = [Verb::Filter, Verb::Prioritize, Verb::Preempt, Verb::Bind];

    /// The verb's name: the default path and the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Filter => "filter",
            Verb::Prioritize => "prioritize",
            Verb::Preempt => "preempt",
            Verb::Bind => "bind",
        }
    }
}

/// An HTTP answer: status and JSON body, and the error behind it if any.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body: the verb's result type.
    pub body: Vec<u8>,
    /// The error, when the call failed.
    pub error: Option<RequestError>,
}

impl Reply {
    fn ok<T: Serialize>(verb: Verb, result: &T) -> Reply {
        match serde_json::to_vec(result) {
            Ok(body) => Reply {
                status: 200,
                body,
                error: None,
            },
            Err(e) => Reply::error(
                verb,
                RequestError::Internal {
                    verb: verb.as_str(),
                    detail: format!("encoding the answer: {e}"),
                },
            ),
        }
    }

    /// The verb's result type carrying `error`'s message, with its status.
    pub fn error(verb: Verb, error: RequestError) -> Reply {
        let message = error.to_string();
        let body = match verb {
            Verb::Filter => serde_json::to_vec(&ExtenderFilterResult {
                error: message,
                ..Default::default()
            }),
            Verb::Bind => serde_json::to_vec(&ExtenderBindingResult { error: message }),
            Verb::Prioritize => serde_json::to_vec(&ErrorResult { error: message }),
            // ExtenderPreemptionResult has no Error field; Go ignores the extra key.
            Verb::Preempt => serde_json::to_vec(&serde_json::json!({
                "NodeNameToMetaVictims": null,
                "Error": message,
            })),
        }
        .unwrap_or_else(|_| b"{\"Error\":\"internal error\"}".to_vec());
        Reply {
            status: error.status(),
            body,
            error: Some(error),
        }
    }

    fn from<T: Serialize>(verb: Verb, r: Result<T, RequestError>) -> Reply {
        match r {
            Ok(v) => Reply::ok(verb, &v),
            Err(e) => Reply::error(verb, e),
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    verb: Verb,
    what: &'static str,
    body: &[u8],
) -> Result<T, RequestError> {
    serde_json::from_slice(body).map_err(|e| RequestError::Malformed {
        verb: verb.as_str(),
        what,
        detail: e.to_string(),
    })
}

/// A gang that waits for more members is asked about again within this long of a
/// change to its members: the watch that feeds the index may lag kube-scheduler's own
/// informer by a few milliseconds, and a member that was held on a stale count would
/// wait for the next unrelated cluster event (up to 5 minutes in a quiet cluster).
const GANG_GRACE_MS: i64 = 250;
/// How recent a change to a gang must be for the grace to apply.
const GANG_RECENT_MS: i64 = 2_000;

/// What drover decided for a pod before any node is looked at.
enum Verdict {
    /// Every node fails with this message; preemption would not help.
    Hold(String),
    /// Every node fails: the gang waits for members. The gang's change counter when
    /// decided, and when it last changed.
    HoldForMembers {
        message: String,
        gang: GangKey,
        version: (u64, i64),
    },
    /// A gang member that goes to exactly this node.
    Planned { gang: GangKey, node: Arc<str> },
    /// Run the filters.
    Normal,
}

/// drover answering kube-scheduler's extender calls.
pub struct Extender {
    config: Config,
    snapshot: Arc<ArcSwap<Snapshot>>,
    cache_synced: Arc<AtomicBool>,
    index: Mutex<ClusterIndex>,
    index_synced: AtomicBool,
    plan_ttl_ms: i64,
    client: Option<kube::Client>,
    gangs_planned: prometheus::IntCounter,
}

fn now_ms() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_millisecond()
}

impl Extender {
    /// An extender over the snapshot that drover's cache publishes (`cache_synced`
    /// tells when it has listed the cluster). It is ready once the index is synced
    /// too ([`Extender::set_index_synced`]).
    pub fn new(
        config: Config,
        snapshot: Arc<ArcSwap<Snapshot>>,
        cache_synced: Arc<AtomicBool>,
        plan_ttl: Duration,
    ) -> Self {
        let index = ClusterIndex::new(config.exclusive_namespaces.clone());
        Extender {
            config,
            snapshot,
            cache_synced,
            index: Mutex::new(index),
            index_synced: AtomicBool::new(false),
            plan_ttl_ms: i64::try_from(plan_ttl.as_millis()).unwrap_or(i64::MAX / 2),
            client: None,
            gangs_planned: prometheus::IntCounter::new(
                "drover_extender_gangs_planned_total",
                "Gangs the extender placed all together (one plan handed to all members)",
            )
            .expect("valid metric"),
        }
    }

    /// An extender over a fixed snapshot, ready at once (tests, benchmarks).
    pub fn with_snapshot(config: Config, snapshot: Snapshot) -> Self {
        let e = Extender::new(
            config,
            Arc::new(ArcSwap::from_pointee(snapshot)),
            Arc::new(AtomicBool::new(true)),
            DEFAULT_PLAN_TTL,
        );
        e.set_index_synced(true);
        e
    }

    /// Enables the bind verb with this client.
    pub fn with_client(mut self, client: kube::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Publishes a new snapshot (tests).
    pub fn set_snapshot(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }

    /// The index of gangs, plans and queues. A panic elsewhere while it was held
    /// leaves it usable.
    pub fn index(&self) -> MutexGuard<'_, ClusterIndex> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The index has listed pods, PodGroups, Queues and namespaces.
    pub fn set_index_synced(&self, synced: bool) {
        self.index_synced.store(synced, Ordering::SeqCst);
    }

    /// True once nodes, pods, gangs and queues are all listed.
    pub fn ready(&self) -> bool {
        self.cache_synced.load(Ordering::SeqCst) && self.index_synced.load(Ordering::SeqCst)
    }

    /// The counter of gangs placed all together (for the metrics registry).
    pub fn gangs_planned(&self) -> prometheus::IntCounter {
        self.gangs_planned.clone()
    }

    /// Answers a synchronous verb (filter, prioritize, preempt) from its raw body.
    /// Bind talks to the API server: use [`Extender::handle_bind`].
    pub fn handle(&self, verb: Verb, body: &[u8]) -> Reply {
        match verb {
            Verb::Filter => Reply::from(
                verb,
                parse(verb, "ExtenderArgs", body).and_then(|a| self.filter(a)),
            ),
            Verb::Prioritize => Reply::from(
                verb,
                parse(verb, "ExtenderArgs", body).and_then(|a| self.prioritize(a)),
            ),
            Verb::Preempt => Reply::from(
                verb,
                parse(verb, "ExtenderPreemptionArgs", body).and_then(|a| self.preempt(a)),
            ),
            Verb::Bind => Reply::error(
                verb,
                RequestError::Disabled {
                    verb: "bind",
                    detail: "bind is answered asynchronously (handle_bind)",
                },
            ),
        }
    }

    /// Answers bind from its raw body.
    pub async fn handle_bind(&self, body: &[u8]) -> Reply {
        let args = match parse::<ExtenderBindingArgs>(Verb::Bind, "ExtenderBindingArgs", body) {
            Ok(a) => a,
            Err(e) => return Reply::error(Verb::Bind, e),
        };
        Reply::from(Verb::Bind, self.bind(args).await)
    }

    fn check_ready(&self, verb: Verb) -> Result<(), RequestError> {
        if self.ready() {
            Ok(())
        } else {
            Err(RequestError::NotReady {
                verb: verb.as_str(),
            })
        }
    }

    /// The pod of a request, converted as drover converts pods from the watch.
    fn request_pod(&self, verb: Verb, pod: Option<Pod>) -> Result<Arc<PodInfo>, RequestError> {
        let pod = pod.ok_or(RequestError::MissingField {
            verb: verb.as_str(),
            field: "Pod",
            hint: "; kube-scheduler always sends the pod being scheduled",
        })?;
        let info = pod_info(&pod).map_err(|e| match e {
            ConvertError::NoName { .. } => RequestError::MissingField {
                verb: verb.as_str(),
                field: "Pod.metadata.name",
                hint: "",
            },
            e => RequestError::BadObject {
                verb: verb.as_str(),
                detail: format!("pod {e}"),
            },
        })?;
        Ok(Arc::new(self.index().prepare(info)))
    }

    fn candidates(&self, verb: Verb, args: ExtenderArgs) -> Result<Candidates, RequestError> {
        match (args.node_names, args.nodes) {
            (Some(names), _) => {
                Candidates::by_name(verb.as_str(), self.snapshot.load_full(), names)
            }
            (None, Some(list)) => {
                Candidates::whole(verb.as_str(), &self.snapshot.load(), list.items)
            }
            (None, None) => Err(RequestError::MissingField {
                verb: verb.as_str(),
                field: "NodeNames or Nodes",
                hint: "; kube-scheduler sends one of them (NodeNames with nodeCacheCapable: true)",
            }),
        }
    }

    /// Filter: which candidates can take the pod, and why the others cannot.
    pub fn filter(&self, args: ExtenderArgs) -> Result<ExtenderFilterResult, RequestError> {
        let verb = Verb::Filter;
        self.check_ready(verb)?;
        let pod = self.request_pod(verb, args.pod.clone())?;
        let cands = self.candidates(verb, args)?;
        let now = now_ms();
        let mut pass = vec![false; cands.slots.len()];
        let mut failed = FailedNodesMap::new();
        let mut unresolvable = FailedNodesMap::new();
        // A plan that no longer holds is dropped and the gang decided once more; a gang
        // that waits for members that may be arriving is decided again when they do.
        let mut replanned = false;
        let mut regraced = false;
        loop {
            let (verdict, planned) = {
                let mut ix = self.index();
                ix.expire(now);
                let v = self.verdict(&mut ix, &pod, &cands, now);
                (v, ix.planned_unbound(&pod.key))
            };
            let overlay = overlay(&cands.snapshot, &planned);
            let source: &dyn NodeSource = match &overlay {
                Some(o) => o,
                None => &*cands.snapshot,
            };
            let view = Subset::new(source, &cands.slots);
            match verdict {
                Verdict::HoldForMembers {
                    message,
                    gang,
                    version,
                } => {
                    if !regraced && now - version.1 < GANG_RECENT_MS {
                        regraced = true;
                        if self.await_gang_change(&gang, version.0) {
                            continue;
                        }
                    }
                    for n in &cands.names {
                        unresolvable.insert(n.clone(), message.clone());
                    }
                }
                Verdict::Hold(message) => {
                    for n in &cands.names {
                        unresolvable.insert(n.clone(), message.clone());
                    }
                }
                Verdict::Planned { gang, node } => {
                    let at = cands.position(&node);
                    let fits = at.and_then(|i| view.get(i)).map(|n| {
                        (
                            feasible(&self.config.profile, &pod, n),
                            first_reasons(&self.config.profile, &pod, n),
                        )
                    });
                    match (at, fits) {
                        (Some(i), Some((true, _))) => {
                            pass[i] = true;
                            let message = format!(
                                "gang {gang}: placed all together; this member goes to node {node}"
                            );
                            for (j, n) in cands.names.iter().enumerate() {
                                if j != i {
                                    unresolvable.insert(n.clone(), message.clone());
                                }
                            }
                        }
                        (at, fits) => {
                            let why = match (at, fits) {
                                (None, _) => {
                                    "kube-scheduler did not offer it for this member (its own filters \
                                     rejected it, or percentageOfNodesToScore is below 100)"
                                        .to_string()
                                }
                                (_, Some((_, reasons))) => format!("it no longer fits: {reasons}"),
                                _ => "it is gone".to_string(),
                            };
                            self.index().drop_plan(&gang);
                            if !replanned {
                                replanned = true;
                                tracing::info!(%gang, %node, %why, "gang plan dropped; deciding the gang again");
                                continue;
                            }
                            let message = format!(
                                "gang {gang}: planned node {node} cannot take this member: {why}; the gang is decided again on the next attempt"
                            );
                            for n in &cands.names {
                                unresolvable.insert(n.clone(), message.clone());
                            }
                        }
                    }
                }
                Verdict::Normal => {
                    self.run_filters(&pod, &view, &mut pass);
                    let rejected: Vec<usize> = (0..pass.len()).filter(|i| !pass[*i]).collect();
                    if !rejected.is_empty() {
                        let slots: Vec<usize> = rejected.iter().map(|i| cands.slots[*i]).collect();
                        let why: HashMap<Arc<str>, Vec<Reason>> =
                            rejections(&self.config.profile, &pod, &Subset::new(source, &slots))
                                .into_iter()
                                .collect();
                        for i in rejected {
                            let name = &cands.names[i];
                            match why.get(name.as_str()) {
                                Some(reasons) if reasons.iter().any(unresolvable_reason) => {
                                    unresolvable.insert(name.clone(), join(reasons));
                                }
                                Some(reasons) => {
                                    failed.insert(name.clone(), join(reasons));
                                }
                                None => {
                                    unresolvable.insert(
                                        name.clone(),
                                        "node is not usable in drover's cache".into(),
                                    );
                                }
                            }
                        }
                    }
                    if pass.iter().any(|p| *p) {
                        self.index().admit(&pod, now);
                    }
                }
            }
            break;
        }
        let mut result = ExtenderFilterResult {
            failed_nodes: Some(failed),
            failed_and_unresolvable_nodes: Some(unresolvable),
            ..Default::default()
        };
        match cands.whole {
            Some(nodes) => {
                let items = nodes
                    .into_iter()
                    .zip(&pass)
                    .filter(|(_, p)| **p)
                    .map(|(n, _)| n)
                    .collect();
                result.nodes = Some(NodeList {
                    items,
                    ..Default::default()
                });
            }
            None => {
                result.node_names = Some(
                    cands
                        .names
                        .into_iter()
                        .zip(&pass)
                        .filter(|(_, p)| **p)
                        .map(|(n, _)| n)
                        .collect(),
                );
            }
        }
        Ok(result)
    }

    /// Waits up to [`GANG_GRACE_MS`] for the gang's members to change; true if they did.
    fn await_gang_change(&self, gang: &GangKey, version: u64) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_millis(GANG_GRACE_MS as u64);
        while std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            if self.index().gang_version(gang).0 != version {
                return true;
            }
        }
        false
    }

    fn run_filters<N: NodeSource + ?Sized>(&self, pod: &PodInfo, view: &N, pass: &mut [bool]) {
        let profile = &self.config.profile;
        let check = |i: usize| view.get(i).is_some_and(|n| feasible(profile, pod, n));
        if pass.len() >= PARALLEL_MIN {
            pass.par_iter_mut()
                .enumerate()
                .for_each(|(i, p)| *p = check(i));
        } else {
            for (i, p) in pass.iter_mut().enumerate() {
                *p = check(i);
            }
        }
    }

    /// drover's rules before any node: gang readiness and plans, topology, quotas.
    fn verdict(
        &self,
        ix: &mut ClusterIndex,
        pod: &Arc<PodInfo>,
        cands: &Candidates,
        now: i64,
    ) -> Verdict {
        if let Some(g) = &pod.gang {
            if let Some(conflict) = &g.conflict {
                return Verdict::Hold(format!("pod {}: {conflict}", pod.key));
            }
            let gang = GangKey::of(pod).expect("the pod names a gang");
            if let Some(node) = ix.planned_node(&gang, &pod.key) {
                return Verdict::Planned { gang, node };
            }
            // None: the gang runs, and members beyond minMember go one by one.
            if let Some(v) = self.decide_gang(ix, &gang, pod, cands, now) {
                return v;
            }
        }
        let queue = ix.queue_name(pod);
        if let Some(why) =
            ix.quota_refusal(&queue, &pod.requests, std::slice::from_ref(&pod.key), now)
        {
            return Verdict::Hold(format!("pod {}: {why}", pod.key));
        }
        Verdict::Normal
    }

    /// Decides the gang of `pod` all together; `None` when the gang already runs.
    fn decide_gang(
        &self,
        ix: &mut ClusterIndex,
        gang: &GangKey,
        pod: &Arc<PodInfo>,
        cands: &Candidates,
        now: i64,
    ) -> Option<Verdict> {
        // Without a PodGroup the size comes from the members' annotation; the request
        // may be a member the watch has not delivered yet, whose own annotation counts.
        let own = pod
            .gang
            .as_ref()
            .and_then(|g| g.min_member.as_deref())
            .and_then(|m| m.trim().parse::<usize>().ok())
            .filter(|m| *m >= 1);
        let min = match (ix.min_member(gang), own) {
            (Ok(m), _) => m,
            (Err(GangProblem::NoPodGroup), Some(m)) => m,
            (Err(problem), _) => return Some(Verdict::Hold(problem.message(gang))),
        };
        let counts = ix.counts(gang);
        if counts.scheduled >= min {
            return None;
        }
        let mut pending: Vec<Arc<PodInfo>> = ix
            .pending_members(gang, &pod.scheduler_name)
            .into_iter()
            .filter(|p| p.key != pod.key)
            .collect();
        pending.push(pod.clone());
        pending.sort_by(|a, b| (a.created_ms, &a.key).cmp(&(b.created_ms, &b.key)));
        // Quota: the whole set must fit the queue's max; failing that, exactly the
        // members the gang still needs; failing that, it waits (as drover does).
        let keys: Vec<PodKey> = pending.iter().map(|p| p.key.clone()).collect();
        let queue = ix.queue_name(&pending[0]);
        let needed = min.saturating_sub(counts.scheduled).min(pending.len());
        let sum = |ps: &[Arc<PodInfo>]| {
            let mut r = Resources::default();
            for p in ps {
                r.add(&p.requests);
            }
            r
        };
        if ix
            .quota_refusal(&queue, &sum(&pending), &keys, now)
            .is_some()
        {
            if let Some(why) = ix.quota_refusal(&queue, &sum(&pending[..needed]), &keys, now) {
                return Some(Verdict::Hold(format!("gang {gang}: {why}")));
            }
            pending.truncate(needed);
        }
        let topology =
            match gang::topology_request(ix.group(gang), &pending, &self.config.topology_levels) {
                Some(Err(problem)) => {
                    return Some(Verdict::Hold(format!("gang {gang}: {problem}")));
                }
                Some(Ok(c)) => Some(c),
                None => None,
            };
        let min_resources = ix.group(gang).map(|g| g.min_resources.clone());
        let decision = gang::decide(
            &self.config.profile,
            gang,
            min,
            min_resources.as_ref(),
            topology.as_ref(),
            &pending,
            counts.scheduled,
            &cands.snapshot,
        );
        match decision {
            GangDecision::Running => None,
            GangDecision::Wait(message) if pending.len() < min - counts.scheduled => {
                tracing::debug!(%gang, %message, "gang waits for members");
                Some(Verdict::HoldForMembers {
                    message,
                    gang: gang.clone(),
                    version: ix.gang_version(gang),
                })
            }
            GangDecision::Wait(message) | GangDecision::NoFit { message, .. } => {
                tracing::debug!(%gang, %message, "gang held");
                Some(Verdict::Hold(message))
            }
            GangDecision::Placed { placed, where_ } => {
                tracing::info!(%gang, members = placed.len(), where_ = where_.as_deref().unwrap_or(""), "gang placed all together");
                self.gangs_planned.inc();
                let mut members = BTreeMap::new();
                for (member, _, node) in placed {
                    ix.admit(&member, now);
                    members.insert(member.key.clone(), (member, node));
                }
                let mine = members.get(&pod.key).map(|(_, n)| n.clone());
                let count = members.len();
                ix.set_plan(
                    gang.clone(),
                    Plan {
                        members,
                        until_ms: now + self.plan_ttl_ms,
                    },
                );
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

    /// Prioritize: drover's score totals over the candidates, mapped onto 0..=10 in
    /// the same order; nodes that fail drover's filters get 0.
    pub fn prioritize(&self, args: ExtenderArgs) -> Result<HostPriorityList, RequestError> {
        let verb = Verb::Prioritize;
        self.check_ready(verb)?;
        let pod = self.request_pod(verb, args.pod.clone())?;
        let cands = self.candidates(verb, args)?;
        let (planned_node, planned) = {
            let ix = self.index();
            let mine = GangKey::of(&pod).and_then(|g| ix.planned_node(&g, &pod.key));
            (mine, ix.planned_unbound(&pod.key))
        };
        let mut scores = vec![0i64; cands.slots.len()];
        if let Some(node) = planned_node {
            if let Some(i) = cands.position(&node) {
                scores[i] = MAX_EXTENDER_PRIORITY;
            }
        } else {
            let overlay = overlay(&cands.snapshot, &planned);
            let source: &dyn NodeSource = match &overlay {
                Some(o) => o,
                None => &*cands.snapshot,
            };
            let totals = score_nodes(
                &self.config.profile,
                &pod,
                &Subset::new(source, &cands.slots),
            );
            scale(&totals, &mut scores);
        }
        Ok(cands
            .names
            .into_iter()
            .zip(scores)
            .map(|(host, score)| HostPriority { host, score })
            .collect())
    }

    /// Preempt: kube-scheduler's candidates and victims, without any that would leave
    /// a gang below minMember. When a victim is a gang member and the gang would break,
    /// every member on the same node joins the victims, if that is all of the gang's
    /// members on nodes; otherwise (members elsewhere, which one node's preemption
    /// cannot evict) the node is dropped.
    pub fn preempt(
        &self,
        args: ExtenderPreemptionArgs,
    ) -> Result<ExtenderPreemptionResult, RequestError> {
        let verb = Verb::Preempt;
        self.check_ready(verb)?;
        let preemptor = self.request_pod(verb, args.pod)?;
        // node → (victims (UID, pod if known), PDB violations)
        type Proposed = Vec<(String, Vec<(String, Option<Arc<PodInfo>>)>, i64)>;
        let ix = self.index();
        let mut proposed: Proposed = Vec::new();
        if let Some(meta) = args.node_name_to_meta_victims {
            for (node, v) in meta {
                let v = v.unwrap_or_default();
                let pods = v
                    .pods
                    .unwrap_or_default()
                    .into_iter()
                    .map(|m| {
                        let known = ix.member_by_uid(&m.uid).cloned();
                        (m.uid, known)
                    })
                    .collect();
                proposed.push((node, pods, v.num_pdb_violations));
            }
        } else if let Some(whole) = args.node_name_to_victims {
            for (node, v) in whole {
                let v = v.unwrap_or_default();
                let mut pods = Vec::new();
                for p in v.pods.unwrap_or_default() {
                    let uid = p.metadata.uid.clone().unwrap_or_default();
                    let info = pod_info(&p).map_err(|e| RequestError::BadObject {
                        verb: verb.as_str(),
                        detail: format!("victim pod {e}"),
                    })?;
                    let known = ix
                        .member_by_uid(&uid)
                        .cloned()
                        .or_else(|| info.gang.is_some().then(|| Arc::new(info)));
                    pods.push((uid, known));
                }
                proposed.push((node, pods, v.num_pdb_violations));
            }
        }
        let mut out = BTreeMap::new();
        'nodes: for (node, victims, pdb) in proposed {
            let mut uids: Vec<String> = victims.iter().map(|(u, _)| u.clone()).collect();
            let mut seen: HashSet<String> = uids.iter().cloned().collect();
            let gangs: HashSet<GangKey> = victims
                .iter()
                .filter_map(|(_, p)| p.as_ref())
                .filter(|p| p.gang.as_ref().is_some_and(|g| g.conflict.is_none()))
                .filter_map(|p| GangKey::of(p))
                .collect();
            for g in gangs {
                let members = ix.assigned_members(&g);
                if members.is_empty() {
                    continue; // drover knows nothing of this gang: kube-scheduler's call
                }
                let min = ix.min_member(&g).unwrap_or(members.len());
                let left = members.iter().filter(|m| !seen.contains(&*m.uid)).count();
                if left >= min {
                    continue; // only members beyond minMember go
                }
                let elsewhere = members.iter().any(|m| {
                    !seen.contains(&*m.uid) && m.node_name.as_deref() != Some(node.as_str())
                });
                if elsewhere {
                    tracing::debug!(gang = %g, %node, preemptor = %preemptor.key, "dropping a preemption candidate: it would evict part of a gang");
                    continue 'nodes;
                }
                for m in members {
                    if seen.insert(m.uid.to_string()) {
                        uids.push(m.uid.to_string());
                    }
                }
            }
            out.insert(
                node,
                MetaVictims {
                    pods: Some(uids.into_iter().map(|uid| MetaPod { uid }).collect()),
                    num_pdb_violations: pdb,
                },
            );
        }
        Ok(ExtenderPreemptionResult {
            node_name_to_meta_victims: Some(out),
        })
    }

    /// Bind: the `binding` subresource, with the pod's UID.
    pub async fn bind(
        &self,
        args: ExtenderBindingArgs,
    ) -> Result<ExtenderBindingResult, RequestError> {
        for (field, value) in [
            ("PodName", &args.pod_name),
            ("PodNamespace", &args.pod_namespace),
            ("Node", &args.node),
        ] {
            if value.trim().is_empty() {
                return Err(RequestError::MissingField {
                    verb: "bind",
                    field,
                    hint: "",
                });
            }
        }
        let Some(client) = self.client.clone() else {
            return Err(RequestError::Disabled {
                verb: "bind",
                detail: "drover-extender has no cluster connection to bind with",
            });
        };
        let key = PodKey::new(&args.pod_namespace, &args.pod_name);
        match drover::k8s::binder::bind(client, &key, &args.pod_uid, &args.node).await {
            drover::k8s::binder::BindResult::Bound => {
                tracing::debug!(pod = %key, node = %args.node, "bound");
                Ok(ExtenderBindingResult::default())
            }
            drover::k8s::binder::BindResult::Gone(why)
            | drover::k8s::binder::BindResult::Failed(why) => Err(RequestError::Bind(format!(
                "binding {key} to {}: {why}",
                args.node
            ))),
        }
    }
}

/// The snapshot with planned gang members counted on their nodes, if there are any.
fn overlay<'a>(
    snapshot: &'a Snapshot,
    planned: &[(Arc<PodInfo>, Arc<str>)],
) -> Option<Overlay<'a>> {
    let mut overlay: Option<Overlay<'a>> = None;
    for (pod, node) in planned {
        let Some(slot) = snapshot
            .slot_of(node)
            .filter(|s| snapshot.slot(*s).is_some())
        else {
            continue;
        };
        overlay
            .get_or_insert_with(|| Overlay::new(snapshot))
            .place(slot, pod.clone());
    }
    overlay
}

/// The reasons of the first filter that rejects the node, joined.
fn first_reasons(
    profile: &drover::framework::Profile,
    pod: &PodInfo,
    node: &drover::model::NodeInfo,
) -> String {
    for f in &profile.filters {
        let mut reasons = Vec::new();
        if !f.filter(pod, node, &mut |r| reasons.push(r)) {
            return join(&reasons);
        }
    }
    String::new()
}

fn join(reasons: &[Reason]) -> String {
    reasons
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reasons that evicting pods cannot cure: kube-scheduler skips preemption on such
/// nodes (`FailedAndUnresolvableNodes`).
fn unresolvable_reason(r: &Reason) -> bool {
    matches!(
        r,
        Reason::NodeAffinity
            | Reason::NodeName
            | Reason::Unschedulable
            | Reason::UntoleratedTaint(_)
            | Reason::GpuMemory
    )
}

/// Maps drover's totals (`(candidate, total)`) onto 1..=10, the best node 10, in the
/// same order; candidates that fail drover's filters keep 0.
fn scale(totals: &[(usize, i64)], out: &mut [i64]) {
    let Some(lo) = totals.iter().map(|t| t.1).min() else {
        return;
    };
    let hi = totals.iter().map(|t| t.1).max().unwrap_or(lo);
    let top = MAX_EXTENDER_PRIORITY;
    for (i, t) in totals {
        let Some(o) = out.get_mut(*i) else { continue };
        *o = if hi == lo {
            top
        } else {
            // 1..=10 rounded: integer math on i128, no overflow for any i64 total.
            let (t, lo, hi) = (i128::from(*t), i128::from(lo), i128::from(hi));
            let span = hi - lo;
            (1 + ((i128::from(top) - 1) * (t - lo) + span / 2) / span) as i64
        };
    }
}

#[cfg(test)]
mod tests;
