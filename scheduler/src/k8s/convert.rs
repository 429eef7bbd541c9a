//! API objects → the core's model. Quantities are parsed here, once; a malformed object
//! is reported with its name and skipped, never allowed to crash the scheduler.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, Node, NodeSelectorTerm, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use thiserror::Error;

use drover_core::gang::{self, GangKey, PodGroupInfo};
use drover_core::model::{
    GangRef, HostPort, LabelSelector, Labels, NamespaceScope, NodeInfo, Phase, PodAffinity,
    PodAffinityTerm, PodInfo, PodKey, Protocol, Requirement, ResourceKind, Resources, SelectorOp,
    SelectorTerm, Taint, TaintEffect, Toleration,
};
use drover_core::quantity::{QuantityError, parse_resource};

/// An object drover cannot use, and why.
#[derive(Debug, Error)]
pub enum ConvertError {
    /// The object has no name.
    #[error("{kind} without metadata.name")]
    NoName {
        /// Pod or Node.
        kind: &'static str,
    },
    /// A resource quantity does not parse.
    #[error("{object}: {field}[{resource}]: {source}")]
    Quantity {
        /// `namespace/name` or node name.
        object: String,
        /// Where the quantity sits.
        field: String,
        /// The resource name.
        resource: String,
        /// The parse error.
        source: QuantityError,
    },
    /// A field is malformed.
    #[error("{object}: {problem}")]
    Field {
        /// The object.
        object: String,
        /// What is wrong.
        problem: String,
    },
    /// A selector requirement is malformed.
    #[error("{object}: {problem}")]
    Selector {
        /// `namespace/name`.
        object: String,
        /// What is wrong.
        problem: String,
    },
}

fn resources(
    object: &str,
    field: &str,
    list: Option<&BTreeMap<String, Quantity>>,
) -> Result<Resources, ConvertError> {
    let mut r = Resources::default();
    for (name, q) in list.into_iter().flatten() {
        let v = parse_resource(name, &q.0).map_err(|source| ConvertError::Quantity {
            object: object.to_string(),
            field: field.to_string(),
            resource: name.clone(),
            source,
        })?;
        if name == "pods" {
            continue;
        }
        r.set(&ResourceKind::from_name(name), v);
    }
    Ok(r)
}

fn container_requests(
    object: &str,
    what: &str,
    c: &Container,
) -> Result<(Resources, bool), ConvertError> {
    let reqs = c.resources.as_ref();
    // Kubernetes defaults requests to limits when only limits are set.
    let list = reqs.and_then(|r| r.requests.as_ref());
    let limits = reqs.and_then(|r| r.limits.as_ref());
    let mut r = resources(
        object,
        &format!("{what}[{}].resources.requests", c.name),
        list,
    )?;
    if let Some(l) = limits {
        for (name, q) in l {
            if list.is_some_and(|x| x.contains_key(name)) {
                continue;
            }
            let v = parse_resource(name, &q.0).map_err(|source| ConvertError::Quantity {
                object: object.to_string(),
                field: format!("{what}[{}].resources.limits", c.name),
                resource: name.clone(),
                source,
            })?;
            r.set(&ResourceKind::from_name(name), v);
        }
    }
    let declared = !r.is_zero();
    Ok((r, declared))
}

fn op(object: &str, s: &str) -> Result<SelectorOp, ConvertError> {
    Ok(match s {
        "In" => SelectorOp::In,
        "NotIn" => SelectorOp::NotIn,
        "Exists" => SelectorOp::Exists,
        "DoesNotExist" => SelectorOp::DoesNotExist,
        "Gt" => SelectorOp::Gt,
        "Lt" => SelectorOp::Lt,
        other => {
            return Err(ConvertError::Selector {
                object: object.into(),
                problem: format!("unknown node selector operator {other:?}"),
            });
        }
    })
}

/// A `metav1.LabelSelector`: `matchLabels` as `In` of one value, then
/// `matchExpressions` (only In, NotIn, Exists and DoesNotExist are allowed there).
pub(crate) fn label_selector(
    object: &str,
    what: &str,
    s: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> Result<LabelSelector, ConvertError> {
    let mut reqs: Vec<Requirement> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| Requirement {
            key: k.as_str().into(),
            op: SelectorOp::In,
            values: vec![v.as_str().into()],
            bound: 0,
            field: false,
        })
        .collect();
    for r in s.match_expressions.iter().flatten() {
        let op = match r.operator.as_str() {
            "In" => SelectorOp::In,
            "NotIn" => SelectorOp::NotIn,
            "Exists" => SelectorOp::Exists,
            "DoesNotExist" => SelectorOp::DoesNotExist,
            other => {
                return Err(ConvertError::Selector {
                    object: object.into(),
                    problem: format!(
                        "{what}: unknown label selector operator {other:?} (use In, NotIn, Exists or DoesNotExist)"
                    ),
                });
            }
        };
        let mut values: Vec<Arc<str>> = r
            .values
            .iter()
            .flatten()
            .map(|v| Arc::from(v.as_str()))
            .collect();
        values.sort();
        reqs.push(Requirement {
            key: r.key.as_str().into(),
            op,
            values,
            bound: 0,
            field: false,
        });
    }
    Ok(LabelSelector(reqs))
}

/// One `PodAffinityTerm` of a pod in `namespace` with `labels`: its namespaces
/// default to the pod's own, and `matchLabelKeys` / `mismatchLabelKeys` join the
/// selector as `In` / `NotIn` the pod's own value (as the API server merges them; a
/// key the pod lacks is left out).
fn pod_affinity_term(
    object: &str,
    what: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    t: &k8s_openapi::api::core::v1::PodAffinityTerm,
) -> Result<PodAffinityTerm, ConvertError> {
    let mut selector = t
        .label_selector
        .as_ref()
        .map(|s| label_selector(object, what, s))
        .transpose()?;
    for (keys, op) in [
        (&t.match_label_keys, SelectorOp::In),
        (&t.mismatch_label_keys, SelectorOp::NotIn),
    ] {
        for key in keys.iter().flatten() {
            if let (Some(sel), Some(v)) = (selector.as_mut(), labels.get(key)) {
                sel.0.push(Requirement {
                    key: key.as_str().into(),
                    op,
                    values: vec![v.as_str().into()],
                    bound: 0,
                    field: false,
                });
            }
        }
    }
    let mut names: Vec<Arc<str>> = t
        .namespaces
        .iter()
        .flatten()
        .map(|n| Arc::from(n.as_str()))
        .collect();
    let ns_selector = t
        .namespace_selector
        .as_ref()
        .map(|s| label_selector(object, what, s))
        .transpose()?;
    if names.is_empty() && ns_selector.is_none() {
        names.push(namespace.into());
    }
    names.sort();
    names.dedup();
    if t.topology_key.is_empty() {
        return Err(ConvertError::Selector {
            object: object.into(),
            problem: format!("{what}: topologyKey is empty"),
        });
    }
    Ok(PodAffinityTerm {
        selector,
        namespaces: NamespaceScope {
            names,
            selector: ns_selector,
        },
        topology_key: t.topology_key.as_str().into(),
    })
}

/// `spec.affinity.podAffinity` and `podAntiAffinity`; `None` when there is no term.
fn pod_affinity(
    object: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    a: Option<&k8s_openapi::api::core::v1::Affinity>,
) -> Result<Option<Arc<PodAffinity>>, ConvertError> {
    let Some(a) = a else { return Ok(None) };
    let term = |what: &str, t| pod_affinity_term(object, what, namespace, labels, t);
    let mut out = PodAffinity::default();
    if let Some(p) = &a.pod_affinity {
        for t in p
            .required_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
        {
            out.required.push(term("podAffinity", t)?);
        }
        for w in p
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
        {
            out.preferred
                .push((w.weight, term("podAffinity", &w.pod_affinity_term)?));
        }
    }
    if let Some(p) = &a.pod_anti_affinity {
        for t in p
            .required_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
        {
            out.required_anti.push(term("podAntiAffinity", t)?);
        }
        for w in p
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
        {
            out.preferred_anti
                .push((w.weight, term("podAntiAffinity", &w.pod_affinity_term)?));
        }
    }
    Ok((!out.is_empty()).then(|| Arc::new(out)))
}

/// `spec.topologySpreadConstraints`; `None` when there is none. `matchLabelKeys` join
/// the selector as `In` the pod's own value (a key the pod lacks is left out), as the
/// API server and kube-scheduler merge them.
fn topology_spread(
    object: &str,
    labels: &BTreeMap<String, String>,
    cs: Option<&Vec<k8s_openapi::api::core::v1::TopologySpreadConstraint>>,
) -> Result<Option<Arc<[drover_core::model::SpreadConstraint]>>, ConvertError> {
    use drover_core::model::{SpreadConstraint, SpreadSelector};
    let Some(cs) = cs.filter(|cs| !cs.is_empty()) else {
        return Ok(None);
    };
    let problem = |i: usize, p: String| ConvertError::Selector {
        object: object.into(),
        problem: format!("topologySpreadConstraints[{i}]: {p}"),
    };
    let mut out = Vec::with_capacity(cs.len());
    for (i, c) in cs.iter().enumerate() {
        if c.max_skew < 1 {
            return Err(problem(
                i,
                format!("maxSkew {} must be at least 1", c.max_skew),
            ));
        }
        if c.topology_key.is_empty() {
            return Err(problem(i, "topologyKey is empty".into()));
        }
        let hard = match c.when_unsatisfiable.as_str() {
            "DoNotSchedule" => true,
            "ScheduleAnyway" => false,
            other => {
                return Err(problem(
                    i,
                    format!(
                        "whenUnsatisfiable {other:?} is neither DoNotSchedule nor ScheduleAnyway"
                    ),
                ));
            }
        };
        let policy = |what: &str, v: &Option<String>, default: bool| match v.as_deref() {
            None => Ok(default),
            Some("Honor") => Ok(true),
            Some("Ignore") => Ok(false),
            Some(other) => Err(problem(
                i,
                format!("{what} {other:?} is neither Honor nor Ignore"),
            )),
        };
        let selector = match &c.label_selector {
            None => SpreadSelector::Nothing,
            Some(sel) => {
                let mut sel = label_selector(object, "topologySpreadConstraints", sel)?;
                for key in c.match_label_keys.iter().flatten() {
                    if let Some(v) = labels.get(key) {
                        sel.0.push(Requirement {
                            key: key.as_str().into(),
                            op: SelectorOp::In,
                            values: vec![v.as_str().into()],
                            bound: 0,
                            field: false,
                        });
                    }
                }
                SpreadSelector::Labels(sel)
            }
        };
        out.push(SpreadConstraint {
            max_skew: c.max_skew,
            topology_key: c.topology_key.as_str().into(),
            hard,
            selector,
            // minDomains only applies to DoNotSchedule; unset is 1.
            min_domains: if hard {
                c.min_domains.unwrap_or(1).max(1)
            } else {
                1
            },
            honor_node_affinity: policy("nodeAffinityPolicy", &c.node_affinity_policy, true)?,
            honor_taints: policy("nodeTaintsPolicy", &c.node_taints_policy, false)?,
        });
    }
    Ok(Some(out.into()))
}

pub(crate) fn term(object: &str, t: &NodeSelectorTerm) -> Result<SelectorTerm, ConvertError> {
    let mut reqs = Vec::new();
    let all = t
        .match_expressions
        .iter()
        .flatten()
        .map(|r| (r, false))
        .chain(t.match_fields.iter().flatten().map(|r| (r, true)));
    for (r, field) in all {
        let op = op(object, &r.operator)?;
        let mut values: Vec<Arc<str>> = r
            .values
            .iter()
            .flatten()
            .map(|v| Arc::from(v.as_str()))
            .collect();
        values.sort();
        let bound = match op {
            SelectorOp::Gt | SelectorOp::Lt => match values.as_slice() {
                [v] => v.parse().map_err(|_| ConvertError::Selector {
                    object: object.into(),
                    problem: format!(
                        "node selector {} {:?} needs one integer value, got {v:?}",
                        r.key, r.operator
                    ),
                })?,
                _ => {
                    return Err(ConvertError::Selector {
                        object: object.into(),
                        problem: format!(
                            "node selector {} {:?} needs exactly one value",
                            r.key, r.operator
                        ),
                    });
                }
            },
            _ => 0,
        };
        reqs.push(Requirement {
            key: r.key.as_str().into(),
            op,
            values,
            bound,
            field,
        });
    }
    Ok(SelectorTerm(reqs))
}

/// The pod's effective request, as kube-scheduler computes it: the sum of containers;
/// raised to the largest init container (which runs alone, next to the restartable
/// "sidecar" init containers started before it); sidecars add to the total; pod
/// overhead adds; pod-level `spec.resources.requests` replace what they name.
pub fn pod_requests(object: &str, pod: &Pod) -> Result<(Resources, bool), ConvertError> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok((Resources::default(), false));
    };
    let mut declared = false;
    let mut total = Resources::default();
    for c in &spec.containers {
        let (r, d) = container_requests(object, "containers", c)?;
        total.add(&r);
        declared |= d;
    }
    let mut sidecars = Resources::default();
    let mut init_max = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let (r, d) = container_requests(object, "initContainers", c)?;
        declared |= d;
        if c.restart_policy.as_deref() == Some("Always") {
            total.add(&r);
            sidecars.add(&r);
            init_max.max_with(&sidecars);
        } else {
            let mut alone = r;
            alone.add(&sidecars);
            init_max.max_with(&alone);
        }
    }
    total.max_with(&init_max);
    if let Some(pod_level) = spec.resources.as_ref().and_then(|r| r.requests.as_ref()) {
        let p = resources(object, "spec.resources.requests", Some(pod_level))?;
        for (k, v) in p.iter() {
            total.set(&k, v);
        }
        declared |= !p.is_zero();
    }
    if let Some(o) = spec.overhead.as_ref() {
        total.add(&resources(object, "spec.overhead", Some(o))?);
    }
    Ok((total, declared))
}

/// The claims a pod mounts: its `persistentVolumeClaim` volumes, and its generic
/// ephemeral volumes as the claims the ephemeral-volume controller creates for them
/// (`<pod>-<volume>`).
fn pod_claims(pod: &str, spec: &k8s_openapi::api::core::v1::PodSpec) -> Option<Arc<[Arc<str>]>> {
    let claims: Vec<Arc<str>> = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| match (&v.persistent_volume_claim, &v.ephemeral) {
            (Some(c), _) => Some(Arc::from(c.claim_name.as_str())),
            (None, Some(_)) => Some(Arc::from(format!("{pod}-{}", v.name))),
            (None, None) => None,
        })
        .collect();
    (!claims.is_empty()).then(|| claims.into())
}

/// A pod's `spec.resourceClaims`: a named claim, or the claim the resourceclaim
/// controller created from the template (`status.resourceClaimStatuses`; an entry
/// there without a claim name needs no claim).
fn pod_device_claims(
    pod: &Pod,
    spec: &k8s_openapi::api::core::v1::PodSpec,
) -> Option<Arc<[drover_core::model::DeviceClaimRef]>> {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.resource_claim_statuses.as_ref());
    let refs: Vec<drover_core::model::DeviceClaimRef> = spec
        .resource_claims
        .iter()
        .flatten()
        .filter_map(|c| {
            let claim = match &c.resource_claim_name {
                Some(n) => Some(Arc::from(n.as_str())),
                None => match statuses.and_then(|s| s.iter().find(|s| s.name == c.name)) {
                    Some(s) => Some(Arc::from(s.resource_claim_name.as_deref()?)),
                    None => None,
                },
            };
            Some(drover_core::model::DeviceClaimRef {
                name: c.name.as_str().into(),
                claim,
            })
        })
        .collect();
    (!refs.is_empty()).then(|| refs.into())
}

/// What can be read of any pod, however malformed its spec: who it is (name, uid),
/// which scheduler it asks for, its node, and whether it is being deleted. Everything
/// else is left at its default.
pub fn pod_identity(pod: &Pod) -> Result<PodInfo, ConvertError> {
    let meta = &pod.metadata;
    let name = meta
        .name
        .as_deref()
        .ok_or(ConvertError::NoName { kind: "Pod" })?;
    let spec = pod.spec.as_ref();
    Ok(PodInfo {
        key: PodKey::new(meta.namespace.as_deref().unwrap_or("default"), name),
        uid: meta.uid.as_deref().unwrap_or("").into(),
        scheduler_name: spec
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or("default-scheduler")
            .into(),
        node_name: spec
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
            .map(Into::into),
        deleting: meta.deletion_timestamp.is_some(),
        phase: match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Running") => Phase::Running,
            Some("Succeeded") => Phase::Succeeded,
            Some("Failed") => Phase::Failed,
            Some("Unknown") => Phase::Unknown,
            _ => Phase::Pending,
        },
        ..Default::default()
    })
}

/// Converts a pod.
pub fn pod_info(pod: &Pod) -> Result<PodInfo, ConvertError> {
    let meta = &pod.metadata;
    let identity = pod_identity(pod)?;
    let (ns, name) = (&*identity.key.namespace, &*identity.key.name);
    let object = identity.key.to_string();
    let (requests, declares_requests) = pod_requests(&object, pod)?;
    let spec = pod.spec.clone().unwrap_or_default();
    let phase = identity.phase;
    let node_selector = SelectorTerm(
        spec.node_selector
            .iter()
            .flatten()
            .map(|(k, v)| Requirement {
                key: k.as_str().into(),
                op: SelectorOp::In,
                values: vec![v.as_str().into()],
                bound: 0,
                field: false,
            })
            .collect(),
    );
    let node_aff = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref());
    let required_affinity = node_aff
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|s| {
            s.node_selector_terms
                .iter()
                .map(|t| term(&object, t))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    // A required affinity whose terms are all empty matches nothing; keep it so the
    // filter rejects every node, as kube-scheduler does.
    let preferred_affinity = node_aff
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|p| {
            p.iter()
                .map(|t| Ok((t.weight, term(&object, &t.preference)?)))
                .collect::<Result<Vec<_>, ConvertError>>()
        })
        .transpose()?
        .unwrap_or_default();
    let tolerations = spec
        .tolerations
        .iter()
        .flatten()
        .map(|t| Toleration {
            key: t.key.as_deref().unwrap_or("").into(),
            exists: t.operator.as_deref() == Some("Exists"),
            value: t.value.as_deref().unwrap_or("").into(),
            effect: t.effect.as_deref().and_then(TaintEffect::parse),
        })
        .collect();
    let host_ports = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = u16::try_from(p.host_port?).ok().filter(|p| *p > 0)?;
            let protocol = match p.protocol.as_deref() {
                Some("UDP") => Protocol::Udp,
                Some("SCTP") => Protocol::Sctp,
                _ => Protocol::Tcp,
            };
            Some(HostPort {
                protocol,
                ip: p.host_ip.as_deref().unwrap_or("").into(),
                port,
            })
        })
        .collect();
    let claims = pod_claims(name, &spec);
    let device_claims = pod_device_claims(pod, &spec);
    Ok(PodInfo {
        claims,
        device_claims,
        phase,
        requests,
        declares_requests,
        priority: spec.priority.unwrap_or(0),
        never_preempts: spec.preemption_policy.as_deref() == Some("Never"),
        created_ms: meta
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_millisecond()),
        labels: Labels::new(
            meta.labels
                .iter()
                .flatten()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        ),
        node_selector,
        required_affinity,
        preferred_affinity,
        tolerations,
        host_ports,
        daemonset: meta
            .owner_references
            .iter()
            .flatten()
            .any(|o| (o.kind == "DaemonSet" || o.kind == "Node") && o.controller == Some(true)),
        exclusive: meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(EXCLUSIVE_ANNOTATION))
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
        gang: gang_ref(pod).map(Arc::new),
        pod_affinity: pod_affinity(
            &object,
            ns,
            meta.labels.as_ref().unwrap_or(&BTreeMap::new()),
            spec.affinity.as_ref(),
        )?,
        topology_spread: topology_spread(
            &object,
            meta.labels.as_ref().unwrap_or(&BTreeMap::new()),
            spec.topology_spread_constraints.as_ref(),
        )?,
        owner: meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| Arc::from(o.uid.as_str())),
        scheduling_gates: spec
            .scheduling_gates
            .iter()
            .flatten()
            .map(|g| Arc::from(g.name.as_str()))
            .collect(),
        queue: meta
            .labels
            .as_ref()
            .and_then(|l| l.get(drover_core::quota::QUEUE_LABEL))
            .filter(|v| !v.is_empty())
            .map(|v| Arc::from(v.as_str())),
        gpu_memory_min_mib: meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(GPU_MEMORY_MIN_ANNOTATION))
            .map(|v| {
                parse_resource("memory", v.trim())
                    .map(|b| (b + (1 << 20) - 1) >> 20)
                    .unwrap_or_else(|e| {
                        tracing::warn!(pod = %object, annotation = GPU_MEMORY_MIN_ANNOTATION, value = %v, error = %e, "not a quantity; no node will satisfy it");
                        i64::MAX
                    })
            }),
        completes_gang: false,
        ..identity
    })
}

/// The annotation by which a pod asks for GPUs with at least this much memory each
/// (a quantity: `40Gi`).
pub const GPU_MEMORY_MIN_ANNOTATION: &str = "drover.dev/gpu-memory-min";

/// GPU Feature Discovery's label with each GPU's memory in MiB.
pub const GPU_MEMORY_LABEL: &str = "nvidia.com/gpu.memory";

/// The annotation by which a pod asks for a node to itself.
pub const EXCLUSIVE_ANNOTATION: &str = "drover.dev/exclusive";

/// The gang a pod names: the `scheduling.x-k8s.io/pod-group` label or Volcano's
/// `scheduling.k8s.io/group-name` annotation, with `drover.dev/min-member`.
fn gang_ref(pod: &Pod) -> Option<GangRef> {
    let meta = &pod.metadata;
    let label = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(gang::GROUP_LABEL))
        .filter(|v| !v.is_empty());
    let annotations = meta.annotations.as_ref();
    let volcano = annotations
        .and_then(|a| a.get(gang::VOLCANO_GROUP_ANNOTATION))
        .filter(|v| !v.is_empty());
    let min_member = annotations
        .and_then(|a| a.get(gang::MIN_MEMBER_ANNOTATION))
        .map(|v| Arc::from(v.as_str()));
    let name = label.or(volcano)?;
    let conflict = match (label, volcano) {
        (Some(l), Some(v)) if l != v => Some(Arc::from(format!(
            "label {}={l} and annotation {}={v} name different gangs; remove one or make them equal",
            gang::GROUP_LABEL,
            gang::VOLCANO_GROUP_ANNOTATION
        ))),
        _ => None,
    };
    let annotation = |k: &str| {
        annotations
            .and_then(|a| a.get(k))
            .map(|v| Arc::from(v.as_str()))
    };
    Some(GangRef {
        name: name.as_str().into(),
        min_member,
        conflict,
        topology_required: annotation(drover_core::topology::REQUIRED_ANNOTATION),
        topology_preferred: annotation(drover_core::topology::PREFERRED_ANNOTATION),
    })
}

/// Converts a `NodeResourceTopology` (`topology.node.k8s.io/v1alpha2`, cluster-scoped,
/// named after its node) into the node's name and its NUMA zones.
pub fn node_resource_topology(
    obj: &kube::api::DynamicObject,
) -> Result<(String, drover_core::model::Numa), ConvertError> {
    use drover_core::model::{Numa, NumaZone};
    let name = obj.metadata.name.as_deref().ok_or(ConvertError::NoName {
        kind: "NodeResourceTopology",
    })?;
    let object = format!("NodeResourceTopology {name}");
    let bad = |problem: String| ConvertError::Field {
        object: object.clone(),
        problem,
    };
    let attr_policy = obj
        .data
        .get("attributes")
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
        .any(|a| {
            a.get("name").and_then(|n| n.as_str()) == Some("topologyManagerPolicy")
                && a.get("value").and_then(|v| v.as_str()) == Some("single-numa-node")
        });
    let old_policy = obj
        .data
        .get("topologyPolicies")
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str())
        .any(|p| p.starts_with("SingleNUMANode"));
    let zones = match obj.data.get("zones") {
        None => Vec::new(),
        Some(z) => z
            .as_array()
            .ok_or_else(|| bad("zones is not a list".into()))?
            .clone(),
    };
    let mut out = Vec::new();
    for (i, z) in zones.iter().enumerate() {
        if z.get("type").and_then(|t| t.as_str()) != Some("Node") {
            continue;
        }
        let zname = z
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| bad(format!("zones[{i}] has no name")))?;
        let mut available = Resources::default();
        for (j, r) in z
            .get("resources")
            .and_then(|r| r.as_array())
            .into_iter()
            .flatten()
            .enumerate()
        {
            let rname = r
                .get("name")
                .and_then(|n| n.as_str())
                .ok_or_else(|| bad(format!("zones[{i}].resources[{j}] has no name")))?;
            let q = match r.get("available") {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                _ => {
                    return Err(bad(format!(
                        "zones[{i}].resources[{j}].available is missing"
                    )));
                }
            };
            let v = parse_resource(rname, &q).map_err(|source| ConvertError::Quantity {
                object: object.clone(),
                field: format!("zones[{i}].resources[{j}].available"),
                resource: rname.to_string(),
                source,
            })?;
            available.set(&ResourceKind::from_name(rname), v);
        }
        out.push(NumaZone {
            name: zname.into(),
            available,
        });
    }
    Ok((
        name.to_string(),
        Numa {
            single_numa_node: attr_policy || old_policy,
            zones: out,
        },
    ))
}

/// Converts a `Queue` (`drover.dev/v1alpha1`).
pub fn queue(
    obj: &kube::api::DynamicObject,
) -> Result<drover_core::quota::QueueSpec, ConvertError> {
    let name = obj
        .metadata
        .name
        .as_deref()
        .ok_or(ConvertError::NoName { kind: "Queue" })?;
    let object = format!("Queue {name}");
    let wrong = |problem: String| ConvertError::Field {
        object: object.clone(),
        problem,
    };
    let spec = match obj.data.get("spec") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) if v.is_object() => Some(v),
        Some(v) => return Err(wrong(format!("spec: must be an object, not {v}"))),
    };
    let field = |f: &str| spec.and_then(|s| s.get(f)).filter(|v| !v.is_null());
    let list = |f: &str| -> Result<Option<Resources>, ConvertError> {
        let Some(v) = field(f) else {
            return Ok(None);
        };
        let map: BTreeMap<String, Quantity> = serde_json::from_value(v.clone()).map_err(|_| {
            wrong(format!(
                "spec.{f}: must map resource names to quantities, not {v}"
            ))
        })?;
        Ok(Some(resources(&object, &format!("spec.{f}"), Some(&map))?))
    };
    let parent = match field("parent") {
        None => None,
        Some(serde_json::Value::String(p)) if p.is_empty() => None,
        Some(serde_json::Value::String(p)) => Some(p.as_str().into()),
        Some(v) => {
            return Err(wrong(format!(
                "spec.parent: must be a queue's name, not {v}"
            )));
        }
    };
    let weight = match field("weight") {
        None => 1,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| wrong(format!("spec.weight: must be a whole number, not {v}")))?,
    };
    let reclaimable = match field("reclaimable") {
        None => true,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| wrong(format!("spec.reclaimable: must be true or false, not {v}")))?,
    };
    Ok(drover_core::quota::QueueSpec {
        name: name.into(),
        parent,
        guaranteed: list("guaranteed")?.unwrap_or_default(),
        max_listed: field("max")
            .and_then(|m| m.as_object())
            .map(|m| m.keys().map(|k| ResourceKind::from_name(k)).collect())
            .unwrap_or_default(),
        max: list("max")?,
        weight,
        reclaimable,
        unreadable: None,
    })
}

/// A Queue drover cannot read, as its pods see it: flagged with the field and the
/// problem, never guessed at (and never left at its last readable version).
pub fn unreadable_queue(
    obj: &kube::api::DynamicObject,
    err: &ConvertError,
) -> Option<drover_core::quota::QueueSpec> {
    let name = obj.metadata.name.as_deref()?;
    let (field, message) = match err {
        ConvertError::Field { problem, .. } => match problem.split_once(": ") {
            Some((f, m)) => (f.to_string(), m.to_string()),
            None => ("spec".to_string(), problem.clone()),
        },
        ConvertError::Quantity {
            field,
            resource,
            source,
            ..
        } => (format!("{field}[{resource}]"), source.to_string()),
        e => ("spec".to_string(), e.to_string()),
    };
    Some(drover_core::quota::QueueSpec {
        name: name.into(),
        unreadable: Some((field, message)),
        ..Default::default()
    })
}

/// Converts a `PodGroup` (`scheduling.x-k8s.io/v1alpha1`), read as an untyped object.
pub fn pod_group(obj: &kube::api::DynamicObject) -> Result<PodGroupInfo, ConvertError> {
    let name = obj
        .metadata
        .name
        .as_deref()
        .ok_or(ConvertError::NoName { kind: "PodGroup" })?;
    let ns = obj.metadata.namespace.as_deref().unwrap_or("default");
    let key = GangKey::new(ns, name);
    let object = format!("PodGroup {key}");
    let spec = obj.data.get("spec");
    let int = |field: &str| spec.and_then(|s| s.get(field)).and_then(|v| v.as_i64());
    let min_resources: Option<BTreeMap<String, Quantity>> = spec
        .and_then(|s| s.get("minResources"))
        .map(|v| {
            serde_json::from_value(v.clone()).map_err(|e| ConvertError::Field {
                object: object.clone(),
                problem: format!("spec.minResources: {e}"),
            })
        })
        .transpose()?;
    Ok(PodGroupInfo {
        min_resources: resources(&object, "spec.minResources", min_resources.as_ref())?,
        key,
        dialect: drover_core::gang::Dialect::SchedulerPlugins,
        queue: None,
        uid: obj.metadata.uid.as_deref().unwrap_or("").into(),
        // An absent minMember is 0 in the API's Go types: reported, never guessed.
        min_member: int("minMember").unwrap_or(0),
        topology_required: obj
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(drover_core::topology::REQUIRED_ANNOTATION))
            .map(|v| v.as_str().into()),
        topology_preferred: obj
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(drover_core::topology::PREFERRED_ANNOTATION))
            .map(|v| v.as_str().into()),
        schedule_timeout_ms: int("scheduleTimeoutSeconds")
            .filter(|s| *s > 0)
            .map(|s| s * 1000),
        problem: None,
    })
}

/// Converts Volcano's `PodGroup` (`scheduling.volcano.sh/v1beta1`): `minMember`,
/// `minResources`, `queue` (drover's Queue of that name; `default` is drover's default)
/// and the topology annotations drover reads on any PodGroup. Members join it with the
/// `scheduling.k8s.io/group-name` annotation, as Volcano's own do.
pub fn volcano_pod_group(obj: &kube::api::DynamicObject) -> Result<PodGroupInfo, ConvertError> {
    let mut info = pod_group(obj)?;
    info.dialect = drover_core::gang::Dialect::Volcano;
    let object = format!("PodGroup {} (scheduling.volcano.sh)", info.key);
    info.queue = match obj.data.get("spec").and_then(|s| s.get("queue")) {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(q)) if q.is_empty() => None,
        Some(serde_json::Value::String(q)) => Some(q.as_str().into()),
        Some(v) => {
            return Err(ConvertError::Field {
                object,
                problem: format!("spec.queue: must be a queue's name, not {v}"),
            });
        }
    };
    // The scheduleTimeoutSeconds field is scheduler-plugins' only.
    info.schedule_timeout_ms = None;
    Ok(info)
}

/// Converts a node.
pub fn node_info(node: &Node) -> Result<NodeInfo, ConvertError> {
    let name = node
        .metadata
        .name
        .as_deref()
        .ok_or(ConvertError::NoName { kind: "Node" })?;
    let status = node.status.as_ref();
    let (field, list) = match status.and_then(|s| s.allocatable.as_ref()) {
        Some(a) => ("status.allocatable", Some(a)),
        None => ("status.capacity", status.and_then(|s| s.capacity.as_ref())),
    };
    let allocatable = resources(name, field, list)?;
    let max_pods = match list.and_then(|l| l.get("pods")) {
        Some(q) => parse_resource("pods", &q.0).map_err(|source| ConvertError::Quantity {
            object: name.into(),
            field: field.into(),
            resource: "pods".into(),
            source,
        })?,
        None => 110,
    };
    let spec = node.spec.clone().unwrap_or_default();
    let taints = spec
        .taints
        .iter()
        .flatten()
        .filter_map(|t| {
            Some(Taint {
                key: t.key.as_str().into(),
                value: t.value.as_deref().unwrap_or("").into(),
                effect: TaintEffect::parse(&t.effect)?,
            })
        })
        .collect();
    Ok(NodeInfo {
        name: name.into(),
        known: true,
        labels: Labels::new(
            node.metadata
                .labels
                .iter()
                .flatten()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        ),
        taints,
        unschedulable: spec.unschedulable.unwrap_or(false),
        allocatable,
        max_pods,
        gpu_memory_mib: node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(GPU_MEMORY_LABEL))
            .and_then(|v| v.trim().parse::<i64>().ok()),
        ..Default::default()
    })
}

/// A PodDisruptionBudget as drover reads it; `None` when its selector is null (it
/// covers no pod). A selector drover cannot read covers every pod of the namespace,
/// so that drover rather evicts too little than too much.
pub fn disruption_budget(
    pdb: &k8s_openapi::api::policy::v1::PodDisruptionBudget,
) -> Option<drover_core::model::DisruptionBudget> {
    let namespace = pdb.metadata.namespace.clone().unwrap_or_default();
    let allowed = pdb.status.as_ref().map_or(0, |s| s.disruptions_allowed);
    let sel = pdb.spec.as_ref()?.selector.as_ref()?;
    let object = format!(
        "poddisruptionbudget {namespace}/{}",
        pdb.metadata.name.as_deref().unwrap_or("")
    );
    let mut reqs = Vec::new();
    for (k, v) in sel.match_labels.iter().flatten() {
        reqs.push(Requirement {
            key: k.as_str().into(),
            op: SelectorOp::In,
            values: vec![v.as_str().into()],
            bound: 0,
            field: false,
        });
    }
    let mut readable = true;
    for r in sel.match_expressions.iter().flatten() {
        match op(&object, &r.operator) {
            Ok(
                o @ (SelectorOp::In
                | SelectorOp::NotIn
                | SelectorOp::Exists
                | SelectorOp::DoesNotExist),
            ) => {
                let mut values: Vec<Arc<str>> = r
                    .values
                    .iter()
                    .flatten()
                    .map(|v| Arc::from(v.as_str()))
                    .collect();
                values.sort();
                reqs.push(Requirement {
                    key: r.key.as_str().into(),
                    op: o,
                    values,
                    bound: 0,
                    field: false,
                });
            }
            _ => readable = false,
        }
    }
    Some(drover_core::model::DisruptionBudget {
        namespace,
        selector: (readable && !reqs.is_empty()).then_some(SelectorTerm(reqs)),
        allowed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u1"}, "spec": spec}),
        )
        .unwrap()
    }

    fn res(cpu: &str, mem: &str) -> serde_json::Value {
        json!({"requests": {"cpu": cpu, "memory": mem}})
    }

    #[test]
    fn topology_spread_constraints_are_read_as_kube_scheduler_reads_them() {
        use drover_core::model::SpreadSelector;
        let mut p = pod(json!({
            "containers": [{"name": "a"}],
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "DoNotSchedule",
                    "labelSelector": {"matchLabels": {"app": "web"}},
                    "matchLabelKeys": ["pod-template-hash", "absent"],
                    "minDomains": 3,
                    "nodeTaintsPolicy": "Honor"
                },
                {
                    "maxSkew": 2,
                    "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "nodeAffinityPolicy": "Ignore"
                }
            ]
        }));
        p.metadata.labels = Some(
            [("app", "web"), ("pod-template-hash", "abc")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        p.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "web-abc".into(),
                uid: "rs-uid".into(),
                controller: Some(true),
                ..Default::default()
            },
        ]);
        let info = pod_info(&p).unwrap();
        assert_eq!(info.owner.as_deref(), Some("rs-uid"));
        let cs = info.topology_spread.expect("constraints");
        let (hard, soft) = (&cs[0], &cs[1]);
        assert!(hard.hard && !soft.hard);
        assert_eq!((hard.max_skew, hard.min_domains), (1, 3));
        assert!(hard.honor_node_affinity && hard.honor_taints);
        assert!(!soft.honor_node_affinity && !soft.honor_taints);
        // The template hash joins the selector; a key the pod lacks does not.
        let SpreadSelector::Labels(sel) = &hard.selector else {
            panic!("{:?}", hard.selector)
        };
        let keys: Vec<&str> = sel.0.iter().map(|r| &*r.key).collect();
        assert_eq!(keys, vec!["app", "pod-template-hash"]);
        // No labelSelector: it counts no pod.
        assert_eq!(soft.selector, SpreadSelector::Nothing);
        // Bad values are refused with the field named.
        let mut bad = p.clone();
        bad.spec
            .as_mut()
            .unwrap()
            .topology_spread_constraints
            .as_mut()
            .unwrap()[1]
            .when_unsatisfiable = "Sometimes".into();
        let e = pod_info(&bad).unwrap_err().to_string();
        assert!(
            e.contains("topologySpreadConstraints[1]") && e.contains("Sometimes"),
            "{e}"
        );
        let mut bad = p;
        bad.spec
            .as_mut()
            .unwrap()
            .topology_spread_constraints
            .as_mut()
            .unwrap()[0]
            .max_skew = 0;
        let e = pod_info(&bad).unwrap_err().to_string();
        assert!(e.contains("maxSkew 0"), "{e}");
    }

    #[test]
    fn pod_affinity_terms_are_read_as_kube_scheduler_reads_them() {
        let mut p = pod(json!({
            "containers": [{"name": "a"}],
            "schedulingGates": [{"name": "example.com/admission"}],
            "affinity": {
                "podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [{
                        "labelSelector": {"matchLabels": {"app": "web"}},
                        "matchLabelKeys": ["pod-template-hash", "absent"],
                        "topologyKey": "kubernetes.io/hostname"
                    }],
                    "preferredDuringSchedulingIgnoredDuringExecution": [{
                        "weight": 30,
                        "podAffinityTerm": {
                            "labelSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]},
                            "namespaceSelector": {},
                            "topologyKey": "topology.kubernetes.io/zone"
                        }
                    }]
                },
                "podAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [{
                        "labelSelector": {"matchLabels": {"role": "db"}},
                        "namespaces": ["data"],
                        "mismatchLabelKeys": ["tenant"],
                        "topologyKey": "topology.kubernetes.io/zone"
                    }]
                }
            }
        }));
        p.metadata.labels = Some(
            [
                ("app", "web"),
                ("pod-template-hash", "abc"),
                ("tenant", "t1"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        let info = pod_info(&p).unwrap();
        assert_eq!(
            &*info.scheduling_gates,
            &[Arc::from("example.com/admission")]
        );
        let a = info.pod_affinity.expect("terms");
        let anti = &a.required_anti[0];
        assert_eq!(&*anti.topology_key, "kubernetes.io/hostname");
        // The pod's own namespace, and its template hash joined to the selector.
        assert_eq!(anti.namespaces.names, vec![Arc::from("ns")]);
        let sel = anti.selector.as_ref().unwrap();
        let same = Labels::new([("app", "web"), ("pod-template-hash", "abc")]);
        let older = Labels::new([("app", "web"), ("pod-template-hash", "old")]);
        assert!(sel.matches(&same) && !sel.matches(&older));
        // An empty namespaceSelector: every namespace, none listed.
        let (w, pref) = &a.preferred_anti[0];
        assert_eq!(*w, 30);
        assert!(pref.namespaces.names.is_empty());
        assert!(pref.namespaces.contains("anything", None));
        // Listed namespaces only; mismatchLabelKeys is NotIn the pod's value.
        let aff = &a.required[0];
        assert_eq!(aff.namespaces.names, vec![Arc::from("data")]);
        let sel = aff.selector.as_ref().unwrap();
        assert!(sel.matches(&Labels::new([("role", "db"), ("tenant", "t2")])));
        assert!(!sel.matches(&Labels::new([("role", "db"), ("tenant", "t1")])));

        // A bad operator names the pod and says what is allowed.
        let bad = pod(json!({
            "containers": [{"name": "a"}],
            "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                "labelSelector": {"matchExpressions": [{"key": "x", "operator": "Gt", "values": ["1"]}]},
                "topologyKey": "kubernetes.io/hostname"
            }]}}
        }));
        let e = pod_info(&bad).unwrap_err().to_string();
        assert!(
            e.contains("ns/p") && e.contains("\"Gt\"") && e.contains("In, NotIn"),
            "{e}"
        );
        // No terms: nothing is kept.
        assert!(
            pod_info(&pod(json!({"containers": [{"name": "a"}]})))
                .unwrap()
                .pod_affinity
                .is_none()
        );
    }

    #[test]
    fn request_arithmetic_table() {
        let cases = [
            (
                "containers add up",
                json!({"containers": [{"name": "a", "resources": res("1", "1Gi")}, {"name": "b", "resources": res("500m", "1Gi")}]}),
                1500,
                2i64 << 30,
            ),
            (
                "init container raises",
                json!({"containers": [{"name": "a", "resources": res("1", "1Gi")}], "initContainers": [{"name": "i", "resources": res("2", "512Mi")}]}),
                2000,
                1 << 30,
            ),
            (
                "sidecar adds",
                json!({"containers": [{"name": "a", "resources": res("1", "1Gi")}], "initContainers": [{"name": "s", "restartPolicy": "Always", "resources": res("500m", "1Gi")}]}),
                1500,
                2 << 30,
            ),
            (
                "init after sidecar runs beside it",
                json!({"containers": [{"name": "a", "resources": res("100m", "1Gi")}], "initContainers": [{"name": "s", "restartPolicy": "Always", "resources": res("1", "1Gi")}, {"name": "i", "resources": res("2", "1Gi")}]}),
                3000,
                2 << 30,
            ),
            (
                "overhead adds",
                json!({"containers": [{"name": "a", "resources": res("1", "1Gi")}], "overhead": {"cpu": "250m", "memory": "128Mi"}}),
                1250,
                (1 << 30) + (128 << 20),
            ),
            (
                "limits only",
                json!({"containers": [{"name": "a", "resources": {"limits": {"cpu": "2", "memory": "2Gi"}}}]}),
                2000,
                2 << 30,
            ),
            (
                "pod-level requests replace",
                json!({"resources": {"requests": {"cpu": "4"}}, "containers": [{"name": "a", "resources": res("1", "1Gi")}]}),
                4000,
                1 << 30,
            ),
            (
                "nothing declared",
                json!({"containers": [{"name": "a"}]}),
                0,
                0,
            ),
        ];
        for (name, spec, cpu, mem) in cases {
            let p = pod_info(&pod(spec)).unwrap();
            assert_eq!((p.requests.cpu, p.requests.memory), (cpu, mem), "{name}");
            assert_eq!(p.declares_requests, cpu > 0, "{name}");
        }
    }

    #[test]
    fn pod_fields() {
        let p = pod_info(&pod(json!({
            "schedulerName": "drover",
            "priority": 7,
            "nodeSelector": {"pool": "gpu"},
            "containers": [{"name": "a", "resources": {"requests": {"nvidia.com/gpu": "2", "example.com/foo": "1"}}, "ports": [{"containerPort": 80, "hostPort": 8080}]}],
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "gpus", "operator": "Gt", "values": ["4"]}]}]},
                "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 5, "preference": {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}}]
            }}
        })))
        .unwrap();
        assert_eq!(&*p.scheduler_name, "drover");
        assert_eq!(p.priority, 7);
        assert_eq!(p.requests.gpu, 2);
        assert_eq!(p.requests.extended_amount("example.com/foo"), 1);
        assert_eq!(p.host_ports.len(), 1);
        assert_eq!(p.tolerations[0].effect, Some(TaintEffect::NoSchedule));
        assert_eq!(p.required_affinity[0].0[0].bound, 4);
        assert!(p.preferred_affinity[0].1.0[0].field);
        assert_eq!(p.node_selector.0.len(), 1);
    }

    #[test]
    fn malformed_objects_name_themselves() {
        let bad = pod(json!({"containers": [{"name": "a", "resources": res("lots", "1Gi")}]}));
        let err = pod_info(&bad).unwrap_err().to_string();
        assert!(
            err.contains("ns/p") && err.contains("containers[a].resources.requests[cpu]"),
            "{err}"
        );
        let bad = pod(
            json!({"containers": [{"name": "a"}], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "k", "operator": "Gt", "values": ["x"]}]}]}}}}),
        );
        assert!(
            pod_info(&bad)
                .unwrap_err()
                .to_string()
                .contains("needs one integer value")
        );
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}, "status": {"allocatable": {"cpu": "4", "memory": "bogus"}}})).unwrap();
        let err = node_info(&node).unwrap_err().to_string();
        assert!(err.contains("n1") && err.contains("memory"), "{err}");
    }

    #[test]
    fn node_fields() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"zone": "a"}},
            "spec": {"unschedulable": true, "taints": [{"key": "gpu", "value": "true", "effect": "NoSchedule"}]},
            "status": {"capacity": {"cpu": "8", "memory": "32Gi", "pods": "20", "nvidia.com/gpu": "8"}}
        }))
        .unwrap();
        let n = node_info(&node).unwrap();
        assert_eq!(
            (
                n.allocatable.cpu,
                n.allocatable.memory,
                n.allocatable.gpu,
                n.max_pods
            ),
            (8000, 32 << 30, 8, 20)
        );
        assert!(n.unschedulable);
        assert_eq!(n.taints.len(), 1);
        assert_eq!(n.labels.get("zone"), Some("a"));
    }

    #[test]
    fn disruption_budgets_cover_what_their_selector_selects() {
        use k8s_openapi::api::policy::v1::PodDisruptionBudget;
        let pdb = |spec: serde_json::Value, allowed: Option<i32>| -> PodDisruptionBudget {
            let mut v = serde_json::json!({
                "metadata": {"name": "b", "namespace": "ml"},
                "spec": spec,
            });
            if let Some(a) = allowed {
                v["status"] = serde_json::json!({
                    "disruptionsAllowed": a, "currentHealthy": 0,
                    "desiredHealthy": 0, "expectedPods": 0
                });
            }
            serde_json::from_value(v).unwrap()
        };
        let pod = |ns: &str, labels: &[(&str, &str)]| PodInfo {
            key: drover_core::model::PodKey::new(ns, "p"),
            labels: Labels::new(labels.iter().copied()),
            ..Default::default()
        };
        let worker = pod("ml", &[("app", "dask"), ("role", "worker")]);
        let other_ns = pod("web", &[("app", "dask"), ("role", "worker")]);
        let sched = pod("ml", &[("app", "dask"), ("role", "scheduler")]);
        // (spec, allowed, covers worker, covers scheduler, allowed read)
        let cases = [
            (
                serde_json::json!({"selector": {"matchLabels": {"app": "dask"}}}),
                Some(1),
                true,
                true,
                1,
            ),
            (
                serde_json::json!({"selector": {"matchLabels": {"app": "dask"},
                    "matchExpressions": [{"key": "role", "operator": "NotIn", "values": ["scheduler"]}]}}),
                None,
                true,
                false,
                0,
            ),
            // An empty selector covers the whole namespace.
            (serde_json::json!({"selector": {}}), Some(0), true, true, 0),
            // An operator drover cannot read: covers everything, to be safe.
            (
                serde_json::json!({"selector": {"matchExpressions": [{"key": "role", "operator": "Gt", "values": ["1"]}]}}),
                Some(2),
                true,
                true,
                2,
            ),
        ];
        for (spec, allowed, w, s, a) in cases {
            let b = disruption_budget(&pdb(spec.clone(), allowed)).expect("a selector");
            assert_eq!(
                (b.covers(&worker), b.covers(&sched), b.allowed),
                (w, s, a),
                "{spec}"
            );
            assert!(!b.covers(&other_ns), "{spec}");
        }
        // A null selector covers no pod.
        assert!(disruption_budget(&pdb(serde_json::json!({}), Some(0))).is_none());
    }
}

#[cfg(test)]
mod queue_tests {
    use super::*;
    use drover_core::quota::QueueTree;
    use serde_json::json;

    fn object(spec: serde_json::Value) -> kube::api::DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "drover.dev/v1alpha1", "kind": "Queue",
            "metadata": {"name": "team"}, "spec": spec,
        }))
        .unwrap()
    }

    /// Each field wrong in a way the CRD's schema refuses — a cluster with an older or
    /// looser CRD lets it through — is named on the Queue, never read as a default.
    #[test]
    fn every_wrong_queue_field_is_named_not_guessed() {
        for (spec, field, says) in [
            (json!("all of it"), "spec", "must be an object"),
            (json!({"weight": "two"}), "spec.weight", "whole number"),
            (json!({"weight": 1.5}), "spec.weight", "whole number"),
            (
                json!({"reclaimable": "yes"}),
                "spec.reclaimable",
                "true or false",
            ),
            (json!({"parent": 7}), "spec.parent", "queue's name"),
            (
                json!({"guaranteed": ["cpu"]}),
                "spec.guaranteed",
                "map resource names",
            ),
            (json!({"max": {"cpu": "lots"}}), "spec.max[cpu]", ""),
            (
                json!({"guaranteed": {"memory": "1Qi"}}),
                "spec.guaranteed[memory]",
                "",
            ),
        ] {
            let obj = object(spec.clone());
            let err = queue(&obj).expect_err(&format!("{spec} refused"));
            let q = unreadable_queue(&obj, &err).expect("named");
            let (f, message) = q.unreadable.clone().unwrap();
            assert_eq!(f, field, "{spec}: {err}");
            assert!(message.contains(says), "{spec}: {message}");
            let tree = QueueTree::build([q]);
            assert!(
                tree.get("team").is_none(),
                "{spec}: an unreadable queue is not used"
            );
            let problem = tree.problems().next().expect("flagged");
            assert_eq!(problem.field, field);
        }
        // Absent and null fields take their documented defaults.
        let q = queue(&object(json!({"weight": null, "parent": ""}))).unwrap();
        assert_eq!((q.weight, q.reclaimable, q.parent), (1, true, None));
    }
}
