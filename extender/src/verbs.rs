//! The verbs: kube-scheduler's questions answered by drover's own engine.
//!
//! The extender holds one [`Engine`] in extender mode, fed by the same watches as
//! `drover run`; every rule kube-scheduler lacks is the engine's
//! ([`Engine::extender_verdict`]), the same code that decides on its own:
//!
//! - **filter** asks the engine first — gang readiness (a gang is decided all
//!   together; until it fits, every node fails for its members; once it fits, its
//!   members are held on their planned nodes in the engine's cache until the watch
//!   shows each bound, and each member is filtered to exactly its node), required
//!   topology and fair-share queue admission — then runs drover's profile filters
//!   (`drover_core::framework::feasible`, `rejections` for the reasons) over the
//!   candidates, lock-free over the engine's published snapshot.
//! - **prioritize** maps drover's weighted score totals
//!   (`drover_core::framework::score_nodes`) onto 0..=10, keeping their order.
//! - **preempt** passes kube-scheduler's victims through, but never a part of a gang
//!   that would leave it below minMember.
//! - **bind** binds through the `binding` subresource with the pod's UID.
//!
//! The functions here take parsed arguments and return the verb's result, or a
//! [`RequestError`]; [`Extender::handle`] adds JSON on both sides and never panics on
//! any input.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use drover::k8s::convert::{ConvertError, pod_info};
use drover_core::config::Config;
use drover_core::engine::{Engine, Mode, Options, Resource, Verdict};
use drover_core::framework::{NodeSource, feasible, rejections, score_nodes};
use drover_core::gang::GangKey;
use drover_core::model::{PodInfo, PodKey};
use drover_core::plugins::{CycleState, Reason};
use drover_core::snapshot::Snapshot;
use k8s_openapi::api::core::v1::Pod;
use rayon::prelude::*;
use serde::Serialize;

use crate::candidates::{Candidates, NodeMemo, Subset};
use crate::error::RequestError;
use crate::wire::{
    ErrorResult, ExtenderArgs, ExtenderBindingArgs, ExtenderBindingResult, ExtenderFilterResult,
    ExtenderPreemptionArgs, ExtenderPreemptionResult, FailedNodesMap, HostPriority,
    HostPriorityList, MAX_EXTENDER_PRIORITY, MetaPod, MetaVictims, NodeList,
};

/// Below this many candidates the filters run on the calling thread.
const PARALLEL_MIN: usize = 512;

/// How long a gang plan holds by default: its members must all be bound by then, or
/// the ones that are not go back to pending and the gang is decided again.
pub const DEFAULT_PLAN_TTL: Duration = Duration::from_secs(60);

/// How long a pod the extender admitted counts against its queue before the watch
/// shows it bound (or it is deleted). kube-scheduler binds within a second or two of
/// the filter call; a pod it never binds stops counting after this.
pub const ADMISSION_TTL_MS: i64 = 30_000;

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

/// A pod drover has not seen yet, or a gang that waits for members that may be
/// arriving, is asked about again within this long: the watch that feeds the engine
/// may lag kube-scheduler's own informer by a few milliseconds, and a pod held on a
/// stale view would wait for the next unrelated cluster event (up to 5 minutes in a
/// quiet cluster).
const GRACE_MS: i64 = 250;
/// How recent a change to a gang must be for the grace to apply.
const GANG_RECENT_MS: i64 = 2_000;

/// drover answering kube-scheduler's extender calls.
pub struct Extender {
    config: Config,
    engine: Mutex<Engine>,
    /// The engine's newest snapshot, published after every change, read lock-free.
    snapshot: Arc<ArcSwap<Snapshot>>,
    client: Option<kube::Client>,
    /// The `schedulerName`s of kube-scheduler's profiles: bind refuses other pods.
    profiles: Vec<String>,
    /// Nodes of `nodeCacheCapable: false` requests, converted once per version.
    memo: NodeMemo,
    gangs_planned: prometheus::IntCounter,
}

/// kube-scheduler's profile when its configuration names no other.
pub const DEFAULT_PROFILE: &str = "default-scheduler";

/// Milliseconds since the Unix epoch.
/// `r`, unless `deadline` passed meanwhile: work no one waits for any more stops.
fn in_time<T>(
    verb: Verb,
    deadline: std::time::Instant,
    r: Result<T, RequestError>,
) -> Result<T, RequestError> {
    match r {
        Ok(_) if std::time::Instant::now() > deadline => Err(RequestError::Timeout {
            verb: verb.as_str(),
            what: "answering",
            millis: 0,
        }),
        r => r,
    }
}

fn now_ms() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_millisecond()
}

/// Guards the engine; publishes its snapshot when released, if it changed.
pub struct EngineGuard<'a> {
    guard: MutexGuard<'a, Engine>,
    snapshot: &'a ArcSwap<Snapshot>,
}

impl std::ops::Deref for EngineGuard<'_> {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.guard
    }
}

impl std::ops::DerefMut for EngineGuard<'_> {
    fn deref_mut(&mut self) -> &mut Engine {
        &mut self.guard
    }
}

impl Drop for EngineGuard<'_> {
    fn drop(&mut self) {
        if self.snapshot.load().generation != self.guard.generation() {
            self.snapshot.store(Arc::new(self.guard.snapshot()));
        }
    }
}

impl Extender {
    /// An extender whose engine knows nothing yet: it is ready once the watches (or
    /// a test) have listed the cluster into [`Extender::engine`].
    pub fn new(config: Config, plan_ttl: Duration) -> Self {
        let plan_ttl_ms = i64::try_from(plan_ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let engine = Engine::new(Options {
            config: config.clone(),
            scheduler_names: Vec::new(),
            mode: Mode::Extender {
                plan_ttl_ms,
                admission_ttl_ms: ADMISSION_TTL_MS,
            },
            tick_ms: 1_000,
        });
        Extender {
            config,
            engine: Mutex::new(engine),
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            client: None,
            profiles: vec![DEFAULT_PROFILE.to_string()],
            memo: NodeMemo::default(),
            gangs_planned: prometheus::IntCounter::new(
                "drover_extender_gangs_planned_total",
                "Gangs the extender placed all together (one plan handed to all members)",
            )
            .expect("valid metric"),
        }
    }

    /// An extender over the nodes of `snapshot` and the pods on them, listed and
    /// ready at once (tests, benchmarks).
    pub fn with_snapshot(config: Config, snapshot: Snapshot) -> Self {
        let e = Extender::new(config, DEFAULT_PLAN_TTL);
        {
            let mut engine = e.engine();
            for (_, n) in snapshot.nodes() {
                let mut node = (**n).clone();
                let pods = std::mem::take(&mut node.pods);
                engine.handle_node(node, 0);
                for p in pods {
                    let mut p = (*p).clone();
                    p.node_name = Some(n.name.clone());
                    engine.handle_pod(p, 0);
                }
            }
            for r in Resource::ALL {
                engine.handle_list_done(r, 0);
            }
        }
        e
    }

    /// The `schedulerName`s of kube-scheduler's profiles that call this extender; bind
    /// refuses a pod that names another.
    pub fn with_profiles(mut self, profiles: Vec<String>) -> Self {
        self.profiles = profiles;
        self
    }

    /// Enables the bind verb with this client.
    pub fn with_client(mut self, client: kube::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// The engine, under its lock (a panic elsewhere while it was held leaves it
    /// usable); its snapshot is published when the guard is dropped.
    pub fn engine(&self) -> EngineGuard<'_> {
        EngineGuard {
            guard: self.engine.lock().unwrap_or_else(|p| p.into_inner()),
            snapshot: &self.snapshot,
        }
    }

    /// The engine's newest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// True once nodes, pods, gangs and queues are all listed.
    pub fn ready(&self) -> bool {
        self.engine().synced()
    }

    /// The counter of gangs placed all together (for the metrics registry).
    pub fn gangs_planned(&self) -> prometheus::IntCounter {
        self.gangs_planned.clone()
    }

    /// Answers a synchronous verb (filter, prioritize, preempt) from its raw body.
    /// Bind talks to the API server: use [`Extender::handle_bind`].
    pub fn handle(&self, verb: Verb, body: &[u8]) -> Reply {
        self.handle_until(
            verb,
            body,
            std::time::Instant::now() + Duration::from_secs(3600),
        )
    }

    /// [`Extender::handle`], abandoned once `deadline` passed: a call the server has
    /// already answered 408 stops after parsing rather than deciding for no one.
    pub fn handle_until(&self, verb: Verb, body: &[u8], deadline: std::time::Instant) -> Reply {
        let on_time = |what| in_time(verb, deadline, parse(verb, what, body));
        match verb {
            Verb::Filter => Reply::from(verb, on_time("ExtenderArgs").and_then(|a| self.filter(a))),
            Verb::Prioritize => Reply::from(
                verb,
                on_time("ExtenderArgs").and_then(|a| self.prioritize(a)),
            ),
            Verb::Preempt => Reply::from(
                verb,
                in_time(verb, deadline, parse(verb, "ExtenderPreemptionArgs", body))
                    .and_then(|a| self.preempt(a)),
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

    /// The pod of a request, converted as drover converts pods from the watch (with
    /// the configuration's rules applied, as the engine applies them).
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
        Ok(Arc::new(self.engine().prepare(info)))
    }

    fn candidates(&self, verb: Verb, args: ExtenderArgs) -> Result<Candidates, RequestError> {
        match (args.node_names, args.nodes) {
            (Some(names), _) => Candidates::by_name(verb.as_str(), self.snapshot(), names),
            (None, Some(list)) => {
                Candidates::whole(verb.as_str(), &self.snapshot(), &self.memo, list.items)
            }
            (None, None) => Err(RequestError::MissingField {
                verb: verb.as_str(),
                field: "NodeNames or Nodes",
                hint: "; kube-scheduler sends one of them (NodeNames with nodeCacheCapable: true)",
            }),
        }
    }

    /// The engine's verdict for `pod`, with housekeeping that is due done first.
    fn verdict(&self, pod: &PodInfo, now: i64) -> Verdict {
        let mut engine = self.engine();
        if engine.poll_timeout().is_some_and(|t| t <= now) {
            engine.handle_timeout(now);
        }
        let verdict = engine.extender_verdict(pod, now);
        let placed = engine.take_stats().gangs_placed;
        self.gangs_planned.inc_by(placed);
        verdict
    }

    /// Filter: which candidates can take the pod, and why the others cannot.
    pub fn filter(&self, args: ExtenderArgs) -> Result<ExtenderFilterResult, RequestError> {
        let verb = Verb::Filter;
        self.check_ready(verb)?;
        let pod = self.request_pod(verb, args.pod.clone())?;
        let mut cands = self.candidates(verb, args)?;
        let mut now = now_ms();
        let mut pass = vec![false; cands.slots.len()];
        let mut failed = FailedNodesMap::new();
        let mut unresolvable = FailedNodesMap::new();
        let fail_all = |unresolvable: &mut FailedNodesMap, names: &[String], message: &str| {
            for n in names {
                unresolvable.insert(n.clone(), message.to_string());
            }
        };
        // A plan that no longer holds is dropped and the gang decided once more; a pod
        // or gang that the watch may be about to deliver is decided again when it does.
        let mut replanned = false;
        let mut waited = false;
        loop {
            match self.verdict(&pod, now) {
                Verdict::Unknown => {
                    if !waited {
                        waited = true;
                        if self.await_change(|e| e.pod(&pod.key).is_some_and(|p| p.uid == pod.uid))
                        {
                            now = now_ms();
                            continue;
                        }
                    }
                    let message = format!(
                        "pod {}: drover's watch has not shown this pod yet; it is decided when it has (its gang or queue needs it)",
                        pod.key
                    );
                    fail_all(&mut unresolvable, &cands.names, &message);
                }
                Verdict::HoldForMembers {
                    message,
                    gang,
                    version,
                } => {
                    if !waited && now - version.1 < GANG_RECENT_MS {
                        waited = true;
                        if self.await_change(|e| e.gang_version(&gang).0 != version.0) {
                            now = now_ms();
                            continue;
                        }
                    }
                    fail_all(&mut unresolvable, &cands.names, &message);
                }
                Verdict::Hold(message) => {
                    // kube-scheduler offered a node drover's own filters reject: its
                    // watch is ahead of drover's (a pod it has seen leave is still
                    // here). Refused now, the pod would wait for the next cluster
                    // event, which may never come: wait for drover's watch first.
                    if !waited && self.offered_what_drover_rejects(&pod, &cands) {
                        waited = true;
                        let seen = self.engine().generation();
                        if self.await_change(|e| e.generation() != seen) {
                            now = now_ms();
                            cands = cands.refresh(verb.as_str(), self.snapshot(), &self.memo)?;
                            pass = vec![false; cands.slots.len()];
                            continue;
                        }
                    }
                    fail_all(&mut unresolvable, &cands.names, &message)
                }
                Verdict::Planned { gang, node } => {
                    let at = cands.position(&node);
                    let fits = at
                        .and_then(|i| cands.snapshot.slot(cands.slots[i]))
                        .map(|n| {
                            // The snapshot counts the member on its node already.
                            let mut without = (**n).clone();
                            without.remove_pod(&pod.key);
                            let cx = CycleState::new(&self.config.profile, &pod, &*cands.snapshot);
                            (
                                feasible(&self.config.profile, &cx, &pod, &without),
                                first_reasons(&self.config.profile, &cx, &pod, &without),
                            )
                        });
                    match (at, fits) {
                        (Some(i), Some((true, _))) => {
                            pass[i] = true;
                            self.engine().hand_over(&pod.key);
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
                            self.engine().drop_plan(&pod.key, now);
                            if !replanned {
                                replanned = true;
                                tracing::info!(%gang, %node, %why, "gang plan dropped; deciding the gang again");
                                cands =
                                    cands.refresh(verb.as_str(), self.snapshot(), &self.memo)?;
                                pass = vec![false; cands.slots.len()];
                                continue;
                            }
                            let message = format!(
                                "gang {gang}: planned node {node} cannot take this member: {why}; the gang is decided again on the next attempt"
                            );
                            fail_all(&mut unresolvable, &cands.names, &message);
                        }
                    }
                }
                Verdict::Filter => {
                    let source: &dyn NodeSource = &*cands.snapshot;
                    let view = Subset::new(source, &cands.slots);
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
                        self.engine().admit(&pod, now);
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

    /// Waits up to [`GRACE_MS`] for `changed` to hold of the engine; true if it did.
    fn await_change(&self, changed: impl Fn(&Engine) -> bool) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_millis(GRACE_MS as u64);
        while std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            if changed(&self.engine()) {
                return true;
            }
        }
        false
    }

    /// Whether some candidate kube-scheduler offered fails drover's filters for `pod`.
    fn offered_what_drover_rejects(&self, pod: &PodInfo, cands: &Candidates) -> bool {
        let source: &dyn NodeSource = &*cands.snapshot;
        let mut pass = vec![false; cands.slots.len()];
        self.run_filters(pod, &Subset::new(source, &cands.slots), &mut pass);
        pass.iter().any(|p| !p)
    }

    fn run_filters<N: NodeSource + ?Sized>(&self, pod: &PodInfo, view: &N, pass: &mut [bool]) {
        let profile = &self.config.profile;
        let cx = CycleState::new(profile, pod, view);
        let check = |i: usize| view.get(i).is_some_and(|n| feasible(profile, &cx, pod, n));
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

    /// Prioritize: drover's score totals over the candidates, mapped onto 0..=10 in
    /// the same order; nodes that fail drover's filters get 0. A planned gang member
    /// scores only its planned node.
    pub fn prioritize(&self, args: ExtenderArgs) -> Result<HostPriorityList, RequestError> {
        let verb = Verb::Prioritize;
        self.check_ready(verb)?;
        let pod = self.request_pod(verb, args.pod.clone())?;
        let cands = self.candidates(verb, args)?;
        let planned_node = self.engine().planned_node(&pod.key);
        let mut scores = vec![0i64; cands.slots.len()];
        if let Some(node) = planned_node {
            if let Some(i) = cands.position(&node) {
                scores[i] = MAX_EXTENDER_PRIORITY;
            }
        } else {
            let source: &dyn NodeSource = &*cands.snapshot;
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
        let engine = self.engine();
        let member = |uid: &str| engine.pod_by_uid(uid).filter(|p| p.gang.is_some()).cloned();
        let mut proposed: Proposed = Vec::new();
        if let Some(meta) = args.node_name_to_meta_victims {
            for (node, v) in meta {
                let v = v.unwrap_or_default();
                let pods = v
                    .pods
                    .unwrap_or_default()
                    .into_iter()
                    .map(|m| {
                        let known = member(&m.uid);
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
                    let known =
                        member(&uid).or_else(|| info.gang.is_some().then(|| Arc::new(info)));
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
                let members: Vec<Arc<PodInfo>> = engine
                    .gangs()
                    .members_in(&g, false)
                    .iter()
                    .filter_map(|k| engine.pod(k).cloned())
                    .collect();
                if members.is_empty() {
                    continue; // drover knows nothing of this gang: kube-scheduler's call
                }
                let min = engine.gangs().min_member(&g).unwrap_or(members.len());
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
        self.may_bind(&key, &args.pod_uid, &args.node)
            .map_err(|detail| RequestError::Forbidden {
                verb: "bind",
                detail,
            })?;
        match drover::k8s::binder::bind(client, &key, &args.pod_uid, &args.node).await {
            drover_core::engine::BindResult::Bound => {
                tracing::debug!(pod = %key, node = %args.node, "bound");
                Ok(ExtenderBindingResult::default())
            }
            // kube-scheduler retries; a bind that did land answers 409 then.
            drover_core::engine::BindResult::Gone(why)
            | drover_core::engine::BindResult::Unknown(why)
            | drover_core::engine::BindResult::Failed(why) => Err(RequestError::Bind(format!(
                "binding {key} to {}: {why}",
                args.node
            ))),
        }
    }
}

impl Extender {
    /// Whether drover's own decision lets `key` (with `uid`) bind to `node`: a
    /// pending pod drover's cache holds with that UID, which filter passes on that
    /// node — a gang member only to its planned node, a pod only within its queue.
    /// Why not, otherwise.
    pub fn may_bind(&self, key: &PodKey, uid: &str, node: &str) -> Result<(), String> {
        if uid.trim().is_empty() {
            return Err(format!(
                "pod {key}: PodUID is empty; kube-scheduler sends the UID of the pod it binds"
            ));
        }
        let pod = {
            let engine = self.engine();
            let pod = engine
                .pod(key)
                .filter(|p| &*p.uid == uid)
                .cloned()
                .ok_or_else(|| {
                    format!("pod {key} with UID {uid} is not in drover-extender's cache")
                })?;
            if !self.profiles.iter().any(|n| **n == *pod.scheduler_name) {
                return Err(format!(
                    "pod {key} names schedulerName {:?}, not one of --scheduler-names ({}): it is not kube-scheduler's to bind",
                    pod.scheduler_name,
                    self.profiles.join(", ")
                ));
            }
            if pod.node_name.is_some() && engine.planned_node(key).is_none() {
                return Err(format!("pod {key} is bound already"));
            }
            pod
        };
        match self.verdict(&pod, now_ms()) {
            Verdict::Planned { node: planned, .. } if &*planned == node => Ok(()),
            Verdict::Planned {
                gang,
                node: planned,
            } => Err(format!(
                "pod {key}: gang {gang} holds this member for node {planned}, not {node}"
            )),
            Verdict::Hold(message) | Verdict::HoldForMembers { message, .. } => Err(message),
            Verdict::Unknown => Err(format!(
                "pod {key} with UID {uid} is not in drover-extender's cache"
            )),
            Verdict::Filter => {
                let snapshot = self.snapshot();
                let Some(n) = snapshot
                    .slot_of(node)
                    .and_then(|s| snapshot.slot(s))
                    .filter(|n| n.known)
                else {
                    return Err(format!("node {node} is not in drover-extender's cache"));
                };
                let profile = &self.config.profile;
                let cx = CycleState::new(profile, &pod, &*snapshot);
                if feasible(profile, &cx, &pod, n) {
                    Ok(())
                } else {
                    Err(format!(
                        "pod {key} does not fit node {node}: {}",
                        first_reasons(profile, &cx, &pod, n)
                    ))
                }
            }
        }
    }
}

/// The reasons of the first filter that rejects the node, joined.
fn first_reasons(
    profile: &drover_core::framework::Profile,
    cx: &CycleState,
    pod: &PodInfo,
    node: &drover_core::model::NodeInfo,
) -> String {
    for f in &profile.filters {
        let mut reasons = Vec::new();
        if !f.filter(cx, pod, node, &mut |r| reasons.push(r)) {
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
            | Reason::PodAffinity
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
