//! Resource amounts as integers, parsed once at ingest.

use std::fmt;
use std::sync::Arc;

/// The name of the extended resource that counts NVIDIA GPUs.
pub const GPU: &str = "nvidia.com/gpu";

/// A kind of resource. The common ones are fields; any other (`example.com/foo`,
/// `hugepages-2Mi`) is [`ResourceKind::Extended`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    /// CPU, in millicores.
    Cpu,
    /// Memory, in bytes.
    Memory,
    /// Ephemeral storage, in bytes.
    EphemeralStorage,
    /// `nvidia.com/gpu`, in devices.
    Gpu,
    /// Any other resource, by its name.
    Extended(Arc<str>),
}

impl ResourceKind {
    /// The Kubernetes name of this resource.
    pub fn name(&self) -> &str {
        match self {
            ResourceKind::Cpu => "cpu",
            ResourceKind::Memory => "memory",
            ResourceKind::EphemeralStorage => "ephemeral-storage",
            ResourceKind::Gpu => GPU,
            ResourceKind::Extended(n) => n,
        }
    }

    /// The position of a resource that is a field of [`Resources`] (CPU 0, memory 1,
    /// ephemeral storage 2, GPU 3); `None` for an extended one.
    #[inline]
    pub fn builtin(&self) -> Option<usize> {
        match self {
            ResourceKind::Cpu => Some(0),
            ResourceKind::Memory => Some(1),
            ResourceKind::EphemeralStorage => Some(2),
            ResourceKind::Gpu => Some(3),
            ResourceKind::Extended(_) => None,
        }
    }

    /// The kind for a Kubernetes resource name.
    pub fn from_name(name: &str) -> ResourceKind {
        match name {
            "cpu" => ResourceKind::Cpu,
            "memory" => ResourceKind::Memory,
            "ephemeral-storage" => ResourceKind::EphemeralStorage,
            GPU => ResourceKind::Gpu,
            other => ResourceKind::Extended(Arc::from(other)),
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An amount of every resource. Pod count is kept apart (see `NodeInfo::max_pods`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// Millicores.
    pub cpu: i64,
    /// Bytes.
    pub memory: i64,
    /// Bytes.
    pub ephemeral_storage: i64,
    /// `nvidia.com/gpu` devices.
    pub gpu: i64,
    /// Other resources, sorted by name, no zero entries.
    pub extended: Vec<(Arc<str>, i64)>,
}

impl Resources {
    /// Resources with only CPU (millicores) and memory (bytes) set.
    pub fn cpu_mem(cpu: i64, memory: i64) -> Self {
        Resources {
            cpu,
            memory,
            ..Default::default()
        }
    }

    /// The amount of `kind`.
    #[inline]
    pub fn get(&self, kind: &ResourceKind) -> i64 {
        match kind {
            ResourceKind::Cpu => self.cpu,
            ResourceKind::Memory => self.memory,
            ResourceKind::EphemeralStorage => self.ephemeral_storage,
            ResourceKind::Gpu => self.gpu,
            ResourceKind::Extended(n) => self.extended_amount(n),
        }
    }

    /// CPU, memory, ephemeral storage and GPUs, in [`ResourceKind::builtin`] order.
    #[inline]
    pub fn builtins(&self) -> [i64; 4] {
        [self.cpu, self.memory, self.ephemeral_storage, self.gpu]
    }

    /// The amount of the extended resource `name` (0 when absent).
    #[inline]
    pub fn extended_amount(&self, name: &str) -> i64 {
        self.extended
            .iter()
            .find(|(n, _)| &**n == name)
            .map_or(0, |(_, v)| *v)
    }

    /// Sets the amount of `kind`.
    pub fn set(&mut self, kind: &ResourceKind, v: i64) {
        match kind {
            ResourceKind::Cpu => self.cpu = v,
            ResourceKind::Memory => self.memory = v,
            ResourceKind::EphemeralStorage => self.ephemeral_storage = v,
            ResourceKind::Gpu => self.gpu = v,
            ResourceKind::Extended(n) => {
                match self.extended.binary_search_by(|(k, _)| (**k).cmp(n)) {
                    Ok(i) if v == 0 => {
                        self.extended.remove(i);
                    }
                    Ok(i) => self.extended[i].1 = v,
                    Err(_) if v == 0 => {}
                    Err(i) => self.extended.insert(i, (n.clone(), v)),
                }
            }
        }
    }

    /// Applies `f` to every pair of amounts of `self` and `other`, field by field.
    fn zip_with(&mut self, other: &Resources, f: impl Fn(i64, i64) -> i64) {
        self.cpu = f(self.cpu, other.cpu);
        self.memory = f(self.memory, other.memory);
        self.ephemeral_storage = f(self.ephemeral_storage, other.ephemeral_storage);
        self.gpu = f(self.gpu, other.gpu);
        for (n, v) in &other.extended {
            let kind = ResourceKind::Extended(n.clone());
            let cur = self.get(&kind);
            self.set(&kind, f(cur, *v));
        }
        if !other.extended.is_empty() || !self.extended.is_empty() {
            // Entries only in `self` combine with 0.
            let own: Vec<_> = self
                .extended
                .iter()
                .filter(|(n, _)| other.extended_amount(n) == 0)
                .map(|(n, v)| (n.clone(), *v))
                .collect();
            for (n, v) in own {
                self.set(&ResourceKind::Extended(n), f(v, 0));
            }
        }
    }

    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &Resources) {
        self.zip_with(other, |a, b| a + b);
    }

    /// Subtracts `other` from `self`.
    pub fn sub(&mut self, other: &Resources) {
        self.zip_with(other, |a, b| a - b);
    }

    /// Raises each amount of `self` to at least that of `other`.
    pub fn max_with(&mut self, other: &Resources) {
        self.zip_with(other, i64::max);
    }

    /// True when every amount is zero.
    pub fn is_zero(&self) -> bool {
        self.cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.gpu == 0
            && self.extended.iter().all(|(_, v)| *v == 0)
    }

    /// Every resource with a non-zero amount, with its amount.
    pub fn iter(&self) -> impl Iterator<Item = (ResourceKind, i64)> + '_ {
        [
            (ResourceKind::Cpu, self.cpu),
            (ResourceKind::Memory, self.memory),
            (ResourceKind::EphemeralStorage, self.ephemeral_storage),
            (ResourceKind::Gpu, self.gpu),
        ]
        .into_iter()
        .chain(
            self.extended
                .iter()
                .map(|(n, v)| (ResourceKind::Extended(n.clone()), *v)),
        )
        .filter(|(_, v)| *v != 0)
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .iter()
            .map(|(k, v)| match k {
                ResourceKind::Cpu => format!("cpu={}", crate::quantity::format_cpu(v)),
                ResourceKind::Memory | ResourceKind::EphemeralStorage => {
                    format!("{k}={}", crate::quantity::format_bytes(v))
                }
                _ => format!("{k}={v}"),
            })
            .collect();
        if parts.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(n: &str, v: i64) -> Resources {
        let mut r = Resources::default();
        r.set(&ResourceKind::from_name(n), v);
        r
    }

    #[test]
    fn arithmetic_covers_extended_resources() {
        let mut a = Resources::cpu_mem(1000, 10);
        a.add(&ext("example.com/foo", 2));
        a.add(&ext("example.com/bar", 1));
        a.add(&ext(GPU, 4));
        assert_eq!(a.gpu, 4);
        assert_eq!(a.extended_amount("example.com/foo"), 2);
        assert_eq!(
            a.extended.iter().map(|(n, _)| &**n).collect::<Vec<_>>(),
            ["example.com/bar", "example.com/foo"]
        );
        a.sub(&ext("example.com/foo", 2));
        assert_eq!(a.extended_amount("example.com/foo"), 0);
        assert_eq!(a.extended.len(), 1, "zero entries are dropped");
        let mut m = ext("example.com/bar", 5);
        m.max_with(&a);
        assert_eq!(m.extended_amount("example.com/bar"), 5);
        assert_eq!(m.cpu, 1000);
        assert_eq!(m.gpu, 4);
    }

    #[test]
    fn display_is_readable() {
        let mut r = Resources::cpu_mem(1500, 4 << 30);
        r.gpu = 2;
        assert_eq!(r.to_string(), "cpu=1500m,memory=4Gi,nvidia.com/gpu=2");
        assert_eq!(Resources::default().to_string(), "nothing");
    }
}
