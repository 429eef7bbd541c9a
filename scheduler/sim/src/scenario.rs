//! The simulated cluster: node groups and teams, read from a YAML scenario file or the
//! built-in one (`builtin_scenario.yaml`, embedded in the binary).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::fields::{Bytes, Count, Cpu};
use drover_core::model::{Labels, NodeInfo, Resources, Taint, TaintEffect};

/// The built-in scenario's text.
pub const BUILTIN_SCENARIO: &str = include_str!("builtin_scenario.yaml");

/// A cluster to simulate.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Scenario {
    /// A name for the report.
    #[serde(default)]
    pub name: String,
    /// Groups of identical nodes.
    pub node_groups: Vec<NodeGroup>,
    /// Teams (namespaces) that submit work, with their share of the cluster.
    pub teams: Vec<Team>,
    /// Topology levels, as an ordered list of node label keys from the widest to the
    /// narrowest (drover's `topology.levels`); when empty, drover's default levels.
    #[serde(default)]
    pub topology_levels: Vec<String>,
}

/// A group of identical nodes.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeGroup {
    /// The name prefix: nodes are called `<name>-000`, `<name>-001`, ...
    pub name: String,
    /// How many nodes.
    pub count: u32,
    /// Allocatable CPU per node.
    pub cpu: Cpu,
    /// Allocatable memory per node.
    pub memory: Bytes,
    /// `nvidia.com/gpu` per node.
    #[serde(default)]
    pub gpus: Count,
    /// Allocatable pod count per node.
    #[serde(default = "default_max_pods")]
    pub max_pods: i64,
    /// Labels; a value may hold `{i}`, `{i/N}` or `{i%N}`, replaced by the node's index
    /// in the group (divided by, or modulo, N), to lay nodes out in racks and blocks.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Taints.
    #[serde(default)]
    pub taints: Vec<TaintSpec>,
}

fn default_max_pods() -> i64 {
    110
}

/// A node taint, as in a Node's `spec.taints`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaintSpec {
    /// The key.
    pub key: String,
    /// The value (may be empty).
    #[serde(default)]
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

/// A team: the namespace its pods run in, and its queue under drover: its share (the
/// queue's weight), guarantee and limit.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Team {
    /// The team's name, also its namespace and its queue.
    pub name: String,
    /// Its weight: of what is beyond guarantees, teams with demand share by weight.
    pub share: f64,
    /// Always available to it (drover reclaims it from borrowers).
    #[serde(default, skip_serializing_if = "TeamResources::is_empty")]
    pub guaranteed: TeamResources,
    /// Never exceeded, for the resources it lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<TeamResources>,
    /// Whether what it borrows beyond its guarantee may be taken back (default true).
    #[serde(default = "yes")]
    pub reclaimable: bool,
}

fn yes() -> bool {
    true
}

/// Amounts of cpu, memory and GPUs for a team's guarantee or limit.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TeamResources {
    /// CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// Memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Bytes>,
    /// `nvidia.com/gpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Count>,
}

impl TeamResources {
    /// True when it lists nothing.
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none() && self.gpus.is_none()
    }

    /// The kinds it lists (0 included).
    pub fn listed(&self) -> Vec<drover_core::model::ResourceKind> {
        use drover_core::model::ResourceKind;
        let mut v = Vec::new();
        if self.cpu.is_some() {
            v.push(ResourceKind::Cpu);
        }
        if self.memory.is_some() {
            v.push(ResourceKind::Memory);
        }
        if self.gpus.is_some() {
            v.push(ResourceKind::Gpu);
        }
        v
    }

    /// The resources it lists (a resource it does not list is absent).
    pub fn resources(&self) -> Resources {
        use drover_core::model::ResourceKind;
        let mut r = Resources::default();
        if let Some(c) = self.cpu {
            r.set(&ResourceKind::Cpu, c.0);
        }
        if let Some(m) = self.memory {
            r.set(&ResourceKind::Memory, m.0);
        }
        if let Some(g) = self.gpus {
            r.set(&ResourceKind::Gpu, g.0);
        }
        r
    }
}

impl Scenario {
    /// The built-in data-science cluster.
    pub fn builtin() -> Self {
        Scenario::parse(BUILTIN_SCENARIO, "<built-in scenario>")
            .expect("the built-in scenario is valid")
    }

    /// Reads and validates a scenario file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read scenario file {}", path.display()))?;
        Scenario::parse(&text, &path.display().to_string())
    }

    /// Parses and validates scenario YAML; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let s: Scenario = serde_yaml_ng::from_str(text)
            .map_err(|e| anyhow::anyhow!("scenario file {origin}: {e}"))?;
        s.validate()
            .map_err(|e| anyhow::anyhow!("scenario file {origin}: {e}"))?;
        Ok(s)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.node_groups.is_empty() {
            bail!("`nodeGroups` is empty: describe at least one group of nodes");
        }
        let mut names = BTreeSet::new();
        for (i, g) in self.node_groups.iter().enumerate() {
            let at = format!("nodeGroups[{i}] (`{}`)", g.name);
            if g.name.is_empty()
                || !g
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            {
                bail!(
                    "nodeGroups[{i}].name {:?}: use lower-case letters, digits, '-' and '.'",
                    g.name
                );
            }
            if !names.insert(g.name.as_str()) {
                bail!("{at}: the name is used by another group; node names must be unique");
            }
            if g.count == 0 {
                bail!("{at}.count: must be at least 1");
            }
            if g.cpu.0 == 0 && g.memory.0 == 0 {
                bail!("{at}: a node needs some cpu or memory");
            }
            if g.max_pods < 1 {
                bail!("{at}.maxPods: must be at least 1");
            }
            for (k, v) in &g.labels {
                expand_label(v, 0).map_err(|e| anyhow::anyhow!("{at}.labels.{k}: {e}"))?;
            }
            for (j, t) in g.taints.iter().enumerate() {
                if t.key.is_empty() {
                    bail!("{at}.taints[{j}].key: must not be empty");
                }
                if TaintEffect::parse(&t.effect).is_none() {
                    bail!(
                        "{at}.taints[{j}].effect {:?}: use NoSchedule, PreferNoSchedule or NoExecute",
                        t.effect
                    );
                }
            }
        }
        if self.teams.is_empty() {
            bail!("`teams` is empty: name at least one team");
        }
        let mut teams = BTreeSet::new();
        for (i, t) in self.teams.iter().enumerate() {
            if t.name.is_empty() {
                bail!("teams[{i}].name: must not be empty");
            }
            if !teams.insert(t.name.as_str()) {
                bail!("teams[{i}]: team `{}` is listed twice", t.name);
            }
            if !(t.share.is_finite() && t.share > 0.0) {
                bail!(
                    "teams[{i}].share ({}): must be a positive number (a weight)",
                    t.share
                );
            }
        }
        Ok(())
    }

    /// Every node of the scenario, group by group.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let mut out = Vec::new();
        for g in &self.node_groups {
            let taints: Vec<Taint> = g
                .taints
                .iter()
                .map(|t| Taint {
                    key: t.key.as_str().into(),
                    value: t.value.as_str().into(),
                    effect: TaintEffect::parse(&t.effect).expect("validated"),
                })
                .collect();
            let mut alloc = Resources::cpu_mem(g.cpu.0, g.memory.0);
            alloc.gpu = g.gpus.0;
            for i in 0..g.count {
                let name = format!("{}-{i:03}", g.name);
                let mut labels: Vec<(String, String)> = g
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), expand_label(v, i).expect("validated")))
                    .collect();
                labels.push(("kubernetes.io/hostname".into(), name.clone()));
                labels.push(("drover.dev/node-group".into(), g.name.clone()));
                let mut n = NodeInfo::new(&name, alloc.clone(), g.max_pods);
                n.labels = Labels::new(labels);
                n.taints = taints.clone();
                out.push(n);
            }
        }
        out
    }

    /// The team's fair share (its share over the sum of all shares), by team index.
    pub fn fair_shares(&self) -> Vec<f64> {
        let total: f64 = self.teams.iter().map(|t| t.share).sum();
        self.teams.iter().map(|t| t.share / total).collect()
    }

    /// The topology levels drover runs with: the scenario's, else drover's defaults.
    pub fn levels(&self) -> Vec<String> {
        if self.topology_levels.is_empty() {
            drover_core::topology::DEFAULT_LEVELS
                .iter()
                .map(|l| l.to_string())
                .collect()
        } else {
            self.topology_levels.clone()
        }
    }

    /// The index of the team called `name`.
    pub fn team_index(&self, name: &str) -> Option<usize> {
        self.teams.iter().position(|t| t.name == name)
    }
}

/// Replaces `{i}`, `{i/N}` and `{i%N}` in a label value with the node's index.
fn expand_label(value: &str, i: u32) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("{value:?}: a '{{' without its '}}'"))?
            + open;
        let expr = &rest[open + 1..close];
        let bad = || format!("{value:?}: {{{expr}}} is not one of {{i}}, {{i/N}}, {{i%N}}");
        let v = if expr == "i" {
            i
        } else if let Some(n) = expr.strip_prefix("i/") {
            let n: u32 = n.parse().map_err(|_| bad())?;
            i.checked_div(n).ok_or_else(bad)?
        } else if let Some(n) = expr.strip_prefix("i%") {
            let n: u32 = n.parse().map_err(|_| bad())?;
            i.checked_rem(n).ok_or_else(bad)?
        } else {
            return Err(bad());
        };
        out.push_str(&v.to_string());
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_is_valid_and_shaped_as_promised() {
        let s = Scenario::builtin();
        let nodes = s.nodes();
        let gpu_nodes: Vec<_> = nodes.iter().filter(|n| n.allocatable.gpu > 0).collect();
        assert!(gpu_nodes.iter().all(|n| n.allocatable.gpu == 8));
        assert!(gpu_nodes.len() >= 32);
        for key in [
            "network.topology.nvidia.com/block",
            "topology.kubernetes.io/rack",
            "nvidia.com/gpu.product",
        ] {
            assert!(
                gpu_nodes.iter().all(|n| n.labels.get(key).is_some()),
                "{key}"
            );
        }
        let mems: BTreeSet<i64> = nodes
            .iter()
            .filter(|n| n.allocatable.gpu == 0)
            .map(|n| n.allocatable.memory >> 30)
            .collect();
        assert_eq!(
            mems.into_iter().collect::<Vec<_>>(),
            [4, 16, 64, 128, 256, 512]
        );
        assert_eq!(s.teams.len(), 3);
        let names: BTreeSet<&str> = nodes.iter().map(|n| &*n.name).collect();
        assert_eq!(names.len(), nodes.len(), "unique node names");
    }

    #[test]
    fn label_templates() {
        assert_eq!(expand_label("rack-{i/4}", 9).unwrap(), "rack-2");
        assert_eq!(expand_label("{i%3}-{i}", 7).unwrap(), "1-7");
        assert_eq!(expand_label("plain", 7).unwrap(), "plain");
        for bad in ["rack-{i/0}", "rack-{j}", "rack-{i", "{i/x}"] {
            assert!(expand_label(bad, 1).is_err(), "{bad}");
        }
    }

    /// Bad scenario files are refused with a message naming the field (and, for what
    /// the YAML parser sees, the line).
    #[test]
    fn bad_scenarios_table() {
        let group = |extra: &str| {
            format!(
                "nodeGroups:\n- name: cpu\n  count: 2\n  cpu: 4\n  memory: 16Gi\n{extra}teams:\n- {{name: a, share: 1}}\n"
            )
        };
        let cases: Vec<(String, &str)> = vec![
            ("nodeGroups: []\nteams: [{name: a, share: 1}]\n".into(), "`nodeGroups` is empty"),
            (group("  gpus: 0.5\n"), "not a whole number of devices"),
            (group("  labels: {rack: \"r{k}\"}\n"), "nodeGroups[0] (`cpu`).labels.rack"),
            (group("  taints: [{key: x, effect: Never}]\n"), "taints[0].effect \"Never\""),
            (group("  colour: red\n"), "unknown field `colour`"),
            (
                "nodeGroups:\n- name: cpu\n  count: 2\n  cpu: 4\n  memory: 16GB\nteams: [{name: a, share: 1}]\n".into(),
                "line 5",
            ),
            (
                "nodeGroups:\n- name: cpu\n  count: 2\n  cpu: four\n  memory: 16Gi\nteams: [{name: a, share: 1}]\n".into(),
                "malformed quantity \"four\"",
            ),
            (
                "nodeGroups:\n- name: cpu\n  count: 0\n  cpu: 4\n  memory: 16Gi\nteams: [{name: a, share: 1}]\n".into(),
                "count: must be at least 1",
            ),
            (
                "nodeGroups:\n- name: cpu\n  count: 1\n  cpu: 4\n  memory: 16Gi\nteams: [{name: a, share: 0}]\n".into(),
                "teams[0].share (0): must be a positive number",
            ),
            (
                "nodeGroups:\n- name: cpu\n  count: 1\n  cpu: 4\n  memory: 16Gi\nteams: [{name: a, share: 1}, {name: a, share: 2}]\n".into(),
                "team `a` is listed twice",
            ),
            (
                "nodeGroups:\n- name: Cpu_1\n  count: 1\n  cpu: 4\n  memory: 16Gi\nteams: [{name: a, share: 1}]\n".into(),
                "nodeGroups[0].name \"Cpu_1\"",
            ),
        ];
        for (text, want) in cases {
            let err = Scenario::parse(&text, "s.yaml")
                .expect_err(&text)
                .to_string();
            assert!(err.starts_with("scenario file s.yaml: "), "{err}");
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
    }
}
