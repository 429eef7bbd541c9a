//! Finding the control-plane binaries: environment overrides, envtest assets, or the
//! cached build made by `tests/controlplane/build.sh`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, bail};

/// One of the control-plane programs the harness runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binary {
    /// `etcd`.
    Etcd,
    /// `kube-apiserver`.
    KubeApiserver,
    /// `kube-scheduler`.
    KubeScheduler,
    /// `kube-controller-manager`.
    KubeControllerManager,
    /// `kwok` (the controller that plays kubelet for fake nodes).
    Kwok,
    /// KubeRay's `ray-operator` (not part of the control plane; e2e tests start it).
    RayOperator,
}

impl Binary {
    /// Every binary, in start order.
    pub const ALL: [Binary; 5] = [
        Binary::Etcd,
        Binary::KubeApiserver,
        Binary::KubeScheduler,
        Binary::KubeControllerManager,
        Binary::Kwok,
    ];

    /// The file name of the binary (also its name under `KUBEBUILDER_ASSETS`).
    pub fn file_name(self) -> &'static str {
        match self {
            Binary::Etcd => "etcd",
            Binary::KubeApiserver => "kube-apiserver",
            Binary::KubeScheduler => "kube-scheduler",
            Binary::KubeControllerManager => "kube-controller-manager",
            Binary::Kwok => "kwok",
            Binary::RayOperator => "ray-operator",
        }
    }

    /// The environment variable that, when set, names this binary's path
    /// (`TEST_ASSET_KUBE_APISERVER`, `TEST_ASSET_ETCD`, ...).
    pub fn env_var(self) -> &'static str {
        match self {
            Binary::Etcd => "TEST_ASSET_ETCD",
            Binary::KubeApiserver => "TEST_ASSET_KUBE_APISERVER",
            Binary::KubeScheduler => "TEST_ASSET_KUBE_SCHEDULER",
            Binary::KubeControllerManager => "TEST_ASSET_KUBE_CONTROLLER_MANAGER",
            Binary::Kwok => "TEST_ASSET_KWOK",
            Binary::RayOperator => "TEST_ASSET_RAY_OPERATOR",
        }
    }
}

/// The repository root: the nearest directory above the running package that holds
/// `tests/controlplane`.
pub fn repo_root() -> PathBuf {
    // From the running test's package directory (set by cargo at run time), not the
    // compiling one: a build shared between clones through one target directory must
    // not bake in the path of the clone that compiled it.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let root = dir
        .ancestors()
        .find(|d| d.join("tests/controlplane").is_dir())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    std::fs::canonicalize(&root).unwrap_or(root)
}

/// Path to the binary to run for `bin`.
///
/// In order: `$TEST_ASSET_<NAME>` if set; else `$KUBEBUILDER_ASSETS/<name>` if that file
/// exists; else the directory printed by `tests/controlplane/build.sh` (run at most once
/// per process; a warm cache returns at once, a cold build takes minutes and streams its
/// progress to stderr).
pub fn binary_path(bin: Binary) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(bin.env_var()).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!(
                "{} is set to {}, which is not a file",
                bin.env_var(),
                p.display()
            );
        }
        return Ok(p);
    }
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(dir).join(bin.file_name());
        if p.is_file() {
            return Ok(p);
        }
    }
    let dir = build_dir()?;
    let p = dir.join(bin.file_name());
    if !p.is_file() {
        bail!(
            "{} is missing from {} (the directory printed by tests/controlplane/build.sh); set {} or KUBEBUILDER_ASSETS",
            bin.file_name(),
            dir.display(),
            bin.env_var()
        );
    }
    Ok(p)
}

/// KubeRay's RayCluster CRD, as `tests/controlplane/build.sh` copies it from the
/// ray-operator module it builds (`crds/ray.io_rayclusters.yaml` next to the binaries;
/// under `KUBEBUILDER_ASSETS` if that holds it).
pub fn ray_cluster_crd() -> anyhow::Result<PathBuf> {
    let rel = "crds/ray.io_rayclusters.yaml";
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(dir).join(rel);
        if p.is_file() {
            return Ok(p);
        }
    }
    let p = build_dir()?.join(rel);
    if !p.is_file() {
        bail!(
            "{} is missing (tests/controlplane/build.sh copies it)",
            p.display()
        );
    }
    Ok(p)
}

/// Runs `tests/controlplane/build.sh` once per process and returns the directory it
/// printed on its last stdout line.
pub fn build_dir() -> anyhow::Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| run_build_script().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn run_build_script() -> anyhow::Result<PathBuf> {
    let script = repo_root().join("tests/controlplane/build.sh");
    let hint = "set KUBEBUILDER_ASSETS to a directory holding etcd, kube-apiserver, kube-scheduler, \
                kube-controller-manager and kwok, or TEST_ASSET_ETCD / TEST_ASSET_KUBE_APISERVER / \
                TEST_ASSET_KWOK / TEST_ASSET_KUBE_SCHEDULER / TEST_ASSET_KUBE_CONTROLLER_MANAGER";
    if !script.is_file() {
        bail!("{} not found; {hint}", script.display());
    }
    eprintln!(
        "drover-testenv: getting the control-plane binaries from {} (a cold build takes minutes)",
        script.display()
    );
    // stderr is inherited so the build's progress shows up even under captured test output.
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running bash {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}); see its output above; {hint}",
            script.display(),
            out.status
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default();
    if last.is_empty() {
        bail!("{} printed no directory; {hint}", script.display());
    }
    let dir = PathBuf::from(last);
    if !dir.is_dir() {
        bail!(
            "{} printed {:?}, which is not a directory; {hint}",
            script.display(),
            last
        );
    }
    Ok(dir)
}
