//! An immutable view of every node, published by the cache and read lock-free by the
//! scheduling loop, the extender, `explain` and the simulator.
//!
//! Nodes live in fixed slots grouped into chunks of [`CHUNK`]. Publishing a snapshot
//! clones one `Arc` per chunk, and changing a node copies only its chunk, so a new
//! snapshot costs about `nodes / CHUNK` reference-count increments, not a copy of every
//! node. Each chunk keeps its nodes' [`Row`]s beside them, made when a node is put in
//! its slot, so that a scheduling cycle reads the numbers it needs most from one array.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::{Labels, NodeInfo, Row, Volumes};

/// Nodes per chunk.
pub const CHUNK: usize = 64;

/// One chunk of node slots, with the [`Row`] of each node. A slot's row is made from
/// its node whenever the slot changes, so the two always agree.
#[derive(Clone, Debug)]
pub struct Chunk {
    nodes: [Option<Arc<NodeInfo>>; CHUNK],
    rows: [Row; CHUNK],
    /// Every flag some row of the chunk has.
    flags: u32,
}

impl Default for Chunk {
    fn default() -> Self {
        Chunk {
            nodes: [const { None }; CHUNK],
            rows: [Row::EMPTY; CHUNK],
            flags: 0,
        }
    }
}

impl Chunk {
    /// The node in slot `i` of the chunk; `None` for a free slot.
    #[inline]
    pub fn node(&self, i: usize) -> Option<&Arc<NodeInfo>> {
        self.nodes.get(i)?.as_ref()
    }

    /// Every slot of the chunk.
    #[inline]
    pub fn nodes(&self) -> &[Option<Arc<NodeInfo>>; CHUNK] {
        &self.nodes
    }

    /// The row of every slot ([`Row::EMPTY`] for a free one).
    #[inline]
    pub fn rows(&self) -> &[Row; CHUNK] {
        &self.rows
    }

    /// Every flag some row of the chunk has.
    #[inline]
    pub fn flags(&self) -> u32 {
        self.flags
    }

    fn rows_changed(&mut self) {
        self.flags = self.rows.iter().fold(0, |f, r| f | r.flags);
    }

    /// Puts `node` in slot `i` (`None` frees it).
    pub fn set(&mut self, i: usize, node: Option<Arc<NodeInfo>>) {
        self.rows[i] = node.as_deref().map_or(Row::EMPTY, NodeInfo::row);
        self.nodes[i] = node;
        self.rows_changed();
    }

    /// Applies `f` to the node in slot `i`, copying the node only if it is shared; does
    /// nothing on a free slot.
    pub fn update(&mut self, i: usize, f: impl FnOnce(&mut NodeInfo)) {
        if let Some(node) = &mut self.nodes[i] {
            let node = Arc::make_mut(node);
            f(node);
            self.rows[i] = node.row();
            self.rows_changed();
        }
    }
}

/// An immutable view of the cluster's nodes.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    chunks: Vec<Arc<Chunk>>,
    index: Arc<HashMap<Arc<str>, usize>>,
    /// Increases with every published change.
    pub generation: u64,
    /// One more than the highest node class id (see [`crate::classes`]).
    classes: usize,
    /// False when no node carries NUMA zones.
    numa: bool,
    /// True when some node runs a pod with inter-pod affinity terms.
    pod_affinity: bool,
    /// Namespaces' labels, by name (for terms' `namespaceSelector`).
    namespaces: Arc<HashMap<Arc<str>, Labels>>,
    /// Claims, volumes, classes and CSI nodes.
    volumes: Arc<Volumes>,
}

impl Snapshot {
    /// A snapshot from its parts (the cache builds these).
    /// `classes` bounds the class ids its nodes carry (0 when they carry none); `numa`
    /// is false only when no node carries NUMA zones.
    pub fn from_parts(
        chunks: Vec<Arc<Chunk>>,
        index: Arc<HashMap<Arc<str>, usize>>,
        generation: u64,
        classes: usize,
        numa: bool,
        namespaces: Arc<HashMap<Arc<str>, Labels>>,
    ) -> Self {
        let pod_affinity = chunks.iter().any(|c| c.flags() & Row::AFFINITY != 0);
        Snapshot {
            chunks,
            index,
            generation,
            classes,
            numa,
            pod_affinity,
            namespaces,
            volumes: Arc::default(),
        }
    }

    /// False when no node runs a pod with inter-pod affinity or anti-affinity terms.
    pub fn may_have_pod_affinity(&self) -> bool {
        self.pod_affinity
    }

    /// The labels of namespace `name`, when it is known.
    pub fn namespace_labels(&self, name: &str) -> Option<&Labels> {
        self.namespaces.get(name)
    }

    /// The claims, volumes, classes and CSI nodes the cluster has.
    pub fn volumes(&self) -> &Arc<Volumes> {
        &self.volumes
    }

    /// The same snapshot with `volumes` as its store.
    pub fn with_volumes(mut self, volumes: Arc<Volumes>) -> Self {
        self.volumes = volumes;
        self
    }

    /// The namespaces' labels, shared (for a snapshot made from other nodes).
    pub fn namespace_map(&self) -> Arc<HashMap<Arc<str>, Labels>> {
        self.namespaces.clone()
    }

    /// Every known namespace with its labels.
    pub fn namespaces(&self) -> impl Iterator<Item = (&Arc<str>, &Labels)> {
        self.namespaces.iter()
    }

    /// False when no node carries NUMA zones (then the NUMA filter passes every node
    /// and the NUMA score is the same on all).
    pub fn may_have_numa(&self) -> bool {
        self.numa
    }

    /// One more than the highest node class id: the size of a per-class table.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// A snapshot of exactly these nodes and the pods on them, in order (for tests,
    /// benchmarks, the simulator's start).
    pub fn from_nodes(nodes: impl IntoIterator<Item = NodeInfo>) -> Self {
        let mut cache = crate::cache::ClusterCache::default();
        for n in nodes {
            cache.add_node_with_pods(n);
        }
        cache.snapshot()
    }

    /// Number of slots (some may be empty).
    pub fn slots(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    /// The node in slot `i`.
    #[inline]
    pub fn slot(&self, i: usize) -> Option<&Arc<NodeInfo>> {
        self.chunks.get(i / CHUNK)?.node(i % CHUNK)
    }

    /// Number of nodes the cache knows (placeholders excluded).
    pub fn node_count(&self) -> usize {
        self.nodes().filter(|(_, n)| n.known).count()
    }

    /// The slot of the node called `name`.
    pub fn slot_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Arc<NodeInfo>> {
        self.slot(self.slot_of(name)?)
    }

    /// Every node with its slot, placeholders included, in slot order.
    pub fn nodes(&self) -> impl Iterator<Item = (usize, &Arc<NodeInfo>)> {
        self.chunks.iter().enumerate().flat_map(|(c, chunk)| {
            chunk
                .nodes()
                .iter()
                .enumerate()
                .filter_map(move |(i, n)| Some((c * CHUNK + i, n.as_ref()?)))
        })
    }

    /// The chunks, for parallel iteration.
    pub fn chunks(&self) -> &[Arc<Chunk>] {
        &self.chunks
    }
}
