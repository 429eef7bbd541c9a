//! A real Kubernetes control plane for drover's tests: etcd, kube-apiserver and kwok
//! (which plays kubelet for fake nodes) on loopback, started the way controller-runtime's
//! envtest does, plus the real kube-scheduler and kube-controller-manager on demand.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use drover_testenv::{ControlPlane, FakeNode, TestPod};
//! use kube::api::{Api, PostParams};
//!
//! let cp = ControlPlane::start().await?;
//! cp.create_nodes(&[FakeNode::new("n-1").cpu("8").memory("32Gi").gpus(8).build()]).await?;
//! let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(cp.client(), "default");
//! pods.create(&PostParams::default(), &TestPod::new("p-1").scheduler("drover").cpu("1").build()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Binaries come from `TEST_ASSET_<NAME>`, `KUBEBUILDER_ASSETS`, or a cached build by
//! `tests/controlplane/build.sh` (see [`binary_path`] and `tests/README.md`).

mod binaries;
mod controlplane;
mod fixtures;
mod process;
mod util;

pub use binaries::{Binary, binary_path, build_dir, ray_cluster_crd, repo_root};
pub use controlplane::{
    ADMIN_USER, ControlPlane, ControlPlaneBuilder, DEFAULT_DISABLED_ADMISSION_PLUGINS, KWOK_STAGES,
};
pub use fixtures::{
    FAKE_NODE_ANNOTATION, FAKE_NODE_ANNOTATION_VALUE, FakeNode, GPU_RESOURCE, PAUSE_IMAGE, TestPod,
};
pub use process::{ProcessGuard, free_port};
pub use util::{bound_pods, ensure_namespace, wait_until};
