//! Labels, node selectors, taints and tolerations, in the forms the filters read.

use std::sync::Arc;

/// A set of labels, sorted by key for binary search.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Labels(Vec<(Arc<str>, Arc<str>)>);

impl Labels {
    /// Builds a label set from pairs in any order (a later duplicate key wins).
    pub fn new<K: Into<Arc<str>>, V: Into<Arc<str>>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut v: Vec<(Arc<str>, Arc<str>)> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                earlier.1 = later.1.clone();
                true
            } else {
                false
            }
        });
        Labels(v)
    }

    /// The value of `key`.
    #[inline]
    pub fn get(&self, key: &str) -> Option<&str> {
        // A few labels: a linear scan with `==` compares lengths first, so most keys
        // are passed over without touching their bytes. Many: binary search.
        if self.0.len() <= 16 {
            return self.0.iter().find(|(k, _)| **k == *key).map(|(_, v)| &**v);
        }
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// The value of `key`, shared.
    #[inline]
    pub fn get_shared(&self, key: &str) -> Option<&Arc<str>> {
        if self.0.len() <= 16 {
            return self.0.iter().find(|(k, _)| **k == *key).map(|(_, v)| v);
        }
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Every pair, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// True when there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The operator of a node selector requirement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SelectorOp {
    /// The label's value is one of the values.
    In,
    /// The label is absent or its value is none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
    /// The label's value, as an integer, is greater than the single value.
    Gt,
    /// The label's value, as an integer, is less than the single value.
    Lt,
}

/// One requirement of a node selector term: on a label, or on the node's name
/// (`matchFields` with `metadata.name`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Requirement {
    /// The label key; for a field requirement, `metadata.name`.
    pub key: Arc<str>,
    /// The operator.
    pub op: SelectorOp,
    /// The values (sorted). For `Gt`/`Lt`, `bound` holds the parsed single value.
    pub values: Vec<Arc<str>>,
    /// The integer bound of `Gt`/`Lt`.
    pub bound: i64,
    /// True for a `matchFields` requirement, which reads the node's name.
    pub field: bool,
}

impl Requirement {
    /// True when the node with `labels` and `name` meets the requirement.
    pub fn matches(&self, labels: &Labels, name: &str) -> bool {
        let value = if self.field {
            (&*self.key == "metadata.name").then_some(name)
        } else {
            labels.get(&self.key)
        };
        match self.op {
            SelectorOp::In => value.is_some_and(|v| self.values.iter().any(|x| &**x == v)),
            SelectorOp::NotIn => value.is_none_or(|v| !self.values.iter().any(|x| &**x == v)),
            SelectorOp::Exists => value.is_some(),
            SelectorOp::DoesNotExist => value.is_none(),
            SelectorOp::Gt => value
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > self.bound),
            SelectorOp::Lt => value
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < self.bound),
        }
    }
}

/// A node selector term: all its requirements must hold. An empty term matches no
/// node, as in Kubernetes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelectorTerm(pub Vec<Requirement>);

impl SelectorTerm {
    /// True when every requirement holds (and there is at least one).
    pub fn matches(&self, labels: &Labels, name: &str) -> bool {
        !self.0.is_empty() && self.0.iter().all(|r| r.matches(labels, name))
    }
}

/// A label selector over pods or namespaces (`metav1.LabelSelector`, its `matchLabels`
/// as `In` requirements of one value): every requirement holds. An empty selector
/// matches everything; where the API allows a nil selector that matches nothing, the
/// model holds an `Option` of this.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LabelSelector(pub Vec<Requirement>);

impl LabelSelector {
    /// True when every requirement holds for `labels`.
    #[inline]
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|r| r.matches(labels, ""))
    }
}

/// The effect of a taint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaintEffect {
    /// New pods that do not tolerate it are not scheduled.
    NoSchedule,
    /// The scheduler avoids the node for pods that do not tolerate it.
    PreferNoSchedule,
    /// Like `NoSchedule`, and running pods that do not tolerate it are evicted.
    NoExecute,
}

impl TaintEffect {
    /// Parses the Kubernetes name of an effect.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "NoSchedule" => Some(TaintEffect::NoSchedule),
            "PreferNoSchedule" => Some(TaintEffect::PreferNoSchedule),
            "NoExecute" => Some(TaintEffect::NoExecute),
            _ => None,
        }
    }
}

/// A node taint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Taint {
    /// The key.
    pub key: Arc<str>,
    /// The value (may be empty).
    pub value: Arc<str>,
    /// The effect.
    pub effect: TaintEffect,
}

/// A pod toleration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toleration {
    /// The key; empty with `exists` tolerates every taint.
    pub key: Arc<str>,
    /// True for operator `Exists`, false for `Equal`.
    pub exists: bool,
    /// The value, for `Equal`.
    pub value: Arc<str>,
    /// The effect tolerated; `None` tolerates all effects.
    pub effect: Option<TaintEffect>,
}

impl Toleration {
    /// True when this toleration tolerates `taint` (Kubernetes' `ToleratesTaint`).
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        if !self.key.is_empty() && self.key != taint.key {
            return false;
        }
        self.exists || self.value == taint.value
    }
}

/// True when some toleration in `tolerations` tolerates `taint`.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| t.tolerates(taint))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(key: &str, op: SelectorOp, values: &[&str]) -> Requirement {
        let bound = values.first().and_then(|v| v.parse().ok()).unwrap_or(0);
        Requirement {
            key: key.into(),
            op,
            values: values.iter().map(|v| Arc::from(*v)).collect(),
            bound,
            field: false,
        }
    }

    #[test]
    fn requirement_table() {
        let labels = Labels::new([("zone", "a"), ("gpus", "8"), ("tier", "")]);
        let cases = [
            (req("zone", SelectorOp::In, &["a", "b"]), true),
            (req("zone", SelectorOp::In, &["b"]), false),
            (req("missing", SelectorOp::In, &["a"]), false),
            (req("zone", SelectorOp::NotIn, &["b"]), true),
            (req("zone", SelectorOp::NotIn, &["a"]), false),
            (req("missing", SelectorOp::NotIn, &["a"]), true),
            (req("tier", SelectorOp::Exists, &[]), true),
            (req("missing", SelectorOp::Exists, &[]), false),
            (req("missing", SelectorOp::DoesNotExist, &[]), true),
            (req("zone", SelectorOp::DoesNotExist, &[]), false),
            (req("gpus", SelectorOp::Gt, &["4"]), true),
            (req("gpus", SelectorOp::Gt, &["8"]), false),
            (req("gpus", SelectorOp::Lt, &["9"]), true),
            (req("zone", SelectorOp::Gt, &["1"]), false),
            (req("missing", SelectorOp::Lt, &["1"]), false),
        ];
        for (i, (r, want)) in cases.iter().enumerate() {
            assert_eq!(r.matches(&labels, "n1"), *want, "case {i}: {r:?}");
        }
        let field = Requirement {
            field: true,
            ..req("metadata.name", SelectorOp::In, &["n1"])
        };
        assert!(field.matches(&labels, "n1"));
        assert!(!field.matches(&labels, "n2"));
        assert!(
            !SelectorTerm(vec![]).matches(&labels, "n1"),
            "an empty term matches nothing"
        );
    }

    #[test]
    fn toleration_table() {
        let taint = Taint {
            key: "gpu".into(),
            value: "true".into(),
            effect: TaintEffect::NoSchedule,
        };
        let tol = |key: &str, exists: bool, value: &str, effect: Option<TaintEffect>| Toleration {
            key: key.into(),
            exists,
            value: value.into(),
            effect,
        };
        let cases = [
            (
                tol("gpu", false, "true", Some(TaintEffect::NoSchedule)),
                true,
            ),
            (tol("gpu", false, "true", None), true),
            (tol("gpu", false, "false", None), false),
            (tol("gpu", true, "", None), true),
            (tol("", true, "", None), true),
            (tol("", true, "", Some(TaintEffect::NoExecute)), false),
            (tol("other", true, "", None), false),
        ];
        for (i, (t, want)) in cases.iter().enumerate() {
            assert_eq!(t.tolerates(&taint), *want, "case {i}: {t:?}");
        }
    }

    #[test]
    fn labels_dedup_keeps_last() {
        let l = Labels::new([("a", "1"), ("b", "2"), ("a", "3")]);
        assert_eq!(l.get("a"), Some("3"));
        assert_eq!(l.iter().count(), 2);
    }
}
