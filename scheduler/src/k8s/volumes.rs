//! PersistentVolumeClaims, PersistentVolumes, StorageClasses and CSINodes into the
//! core's volume model, read the way kube-scheduler's volume plugins read them.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::{CSINode, StorageClass as ApiStorageClass};

use drover_core::model::{
    AccessModes, BindingMode, Claim, ClaimKey, CsiNode, DeviceClaim, Requirement, SelectorOp,
    SelectorTerm, StorageClass, Volume, VolumeMode,
};
use drover_core::quantity::parse_units;

use super::convert::{ConvertError, label_selector, term};

/// The annotation a provisioner reads for the node a volume must reach.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The annotation the volume controller sets once a claim's binding is complete.
pub const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// The annotation the scheduler sets on a volume it binds to a claim.
pub const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// The legacy class annotation, read before `storageClassName` as Kubernetes does.
const BETA_CLASS: &str = "volume.beta.kubernetes.io/storage-class";
/// The legacy zone and region labels that restrict a volume's nodes.
const ZONE_LABELS: [&str; 4] = [
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
];

fn access_modes(object: &str, modes: Option<&Vec<String>>) -> Result<AccessModes, ConvertError> {
    let mut all = AccessModes::default();
    for m in modes.into_iter().flatten() {
        all = all.union(AccessModes::parse(m).ok_or_else(|| ConvertError::Field {
            object: object.into(),
            problem: format!(
                "accessModes: unknown mode {m:?} (use ReadWriteOnce, ReadOnlyMany, ReadWriteMany or ReadWriteOncePod)"
            ),
        })?);
    }
    Ok(all)
}

fn volume_mode(mode: Option<&str>) -> VolumeMode {
    match mode {
        Some("Block") => VolumeMode::Block,
        _ => VolumeMode::Filesystem,
    }
}

fn bytes(
    object: &str,
    field: &str,
    q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
) -> Result<i64, ConvertError> {
    q.map_or(Ok(0), |q| {
        parse_units(&q.0).map_err(|source| ConvertError::Quantity {
            object: object.into(),
            field: field.into(),
            resource: "storage".into(),
            source,
        })
    })
}

/// True when the volume controller completed the claim's binding: `status.phase` is
/// `Bound`, or `pv.kubernetes.io/bind-completed` is set.
pub fn binding_completed(pvc: &PersistentVolumeClaim) -> bool {
    pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
        || pvc
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(BIND_COMPLETED))
}

/// Converts a PersistentVolumeClaim.
pub fn claim(pvc: &PersistentVolumeClaim) -> Result<(ClaimKey, Claim), ConvertError> {
    let meta = &pvc.metadata;
    let name = meta.name.as_deref().ok_or(ConvertError::NoName {
        kind: "PersistentVolumeClaim",
    })?;
    let key = ClaimKey::new(meta.namespace.as_deref().unwrap_or("default"), name);
    let object = format!("persistentvolumeclaim {key}");
    let spec = pvc.spec.clone().unwrap_or_default();
    let annotations = meta.annotations.as_ref();
    let annotation = |k: &str| annotations.and_then(|a| a.get(k)).map(String::as_str);
    let class = annotation(BETA_CLASS)
        .or(spec.storage_class_name.as_deref())
        .map(Arc::from);
    let request = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"));
    Ok((
        key,
        Claim {
            uid: meta.uid.as_deref().unwrap_or("").into(),
            volume_name: spec
                .volume_name
                .as_deref()
                .filter(|v| !v.is_empty())
                .map(Arc::from),
            bound: binding_completed(pvc),
            class,
            request_bytes: bytes(&object, "spec.resources.requests", request)?,
            access_modes: access_modes(&object, spec.access_modes.as_ref())?,
            volume_mode: volume_mode(spec.volume_mode.as_deref()),
            selector: spec
                .selector
                .as_ref()
                .map(|s| label_selector(&object, "spec.selector", s))
                .transpose()?,
            selected_node: annotation(SELECTED_NODE)
                .filter(|n| !n.is_empty())
                .map(Arc::from),
            deleting: meta.deletion_timestamp.is_some(),
        },
    ))
}

/// Converts a PersistentVolume.
pub fn volume(pv: &PersistentVolume) -> Result<(String, Volume), ConvertError> {
    let meta = &pv.metadata;
    let name = meta.name.as_deref().ok_or(ConvertError::NoName {
        kind: "PersistentVolume",
    })?;
    let object = format!("persistentvolume {name}");
    let spec = pv.spec.clone().unwrap_or_default();
    let labels = meta.labels.as_ref();
    let class = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(BETA_CLASS))
        .or(spec.storage_class_name.as_ref())
        .filter(|c| !c.is_empty())
        .map(|c| Arc::from(c.as_str()));
    let node_affinity = spec
        .node_affinity
        .as_ref()
        .and_then(|a| a.required.as_ref())
        .map(|r| {
            r.node_selector_terms
                .iter()
                .map(|t| term(&object, t))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let zone_labels = ZONE_LABELS
        .iter()
        .filter_map(|k| {
            let v = labels?.get(*k)?;
            Some((Arc::from(*k), v.split("__").map(Arc::from).collect()))
        })
        .collect();
    let claim = spec.claim_ref.as_ref().and_then(|r| {
        let name = r.name.as_deref().filter(|n| !n.is_empty())?;
        Some((
            ClaimKey::new(r.namespace.as_deref().unwrap_or("default"), name),
            r.uid.as_deref().filter(|u| !u.is_empty()).map(Arc::from),
        ))
    });
    Ok((
        name.to_string(),
        Volume {
            name: name.into(),
            class,
            capacity_bytes: bytes(
                &object,
                "spec.capacity",
                spec.capacity.as_ref().and_then(|c| c.get("storage")),
            )?,
            access_modes: access_modes(&object, spec.access_modes.as_ref())?,
            volume_mode: volume_mode(spec.volume_mode.as_deref()),
            node_affinity,
            zone_labels,
            claim,
            available: pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Available"),
            deleting: meta.deletion_timestamp.is_some(),
            labels: drover_core::model::Labels::new(
                labels
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            ),
            csi_driver: spec.csi.as_ref().map(|c| Arc::from(c.driver.as_str())),
        },
    ))
}

/// Converts a StorageClass.
pub fn storage_class(sc: &ApiStorageClass) -> Result<(String, StorageClass), ConvertError> {
    let name = sc.metadata.name.as_deref().ok_or(ConvertError::NoName {
        kind: "StorageClass",
    })?;
    let binding_mode = match sc.volume_binding_mode.as_deref() {
        None | Some("Immediate") => BindingMode::Immediate,
        Some("WaitForFirstConsumer") => BindingMode::WaitForFirstConsumer,
        Some(other) => {
            return Err(ConvertError::Field {
                object: format!("storageclass {name}"),
                problem: format!(
                    "volumeBindingMode {other:?} is neither Immediate nor WaitForFirstConsumer"
                ),
            });
        }
    };
    let allowed_topologies = sc.allowed_topologies.as_ref().map(|terms| {
        terms
            .iter()
            .map(|t| {
                SelectorTerm(
                    t.match_label_expressions
                        .iter()
                        .flatten()
                        .map(|r| {
                            let mut values: Vec<Arc<str>> =
                                r.values.iter().map(|v| Arc::from(v.as_str())).collect();
                            values.sort();
                            Requirement {
                                key: r.key.as_str().into(),
                                op: SelectorOp::In,
                                values,
                                bound: 0,
                                field: false,
                            }
                        })
                        .collect(),
                )
            })
            .collect()
    });
    Ok((
        name.to_string(),
        StorageClass {
            provisioner: sc.provisioner.as_str().into(),
            binding_mode,
            allowed_topologies,
        },
    ))
}

/// Converts a ResourceClaim: whether it is allocated, and on which nodes.
pub fn device_claim(
    c: &k8s_openapi::api::resource::v1::ResourceClaim,
) -> Result<(ClaimKey, DeviceClaim), ConvertError> {
    let meta = &c.metadata;
    let name = meta.name.as_deref().ok_or(ConvertError::NoName {
        kind: "ResourceClaim",
    })?;
    let key = ClaimKey::new(meta.namespace.as_deref().unwrap_or("default"), name);
    let object = format!("resourceclaim {key}");
    let allocation = c.status.as_ref().and_then(|s| s.allocation.as_ref());
    let nodes = allocation
        .and_then(|a| a.node_selector.as_ref())
        .map(|n| {
            n.node_selector_terms
                .iter()
                .map(|t| term(&object, t))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    Ok((
        key,
        DeviceClaim {
            allocated: allocation.is_some(),
            nodes,
            deleting: meta.deletion_timestamp.is_some(),
        },
    ))
}

/// Converts a CSINode: each driver's attach limit (`allocatable.count`).
pub fn csi_node(c: &CSINode) -> Result<(String, CsiNode), ConvertError> {
    let name = c
        .metadata
        .name
        .as_deref()
        .ok_or(ConvertError::NoName { kind: "CSINode" })?;
    let drivers = c
        .spec
        .drivers
        .iter()
        .map(|d| {
            let count = d
                .allocatable
                .as_ref()
                .and_then(|a| a.count)
                .and_then(|n| u32::try_from(n).ok());
            (Arc::from(d.name.as_str()), count)
        })
        .collect();
    Ok((name.to_string(), CsiNode { drivers }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_core::model::Labels;
    use serde_json::json;

    #[test]
    fn a_claim_reads_as_kube_scheduler_reads_it() {
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "home", "namespace": "team", "uid": "u1",
                "annotations": {SELECTED_NODE: "n-1"}},
            "spec": {"storageClassName": "zonal", "accessModes": ["ReadWriteOnce", "ReadWriteOncePod"],
                "resources": {"requests": {"storage": "10Gi"}},
                "selector": {"matchLabels": {"tier": "fast"}}},
            "status": {"phase": "Pending"}
        }))
        .unwrap();
        let (key, c) = claim(&pvc).unwrap();
        assert_eq!(key, ClaimKey::new("team", "home"));
        assert_eq!(c.class.as_deref(), Some("zonal"));
        assert_eq!(c.request_bytes, 10 << 30);
        assert!(c.access_modes.contains(AccessModes::RWOP));
        assert!(!c.access_modes.contains(AccessModes::RWX));
        assert_eq!(c.selected_node.as_deref(), Some("n-1"));
        assert!(!c.bound);
        assert!(
            c.selector
                .as_ref()
                .unwrap()
                .matches(&Labels::new([("tier", "fast")]))
        );
        let bad: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "x", "namespace": "team"},
            "spec": {"accessModes": ["ReadWriteSometimes"]}
        }))
        .unwrap();
        let e = claim(&bad).unwrap_err().to_string();
        assert!(
            e.contains("persistentvolumeclaim team/x") && e.contains("ReadWriteSometimes"),
            "{e}"
        );
    }

    #[test]
    fn a_volume_reads_its_nodes_claim_and_driver() {
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": "pv-1", "labels": {"topology.kubernetes.io/zone": "a__b"}},
            "spec": {"storageClassName": "local", "capacity": {"storage": "5Gi"},
                "accessModes": ["ReadWriteOnce"],
                "csi": {"driver": "csi.example.com", "volumeHandle": "h1"},
                "claimRef": {"namespace": "team", "name": "home", "uid": "u1"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n-0"]}]}]}}},
            "status": {"phase": "Bound"}
        }))
        .unwrap();
        let (name, v) = volume(&pv).unwrap();
        assert_eq!(name, "pv-1");
        assert_eq!(v.capacity_bytes, 5 << 30);
        assert_eq!(v.csi_driver.as_deref(), Some("csi.example.com"));
        assert!(v.claimed_by(&ClaimKey::new("team", "home"), "u1"));
        assert!(!v.claimed_by(&ClaimKey::new("team", "home"), "u2"));
        assert!(!v.available);
        let node = |host: &str, zone: &str| {
            Labels::new([
                ("kubernetes.io/hostname", host),
                ("topology.kubernetes.io/zone", zone),
            ])
        };
        assert!(v.reachable_from(&node("n-0", "b"), "n-0"));
        assert!(!v.reachable_from(&node("n-1", "b"), "n-1"));
        assert!(!v.reachable_from(&node("n-0", "c"), "n-0"));
    }

    #[test]
    fn a_class_and_a_csi_node() {
        let sc: ApiStorageClass = serde_json::from_value(json!({
            "metadata": {"name": "zonal"}, "provisioner": "csi.example.com",
            "volumeBindingMode": "WaitForFirstConsumer",
            "allowedTopologies": [{"matchLabelExpressions": [
                {"key": "topology.kubernetes.io/zone", "values": ["a"]}]}]
        }))
        .unwrap();
        let (_, c) = storage_class(&sc).unwrap();
        assert_eq!(c.binding_mode, BindingMode::WaitForFirstConsumer);
        let zone = |z: &str| Labels::new([("topology.kubernetes.io/zone", z)]);
        assert!(c.provisions_for(&zone("a"), "n"));
        assert!(!c.provisions_for(&zone("b"), "n"));
        let mut bad = sc.clone();
        bad.volume_binding_mode = Some("Later".into());
        let e = storage_class(&bad).unwrap_err().to_string();
        assert!(
            e.contains("storageclass zonal") && e.contains("Later"),
            "{e}"
        );
        let csi: CSINode = serde_json::from_value(json!({
            "metadata": {"name": "n-0"},
            "spec": {"drivers": [{"name": "csi.example.com", "nodeID": "n-0", "allocatable": {"count": 2}},
                                 {"name": "other", "nodeID": "n-0"}]}
        }))
        .unwrap();
        let (n, c) = csi_node(&csi).unwrap();
        assert_eq!(n, "n-0");
        assert_eq!(c.limit("csi.example.com"), Some(2));
        assert_eq!(c.limit("other"), None);
    }

    #[test]
    fn a_resource_claim_and_the_pods_that_use_it() {
        let rc: k8s_openapi::api::resource::v1::ResourceClaim = serde_json::from_value(json!({
            "metadata": {"name": "gpu-x", "namespace": "team"},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.example.com"}}]}},
            "status": {"allocation": {"devices": {"results": []}, "nodeSelector": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n-0"]}]}]}}}
        }))
        .unwrap();
        let (key, c) = device_claim(&rc).unwrap();
        assert_eq!(key, ClaimKey::new("team", "gpu-x"));
        assert!(c.allocated);
        let terms = c.nodes.unwrap();
        assert!(terms[0].matches(&Labels::default(), "n-0"));
        assert!(!terms[0].matches(&Labels::default(), "n-1"));
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "team"},
            "spec": {"containers": [{"name": "c"}], "resourceClaims": [
                {"name": "named", "resourceClaimName": "gpu-x"},
                {"name": "templated", "resourceClaimTemplateName": "t"},
                {"name": "later", "resourceClaimTemplateName": "t"},
                {"name": "unneeded", "resourceClaimTemplateName": "t"}]},
            "status": {"resourceClaimStatuses": [
                {"name": "templated", "resourceClaimName": "p-templated-abcde"},
                {"name": "unneeded"}]}
        }))
        .unwrap();
        let info = super::super::convert::pod_info(&pod).unwrap();
        let refs: Vec<_> = info
            .device_claims
            .unwrap()
            .iter()
            .map(|r| (r.name.to_string(), r.claim.as_deref().map(str::to_string)))
            .collect();
        assert_eq!(
            refs,
            vec![
                ("named".to_string(), Some("gpu-x".to_string())),
                (
                    "templated".to_string(),
                    Some("p-templated-abcde".to_string())
                ),
                ("later".to_string(), None),
            ]
        );
    }
}
