//! The simulated workload: jobs with an arrival time, a duration, a team, pods with
//! requests, and optionally a gang size. Read from YAML or CSV (see docs/simulate.md),
//! or generated (see `generate`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::fields::{
    Bytes, Count, Cpu, Millis, parse_bytes, parse_count, parse_cpu, parse_duration,
};
use super::scenario::Scenario;
use drover_core::model::{Resources, TaintEffect, Toleration};

/// What a job is; decides defaults (notebooks and batch pods are not gangs; Dask
/// clusters and training jobs are, unless `minMember` says otherwise).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// An interactive notebook: one long, memory-heavy pod.
    Notebook,
    /// A Dask cluster: a scheduler (the `leader`) and workers.
    Dask,
    /// Distributed training: ranks that must all run together.
    Training,
    /// Batch pods: independent, short.
    Batch,
    /// Anything else (independent pods unless `minMember` is set).
    #[default]
    Pod,
}

impl JobKind {
    /// Every kind, in report order.
    pub const ALL: [JobKind; 5] = [
        JobKind::Notebook,
        JobKind::Dask,
        JobKind::Training,
        JobKind::Batch,
        JobKind::Pod,
    ];

    /// The name used in files and reports.
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Notebook => "notebook",
            JobKind::Dask => "dask",
            JobKind::Training => "training",
            JobKind::Batch => "batch",
            JobKind::Pod => "pod",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        JobKind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// True for kinds whose pods are a gang unless `minMember` says otherwise.
    pub fn gang_by_default(self) -> bool {
        matches!(self, JobKind::Dask | JobKind::Training)
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a topology request must hold or is only preferred.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopologyMode {
    /// Every pod of the job in one domain of the level, or none placed.
    #[default]
    Required,
    /// As few domains as possible.
    Preferred,
}

/// A request to keep a job's pods within one domain of a topology level (a node label
/// key such as `network.topology.nvidia.com/block`, one of the scenario's levels):
/// drover's gang annotation `drover.dev/topology-required` or `-preferred`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyRequest {
    /// The node label key naming the level.
    pub level: String,
    /// `required` (default) or `preferred`.
    #[serde(default)]
    pub mode: TopologyMode,
}

/// One job of the workload, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSpec {
    /// Unique name; pods are `<name>-<i>` in the team's namespace.
    pub name: String,
    /// When the job is submitted (ms from the start of the run).
    pub arrival_ms: i64,
    /// How long it runs once started (ms).
    pub duration_ms: i64,
    /// The team (namespace) it belongs to.
    pub team: String,
    /// What kind of job it is.
    pub kind: JobKind,
    /// Pods with `requests` (workers, ranks, batch pods).
    pub replicas: u32,
    /// Requests of one extra, first pod (a Dask scheduler), if any.
    pub leader: Option<Resources>,
    /// Gang size: the job starts only when this many pods run at once. 0 or 1: not a
    /// gang, every pod runs on its own.
    pub min_member: u32,
    /// Requests of each of the `replicas` pods.
    pub requests: Resources,
    /// Pod priority (higher is scheduled first).
    pub priority: i32,
    /// nodeSelector of every pod.
    pub node_selector: Vec<(String, String)>,
    /// Tolerations of every pod, in the file's short form (`key[=value][:Effect]`).
    pub tolerations: Vec<String>,
    /// A topology request of the gang.
    pub topology: Option<TopologyRequest>,
}

impl JobSpec {
    /// Number of pods: the replicas and the leader.
    pub fn pod_count(&self) -> usize {
        self.replicas as usize + usize::from(self.leader.is_some())
    }

    /// True when the job is a gang (at least two pods must run together).
    pub fn is_gang(&self) -> bool {
        self.min_member >= 2
    }

    /// The requests of pod `i` (the leader is pod 0 when there is one).
    pub fn pod_requests(&self, i: usize) -> &Resources {
        match (&self.leader, i) {
            (Some(l), 0) => l,
            _ => &self.requests,
        }
    }

    /// GPUs of all the job's pods.
    pub fn total_gpus(&self) -> i64 {
        (0..self.pod_count())
            .map(|i| self.pod_requests(i).gpu)
            .sum()
    }
}

/// Parses a toleration in the short form `key[=value][:Effect]`; `*` tolerates every
/// taint.
pub fn parse_toleration(s: &str) -> Result<Toleration, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "toleration {s:?}: write key, key=value, key:Effect or key=value:Effect (Effect is NoSchedule, PreferNoSchedule or NoExecute), or * for every taint"
        )
    };
    if t == "*" {
        return Ok(Toleration {
            key: "".into(),
            exists: true,
            value: "".into(),
            effect: None,
        });
    }
    let (kv, effect) = match t.rsplit_once(':') {
        Some((kv, e)) => (kv, Some(TaintEffect::parse(e).ok_or_else(bad)?)),
        None => (t, None),
    };
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (kv, None),
    };
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok(Toleration {
        key: key.into(),
        exists: value.is_none(),
        value: value.unwrap_or("").into(),
        effect,
    })
}

/// Requests of one pod, as written in a workload file.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawRequests {
    #[serde(default)]
    cpu: Cpu,
    #[serde(default)]
    memory: Bytes,
    #[serde(default, rename = "nvidia.com/gpu", alias = "gpu")]
    gpu: Count,
}

impl RawRequests {
    fn resources(&self) -> Resources {
        let mut r = Resources::cpu_mem(self.cpu.0, self.memory.0);
        r.gpu = self.gpu.0;
        r
    }

    fn from_resources(r: &Resources) -> Self {
        RawRequests {
            cpu: Cpu(r.cpu),
            memory: Bytes(r.memory),
            gpu: Count(r.gpu),
        }
    }
}

/// A job as written in a YAML workload file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawJob {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    arrival: Millis,
    duration: Millis,
    team: String,
    #[serde(default)]
    kind: JobKind,
    #[serde(default = "one")]
    replicas: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_member: Option<u32>,
    #[serde(default)]
    requests: RawRequests,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    leader: Option<RawRequests>,
    #[serde(default)]
    priority: i32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tolerations: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    topology: Option<TopologyRequest>,
}

fn one() -> u32 {
    1
}

/// A YAML workload file.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    jobs: Vec<RawJob>,
}

impl RawJob {
    /// Validates against the scenario; `index` numbers unnamed jobs.
    fn into_spec(self, index: usize, scenario: &Scenario) -> Result<JobSpec, String> {
        let name = self
            .name
            .unwrap_or_else(|| format!("{}-{index:05}", self.kind));
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            return Err(format!(
                "name {name:?}: use lower-case letters, digits, '-' and '.' (it becomes pod names)"
            ));
        }
        if scenario.team_index(&self.team).is_none() {
            let teams: Vec<&str> = scenario.teams.iter().map(|t| t.name.as_str()).collect();
            return Err(format!(
                "team `{}` is not a team of the scenario ({}): add it under `teams:` in the scenario or fix the job",
                self.team,
                teams.join(", ")
            ));
        }
        if self.duration.0 <= 0 {
            return Err("duration: must be more than zero".to_string());
        }
        if self.replicas == 0 {
            return Err("replicas: must be at least 1".to_string());
        }
        if self.replicas > 10_000 {
            return Err(format!(
                "replicas: {} is more than the simulator's 10000 pods per job",
                self.replicas
            ));
        }
        let pods = self.replicas + u32::from(self.leader.is_some());
        let min_member = match self.min_member {
            Some(m) if m > pods => {
                return Err(format!(
                    "minMember: {m} is more than the job's {pods} pods (replicas{}): lower it or add replicas",
                    if self.leader.is_some() {
                        " + leader"
                    } else {
                        ""
                    }
                ));
            }
            Some(m) => m,
            None if self.kind.gang_by_default() => pods,
            None => 0,
        };
        let tolerations = self
            .tolerations
            .iter()
            .map(|t| parse_toleration(t).map(|_| t.trim().to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(t) = &self.topology {
            if t.level.is_empty() {
                return Err(
                    "topology.level: name a node label key, e.g. network.topology.nvidia.com/block"
                        .to_string(),
                );
            }
            let levels = scenario.levels();
            if !levels.contains(&t.level) {
                return Err(format!(
                    "topology.level {:?} is not a topology level of the scenario ({}): list it under `topologyLevels:` in the scenario",
                    t.level,
                    levels.join(", ")
                ));
            }
        }
        Ok(JobSpec {
            name,
            arrival_ms: self.arrival.0,
            duration_ms: self.duration.0,
            team: self.team,
            kind: self.kind,
            replicas: self.replicas,
            leader: self.leader.as_ref().map(RawRequests::resources),
            min_member,
            requests: self.requests.resources(),
            priority: self.priority,
            node_selector: self.node_selector.into_iter().collect(),
            tolerations,
            topology: self.topology,
        })
    }

    fn from_spec(j: &JobSpec) -> Self {
        let default_min = if j.kind.gang_by_default() {
            j.pod_count() as u32
        } else {
            0
        };
        RawJob {
            name: Some(j.name.clone()),
            arrival: Millis(j.arrival_ms),
            duration: Millis(j.duration_ms),
            team: j.team.clone(),
            kind: j.kind,
            replicas: j.replicas,
            min_member: (j.min_member != default_min).then_some(j.min_member),
            requests: RawRequests::from_resources(&j.requests),
            leader: j.leader.as_ref().map(RawRequests::from_resources),
            priority: j.priority,
            node_selector: j.node_selector.iter().cloned().collect(),
            tolerations: j.tolerations.clone(),
            topology: j.topology.clone(),
        }
    }
}

/// Checks names are unique and sorts by arrival (stable: file order breaks ties).
fn finish(mut jobs: Vec<JobSpec>, origin: &str) -> anyhow::Result<Vec<JobSpec>> {
    let mut seen = BTreeSet::new();
    for j in &jobs {
        if !seen.insert(j.name.as_str()) {
            bail!(
                "workload file {origin}: job name `{}` is used twice; names must be unique",
                j.name
            );
        }
    }
    jobs.sort_by_key(|j| j.arrival_ms);
    Ok(jobs)
}

/// Reads a workload file: CSV when the name ends in `.csv`, YAML otherwise.
pub fn from_file(path: &Path, scenario: &Scenario) -> anyhow::Result<Vec<JobSpec>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read workload file {}", path.display()))?;
    let origin = path.display().to_string();
    if is_csv(path) {
        parse_csv(&text, &origin, scenario)
    } else {
        parse_yaml(&text, &origin, scenario)
    }
}

fn is_csv(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
}

/// Parses a YAML workload (`jobs: [...]`).
pub fn parse_yaml(text: &str, origin: &str, scenario: &Scenario) -> anyhow::Result<Vec<JobSpec>> {
    let raw: RawWorkload = serde_yaml_ng::from_str(text)
        .map_err(|e| anyhow::anyhow!("workload file {origin}: {e}"))?;
    let mut jobs = Vec::with_capacity(raw.jobs.len());
    for (i, j) in raw.jobs.into_iter().enumerate() {
        let label = j.name.clone().unwrap_or_default();
        let spec = j
            .into_spec(i, scenario)
            .map_err(|e| anyhow::anyhow!("workload file {origin}: jobs[{i}] (`{label}`): {e}"))?;
        jobs.push(spec);
    }
    finish(jobs, origin)
}

/// The CSV columns, in the order `write_csv` writes them.
pub const CSV_COLUMNS: [&str; 18] = [
    "name",
    "arrival",
    "duration",
    "team",
    "kind",
    "replicas",
    "minMember",
    "cpu",
    "memory",
    "gpu",
    "priority",
    "leaderCpu",
    "leaderMemory",
    "leaderGpu",
    "nodeSelector",
    "tolerations",
    "topologyLevel",
    "topologyMode",
];

const CSV_REQUIRED: [&str; 3] = ["arrival", "duration", "team"];

/// Splits one CSV line into fields; `"` quotes a field, `""` inside quotes is a quote.
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.trim().is_empty() && !was_quoted => {
                field.clear();
                quoted = true;
                was_quoted = true;
            }
            (false, ',') => {
                out.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            (false, '"') => return Err("a quote in the middle of a field".to_string()),
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err("a quoted field is not closed".to_string());
    }
    out.push(field);
    Ok(out.into_iter().map(|f| f.trim().to_string()).collect())
}

/// Parses a CSV workload: a header row naming the columns (any order, any subset
/// that includes `arrival`, `duration` and `team`), then one job per row. Blank lines
/// and lines starting with `#` are skipped.
pub fn parse_csv(text: &str, origin: &str, scenario: &Scenario) -> anyhow::Result<Vec<JobSpec>> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let Some((hline, header)) = lines.next() else {
        bail!(
            "workload file {origin}: no header row; the first line names the columns, e.g. {}",
            CSV_COLUMNS.join(",")
        );
    };
    let header = split_csv(header)
        .map_err(|e| anyhow::anyhow!("workload file {origin}: line {hline}: {e}"))?;
    let mut cols: Vec<&'static str> = Vec::with_capacity(header.len());
    for h in &header {
        let name = if h == "nvidia.com/gpu" {
            "gpu"
        } else {
            h.as_str()
        };
        let Some(c) = CSV_COLUMNS.iter().find(|c| **c == name) else {
            bail!(
                "workload file {origin}: line {hline}: unknown column `{h}`; the columns are {}",
                CSV_COLUMNS.join(", ")
            );
        };
        if cols.contains(c) {
            bail!("workload file {origin}: line {hline}: column `{h}` appears twice");
        }
        cols.push(c);
    }
    for r in CSV_REQUIRED {
        if !cols.contains(&r) {
            bail!(
                "workload file {origin}: line {hline}: the header has no `{r}` column; {} are required",
                CSV_REQUIRED.join(", ")
            );
        }
    }
    let mut jobs = Vec::new();
    for (index, (line, text)) in lines.enumerate() {
        let fields = split_csv(text)
            .map_err(|e| anyhow::anyhow!("workload file {origin}: line {line}: {e}"))?;
        if fields.len() != cols.len() {
            bail!(
                "workload file {origin}: line {line}: {} fields, but the header has {} columns",
                fields.len(),
                cols.len()
            );
        }
        let row: BTreeMap<&str, &str> = cols
            .iter()
            .copied()
            .zip(fields.iter().map(String::as_str))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        let job = csv_row(&row, index, scenario).map_err(|(col, e)| match col {
            Some(c) => anyhow::anyhow!(
                "workload file {origin}: line {line}, column `{c}` ({:?}): {e}",
                row.get(c).copied().unwrap_or("")
            ),
            None => anyhow::anyhow!("workload file {origin}: line {line}: {e}"),
        })?;
        jobs.push(job);
    }
    finish(jobs, origin)
}

type RowError = (Option<&'static str>, String);

fn csv_row(
    row: &BTreeMap<&str, &str>,
    index: usize,
    scenario: &Scenario,
) -> Result<JobSpec, RowError> {
    fn get<T>(
        row: &BTreeMap<&str, &str>,
        col: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, RowError> {
        row.get(col)
            .map(|v| parse(v).map_err(|e| (Some(col), e)))
            .transpose()
    }
    let missing =
        |col: &'static str| -> RowError { (Some(col), "is empty; it is required".to_string()) };
    let int = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("{v:?} is not a whole number"))
    };
    let kind = get(row, "kind", |v| {
        JobKind::parse(v).ok_or_else(|| {
            format!(
                "unknown kind; use one of {}",
                JobKind::ALL.map(JobKind::name).join(", ")
            )
        })
    })?
    .unwrap_or_default();
    let requests = RawRequests {
        cpu: Cpu(get(row, "cpu", parse_cpu)?.unwrap_or(0)),
        memory: Bytes(get(row, "memory", parse_bytes)?.unwrap_or(0)),
        gpu: Count(get(row, "gpu", parse_count)?.unwrap_or(0)),
    };
    let leader_cpu = get(row, "leaderCpu", parse_cpu)?;
    let leader_mem = get(row, "leaderMemory", parse_bytes)?;
    let leader_gpu = get(row, "leaderGpu", parse_count)?;
    let leader =
        (leader_cpu.is_some() || leader_mem.is_some() || leader_gpu.is_some()).then(|| {
            RawRequests {
                cpu: Cpu(leader_cpu.unwrap_or(0)),
                memory: Bytes(leader_mem.unwrap_or(0)),
                gpu: Count(leader_gpu.unwrap_or(0)),
            }
        });
    let node_selector = get(row, "nodeSelector", |v| {
        v.split(';')
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                p.split_once('=')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| format!("{p:?} is not key=value; separate pairs with ';'"))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()
    })?
    .unwrap_or_default();
    let tolerations: Vec<String> = row
        .get("tolerations")
        .map(|v| {
            v.split(';')
                .filter(|p| !p.trim().is_empty())
                .map(|p| p.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    let mode = get(row, "topologyMode", |v| match v {
        "required" => Ok(TopologyMode::Required),
        "preferred" => Ok(TopologyMode::Preferred),
        _ => Err("use required or preferred".to_string()),
    })?;
    let topology = match (row.get("topologyLevel"), mode) {
        (Some(level), mode) => Some(TopologyRequest {
            level: level.to_string(),
            mode: mode.unwrap_or_default(),
        }),
        (None, Some(_)) => {
            return Err((
                Some("topologyMode"),
                "is set but topologyLevel is empty: name the level too".to_string(),
            ));
        }
        (None, None) => None,
    };
    let raw = RawJob {
        name: row.get("name").map(|s| s.to_string()),
        arrival: Millis(get(row, "arrival", parse_duration)?.ok_or_else(|| missing("arrival"))?),
        duration: Millis(get(row, "duration", parse_duration)?.ok_or_else(|| missing("duration"))?),
        team: row
            .get("team")
            .map(|t| t.to_string())
            .ok_or_else(|| missing("team"))?,
        kind,
        replicas: get(row, "replicas", int)?.unwrap_or(1),
        min_member: get(row, "minMember", int)?,
        requests,
        leader,
        priority: get(row, "priority", |v| {
            v.parse::<i32>()
                .map_err(|_| format!("{v:?} is not a whole number"))
        })?
        .unwrap_or(0),
        node_selector,
        tolerations,
        topology,
    };
    raw.into_spec(index, scenario).map_err(|e| (None, e))
}

/// Writes jobs as YAML (`jobs: [...]`), in the format `parse_yaml` reads.
pub fn to_yaml(jobs: &[JobSpec]) -> String {
    let raw = RawWorkload {
        jobs: jobs.iter().map(RawJob::from_spec).collect(),
    };
    serde_yaml_ng::to_string(&raw).expect("a workload always serializes")
}

/// Writes jobs as CSV with every column, in the format `parse_csv` reads.
pub fn to_csv(jobs: &[JobSpec]) -> String {
    use super::fields::format_duration;
    use drover_core::quantity::{format_bytes, format_cpu};
    let mut out = CSV_COLUMNS.join(",");
    out.push('\n');
    let quote = |s: String| {
        if s.contains([',', '"']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s
        }
    };
    for j in jobs {
        let raw = RawJob::from_spec(j);
        let (lc, lm, lg) = match &j.leader {
            Some(l) => (format_cpu(l.cpu), format_bytes(l.memory), l.gpu.to_string()),
            None => (String::new(), String::new(), String::new()),
        };
        let (tl, tm) = match &j.topology {
            Some(t) => (
                t.level.clone(),
                match t.mode {
                    TopologyMode::Required => "required",
                    TopologyMode::Preferred => "preferred",
                }
                .to_string(),
            ),
            None => (String::new(), String::new()),
        };
        let fields = [
            j.name.clone(),
            format_duration(j.arrival_ms),
            format_duration(j.duration_ms),
            j.team.clone(),
            j.kind.name().to_string(),
            j.replicas.to_string(),
            raw.min_member.map(|m| m.to_string()).unwrap_or_default(),
            format_cpu(j.requests.cpu),
            format_bytes(j.requests.memory),
            j.requests.gpu.to_string(),
            j.priority.to_string(),
            lc,
            lm,
            lg,
            j.node_selector
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(";"),
            j.tolerations.join(";"),
            tl,
            tm,
        ];
        out.push_str(&fields.into_iter().map(quote).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

/// Writes jobs to `path`: CSV when the name ends in `.csv`, YAML otherwise.
pub fn write_file(path: &Path, jobs: &[JobSpec]) -> anyhow::Result<()> {
    let text = if is_csv(path) {
        to_csv(jobs)
    } else {
        to_yaml(jobs)
    };
    std::fs::write(path, text)
        .with_context(|| format!("cannot write workload file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario() -> Scenario {
        Scenario::builtin()
    }

    #[test]
    fn yaml_defaults_and_fields() {
        let text = r#"
jobs:
- name: nb-1
  arrival: 1h
  duration: 8h
  team: analytics
  kind: notebook
  requests: {cpu: 2, memory: 32Gi}
- name: dask-1
  arrival: 90s
  duration: 2h
  team: analytics
  kind: dask
  replicas: 8
  minMember: 5
  leader: {cpu: 1, memory: 4Gi}
  requests: {cpu: 4, memory: 16Gi}
- name: train-1
  arrival: 0
  duration: 4h
  team: research
  kind: training
  replicas: 4
  requests: {cpu: 48, memory: 480Gi, nvidia.com/gpu: 4}
  priority: 100
  nodeSelector: {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}
  tolerations: ["nvidia.com/gpu:NoSchedule"]
  topology: {level: network.topology.nvidia.com/block}
"#;
        let jobs = parse_yaml(text, "w.yaml", &scenario()).unwrap();
        let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["train-1", "dask-1", "nb-1"], "sorted by arrival");
        let (t, d, n) = (&jobs[0], &jobs[1], &jobs[2]);
        assert_eq!(t.min_member, 4, "training is a gang of all its pods");
        assert_eq!(t.requests.gpu, 4);
        assert_eq!(t.topology.as_ref().unwrap().mode, TopologyMode::Required);
        assert_eq!(d.pod_count(), 9);
        assert_eq!(d.min_member, 5);
        assert_eq!(d.pod_requests(0).memory, 4 << 30);
        assert_eq!(d.pod_requests(1).memory, 16 << 30);
        assert_eq!(d.arrival_ms, 90_000);
        assert!(!n.is_gang());
        assert_eq!(n.duration_ms, 8 * 3_600_000);
    }

    #[test]
    fn csv_and_yaml_round_trip() {
        let s = scenario();
        let jobs = super::super::generate::builtin_day(&s, 7, 3.0);
        assert!(jobs.len() > 50);
        assert_eq!(parse_csv(&to_csv(&jobs), "w.csv", &s).unwrap(), jobs);
        assert_eq!(parse_yaml(&to_yaml(&jobs), "w.yaml", &s).unwrap(), jobs);
    }

    #[test]
    fn csv_quoting() {
        assert_eq!(
            split_csv(r#"a, "b,c" ,"d""e""#).unwrap(),
            ["a", "b,c", "d\"e"]
        );
        assert!(split_csv(r#"a,"b"#).is_err());
        assert!(split_csv(r#"a,b"c"#).is_err());
    }

    /// Bad YAML workloads: each message names the file, the job or line, the field,
    /// and what to do.
    #[test]
    fn bad_yaml_table() {
        let job = |fields: &str| {
            format!("jobs:\n- name: j\n  arrival: 0\n  duration: 1h\n  team: research\n{fields}")
        };
        let cases: Vec<(String, &str)> = vec![
            (job("  requests: {cpu: 1, memory: 4GB}\n"), "unknown suffix in quantity \"4GB\""),
            (job("  requests: {cpu: 1, memory: 4GB}\n"), "line 6"),
            (job("  requests: {cpu: 1, mem: 4Gi}\n"), "unknown field `mem`"),
            (job("  kind: spark\n"), "unknown variant `spark`"),
            (job("  replicas: 2\n  minMember: 3\n"), "jobs[0] (`j`): minMember: 3 is more than the job's 2 pods"),
            (job("  replicas: 0\n"), "replicas: must be at least 1"),
            (job("  tolerations: [\"a:Sometimes\"]\n"), "toleration \"a:Sometimes\""),
            (job("  topology: {level: \"\"}\n"), "topology.level"),
            (
                "jobs:\n- {arrival: 0, duration: 1h, team: marketing}\n".into(),
                "team `marketing` is not a team of the scenario (research, analytics, platform)",
            ),
            ("jobs:\n- {arrival: 0, duration: 0s, team: research}\n".into(), "duration: must be more than zero"),
            ("jobs:\n- {arrival: soon, duration: 1h, team: research}\n".into(), "malformed duration \"soon\""),
            ("jobs:\n- {arrival: 0, team: research}\n".into(), "missing field `duration`"),
            (
                "jobs:\n- {name: a, arrival: 0, duration: 1h, team: research}\n- {name: a, arrival: 0, duration: 1h, team: research}\n".into(),
                "job name `a` is used twice",
            ),
            ("jobs:\n- {name: Big_Job, arrival: 0, duration: 1h, team: research}\n".into(), "name \"Big_Job\""),
            ("jobz: []\n".into(), "unknown field `jobz`"),
        ];
        for (text, want) in cases {
            let err = parse_yaml(&text, "w.yaml", &scenario())
                .expect_err(&text)
                .to_string();
            assert!(err.starts_with("workload file w.yaml"), "{err}");
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
    }

    /// Bad CSV workloads, with the line and column named.
    #[test]
    fn bad_csv_table() {
        let h = "name,arrival,duration,team,kind,replicas,minMember,cpu,memory,gpu\n";
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "no header row"),
            (
                "name,arrival,duration,team,colour\n".into(),
                "line 1: unknown column `colour`",
            ),
            ("name,arrival,team\n".into(), "no `duration` column"),
            (
                "arrival,arrival,duration,team\n".into(),
                "column `arrival` appears twice",
            ),
            (
                format!("{h}a,0,1h,research,pod,1,,1,4GB,0\n"),
                "line 2, column `memory` (\"4GB\"): unknown suffix",
            ),
            (
                format!("{h}a,0,1h,research,pod,1,,1,4Gi\n"),
                "line 2: 9 fields, but the header has 10 columns",
            ),
            (
                format!("{h}\n# comment\na,0,1h,research,spark,1,,1,4Gi,0\n"),
                "line 4, column `kind` (\"spark\"): unknown kind",
            ),
            (
                format!("{h}a,0,1h,research,pod,two,,1,4Gi,0\n"),
                "column `replicas` (\"two\"): \"two\" is not a whole number",
            ),
            (
                format!("{h}a,0,,research,pod,1,,1,4Gi,0\n"),
                "column `duration` (\"\"): is empty; it is required",
            ),
            (
                format!("{h}a,0,1h,research,pod,1,,1,4Gi,0.5\n"),
                "column `gpu` (\"0.5\"): \"0.5\" is not a whole number of devices",
            ),
            (
                format!("{h}a,0,1h,nobody,pod,1,,1,4Gi,0\n"),
                "line 2: team `nobody` is not a team",
            ),
            (
                format!("{h}a,0,1h,research,training,4,8,1,4Gi,1\n"),
                "line 2: minMember: 8 is more than the job's 4 pods",
            ),
            (
                "arrival,duration,team,topologyMode\n0,1h,research,required\n".into(),
                "topologyLevel is empty",
            ),
            (
                "arrival,duration,team,nodeSelector\n0,1h,research,zone\n".into(),
                "\"zone\" is not key=value",
            ),
        ];
        for (text, want) in cases {
            let err = parse_csv(&text, "w.csv", &scenario())
                .expect_err(&text)
                .to_string();
            assert!(err.starts_with("workload file w.csv"), "{err}");
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
    }
}
