//! Builders for fake nodes and test pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, Node, NodeSpec, NodeStatus, Pod, PodSchedulingGate,
    PodSpec, ResourceRequirements, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The annotation kwok selects the nodes it manages by (with value
/// [`FAKE_NODE_ANNOTATION_VALUE`]).
pub const FAKE_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";
/// The value of [`FAKE_NODE_ANNOTATION`] on fake nodes.
pub const FAKE_NODE_ANNOTATION_VALUE: &str = "fake";
/// The extended resource [`FakeNode::gpus`] and [`TestPod::gpus`] set.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// The image of test pods' containers; kwok never pulls it.
pub const PAUSE_IMAGE: &str = "registry.invalid/pause";

fn quantities(m: &BTreeMap<String, String>) -> BTreeMap<String, Quantity> {
    m.iter()
        .map(|(k, v)| (k.clone(), Quantity(v.clone())))
        .collect()
}

fn non_empty<T>(m: BTreeMap<String, T>) -> Option<BTreeMap<String, T>> {
    (!m.is_empty()).then_some(m)
}

/// A node kwok manages: annotation `kwok.x-k8s.io/node: fake`, labels `type: kwok`,
/// `kubernetes.io/hostname: <name>`, `kubernetes.io/os: linux` and
/// `kubernetes.io/arch: amd64`, and `status.capacity` == `status.allocatable` as given
/// (default cpu 4, memory 16Gi, pods 110).
///
/// ```
/// let node = drover_testenv::FakeNode::new("n-1").cpu("8").memory("32Gi").gpus(8).taint("gpu", "true", "NoSchedule").build();
/// assert_eq!(node.status.unwrap().capacity.unwrap()["nvidia.com/gpu"].0, "8");
/// ```
#[derive(Debug, Clone)]
pub struct FakeNode {
    name: String,
    resources: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    taints: Vec<Taint>,
    unschedulable: bool,
}

impl FakeNode {
    /// A node named `name` with cpu 4, memory 16Gi and 110 pods.
    pub fn new(name: impl Into<String>) -> FakeNode {
        let name = name.into();
        let resources = [("cpu", "4"), ("memory", "16Gi"), ("pods", "110")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let labels = [
            ("type", "kwok"),
            ("kubernetes.io/hostname", name.as_str()),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let annotations = [(
            FAKE_NODE_ANNOTATION.to_string(),
            FAKE_NODE_ANNOTATION_VALUE.to_string(),
        )]
        .into();
        FakeNode {
            name,
            resources,
            labels,
            annotations,
            taints: Vec::new(),
            unschedulable: false,
        }
    }

    /// CPU capacity, a Kubernetes quantity (`"8"`, `"7500m"`).
    pub fn cpu(self, q: &str) -> Self {
        self.resource("cpu", q)
    }

    /// Memory capacity (`"32Gi"`).
    pub fn memory(self, q: &str) -> Self {
        self.resource("memory", q)
    }

    /// The most pods the node holds.
    pub fn pods(self, n: impl Into<i64>) -> Self {
        self.resource("pods", &n.into().to_string())
    }

    /// `nvidia.com/gpu` capacity (0 removes it).
    pub fn gpus(mut self, n: impl Into<i64>) -> Self {
        let n = n.into();
        if n <= 0 {
            self.resources.remove(GPU_RESOURCE);
            self
        } else {
            self.resource(GPU_RESOURCE, &n.to_string())
        }
    }

    /// Capacity (and allocatable) of any resource, e.g. `("example.com/foo", "4")`.
    pub fn resource(mut self, name: &str, q: &str) -> Self {
        self.resources.insert(name.to_string(), q.to_string());
        self
    }

    /// Adds or replaces a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// Adds or replaces an annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }

    /// Adds a taint; `effect` is `NoSchedule`, `PreferNoSchedule` or `NoExecute`, and an
    /// empty `value` means none.
    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Self {
        self.taints.push(Taint {
            key: key.to_string(),
            value: (!value.is_empty()).then(|| value.to_string()),
            effect: effect.to_string(),
            time_added: None,
        });
        self
    }

    /// Sets `spec.unschedulable` (cordoned).
    pub fn unschedulable(mut self, on: bool) -> Self {
        self.unschedulable = on;
        self
    }

    /// The Node object to create (see [`ControlPlane::create_nodes`](crate::ControlPlane::create_nodes)).
    pub fn build(self) -> Node {
        let resources = quantities(&self.resources);
        Node {
            metadata: ObjectMeta {
                name: Some(self.name),
                labels: non_empty(self.labels),
                annotations: non_empty(self.annotations),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: (!self.taints.is_empty()).then_some(self.taints),
                unschedulable: self.unschedulable.then_some(true),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                capacity: Some(resources.clone()),
                allocatable: Some(resources),
                ..Default::default()
            }),
        }
    }
}

/// A pod whose containers use [`PAUSE_IMAGE`] (kwok does not pull images), in namespace
/// `default` unless told otherwise.
///
/// Requests of cpu, memory and ephemeral-storage are requests only; any other resource
/// (GPUs, extended resources, hugepages) gets limits equal to its requests, as the API
/// requires.
///
/// ```
/// let pod = drover_testenv::TestPod::new("p-1").scheduler("drover").cpu("500m").memory("1Gi").gpus(1).build();
/// assert_eq!(pod.spec.unwrap().scheduler_name.as_deref(), Some("drover"));
/// ```
#[derive(Debug, Clone)]
pub struct TestPod {
    name: String,
    namespace: String,
    scheduler: Option<String>,
    image: String,
    requests: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    node_selector: BTreeMap<String, String>,
    tolerations: Vec<Toleration>,
    node_name: Option<String>,
    priority: Option<i32>,
    priority_class_name: Option<String>,
    host_ports: Vec<u16>,
    init_containers: Vec<BTreeMap<String, String>>,
    overhead: Option<BTreeMap<String, String>>,
    affinity: Option<Affinity>,
    scheduling_gates: Vec<String>,
}

impl TestPod {
    /// A pod named `name` in namespace `default` with no requests and the default scheduler.
    pub fn new(name: impl Into<String>) -> TestPod {
        TestPod {
            name: name.into(),
            namespace: "default".to_string(),
            scheduler: None,
            image: PAUSE_IMAGE.to_string(),
            requests: BTreeMap::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            node_name: None,
            priority: None,
            priority_class_name: None,
            host_ports: Vec::new(),
            init_containers: Vec::new(),
            overhead: None,
            affinity: None,
            scheduling_gates: Vec::new(),
        }
    }

    /// The namespace (default `default`).
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.to_string();
        self
    }

    /// `spec.schedulerName` (unset means `default-scheduler`).
    pub fn scheduler(mut self, name: &str) -> Self {
        self.scheduler = Some(name.to_string());
        self
    }

    /// The containers' image (default [`PAUSE_IMAGE`]).
    pub fn image(mut self, image: &str) -> Self {
        self.image = image.to_string();
        self
    }

    /// CPU request of the main container (`"500m"`).
    pub fn cpu(self, q: &str) -> Self {
        self.resource("cpu", q)
    }

    /// Memory request of the main container (`"1Gi"`).
    pub fn memory(self, q: &str) -> Self {
        self.resource("memory", q)
    }

    /// `nvidia.com/gpu` request (and limit) of the main container.
    pub fn gpus(self, n: impl Into<i64>) -> Self {
        self.resource(GPU_RESOURCE, &n.into().to_string())
    }

    /// A request of any resource by the main container (extended resources also get it
    /// as their limit).
    pub fn resource(mut self, name: &str, q: &str) -> Self {
        self.requests.insert(name.to_string(), q.to_string());
        self
    }

    /// Adds or replaces a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// Adds or replaces an annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }

    /// Adds a `spec.nodeSelector` entry.
    pub fn node_selector(mut self, key: &str, value: &str) -> Self {
        self.node_selector
            .insert(key.to_string(), value.to_string());
        self
    }

    /// Adds a toleration; `op` is `Equal` or `Exists`; empty strings leave the key,
    /// value or effect unset (an empty key with `Exists` tolerates everything).
    pub fn toleration(mut self, key: &str, op: &str, value: &str, effect: &str) -> Self {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        self.tolerations.push(Toleration {
            key: opt(key),
            operator: opt(op),
            value: opt(value),
            effect: opt(effect),
            toleration_seconds: None,
        });
        self
    }

    /// `spec.nodeName`: the pod is bound at creation, bypassing every scheduler.
    pub fn node_name(mut self, node: &str) -> Self {
        self.node_name = Some(node.to_string());
        self
    }

    /// `spec.priority`. The test apiserver disables the `Priority` admission plugin by
    /// default, so no PriorityClass is needed (see
    /// [`DEFAULT_DISABLED_ADMISSION_PLUGINS`](crate::DEFAULT_DISABLED_ADMISSION_PLUGINS)).
    pub fn priority(mut self, p: i32) -> Self {
        self.priority = Some(p);
        self
    }

    /// `spec.priorityClassName` (resolved to a priority only when the `Priority`
    /// admission plugin is enabled).
    pub fn priority_class_name(mut self, name: &str) -> Self {
        self.priority_class_name = Some(name.to_string());
        self
    }

    /// Adds a TCP port `port` on the main container with `hostPort: port`.
    pub fn host_port(mut self, port: u16) -> Self {
        self.host_ports.push(port);
        self
    }

    /// Adds an init container requesting `cpu` and `memory` (an empty string requests none).
    pub fn init_container(mut self, cpu: &str, memory: &str) -> Self {
        let r = [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, q)| (k.to_string(), q.to_string()))
            .collect();
        self.init_containers.push(r);
        self
    }

    /// `spec.overhead` of `cpu` and `memory` (an empty string leaves one out). The test
    /// apiserver disables the `RuntimeClass` admission plugin by default, so no
    /// RuntimeClass is needed.
    pub fn overhead(mut self, cpu: &str, memory: &str) -> Self {
        let r = [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, q)| (k.to_string(), q.to_string()))
            .collect();
        self.overhead = Some(r);
        self
    }

    /// `spec.affinity` (node affinity, pod affinity and anti-affinity).
    pub fn affinity(mut self, affinity: Affinity) -> Self {
        self.affinity = Some(affinity);
        self
    }

    /// Adds a scheduling gate (`spec.schedulingGates`): no scheduler attempts the pod
    /// until every gate is removed.
    pub fn scheduling_gate(mut self, name: &str) -> Self {
        self.scheduling_gates.push(name.to_string());
        self
    }

    /// The Pod object to create.
    pub fn build(self) -> Pod {
        let main = Container {
            name: "main".to_string(),
            image: Some(self.image.clone()),
            resources: Some(resources(&self.requests)),
            ports: (!self.host_ports.is_empty()).then(|| {
                self.host_ports
                    .iter()
                    .map(|&p| ContainerPort {
                        container_port: i32::from(p),
                        host_port: Some(i32::from(p)),
                        protocol: Some("TCP".to_string()),
                        ..Default::default()
                    })
                    .collect()
            }),
            ..Default::default()
        };
        let init: Vec<Container> = self
            .init_containers
            .iter()
            .enumerate()
            .map(|(i, r)| Container {
                name: format!("init-{i}"),
                image: Some(self.image.clone()),
                resources: Some(resources(r)),
                ..Default::default()
            })
            .collect();
        Pod {
            metadata: ObjectMeta {
                name: Some(self.name),
                namespace: Some(self.namespace),
                labels: non_empty(self.labels),
                annotations: non_empty(self.annotations),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![main],
                init_containers: (!init.is_empty()).then_some(init),
                scheduler_name: self.scheduler,
                node_name: self.node_name,
                node_selector: non_empty(self.node_selector),
                tolerations: (!self.tolerations.is_empty()).then_some(self.tolerations),
                priority: self.priority,
                priority_class_name: self.priority_class_name,
                overhead: self.overhead.as_ref().map(quantities),
                affinity: self.affinity,
                scheduling_gates: (!self.scheduling_gates.is_empty()).then(|| {
                    self.scheduling_gates
                        .into_iter()
                        .map(|name| PodSchedulingGate { name })
                        .collect()
                }),
                ..Default::default()
            }),
            status: None,
        }
    }
}

/// Requests as given; limits equal to requests for everything but cpu, memory and
/// ephemeral-storage (the API requires limits for extended resources and hugepages).
fn resources(requests: &BTreeMap<String, String>) -> ResourceRequirements {
    let limits: BTreeMap<String, Quantity> = requests
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "cpu" | "memory" | "ephemeral-storage"))
        .map(|(k, v)| (k.clone(), Quantity(v.clone())))
        .collect();
    ResourceRequirements {
        requests: non_empty(quantities(requests)),
        limits: non_empty(limits),
        ..Default::default()
    }
}
