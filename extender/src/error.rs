//! Why a call could not be answered. Each error becomes a 4xx (or 5xx) with the
//! message in the verb's `Error` field, and a low-cardinality `kind` for metrics.

use thiserror::Error;

/// A call the extender could not answer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// The body is not JSON of the verb's argument type.
    #[error("{verb}: the body is not {what} JSON as kube-scheduler sends it: {detail}")]
    Malformed {
        /// The verb.
        verb: &'static str,
        /// The Go type expected, e.g. `ExtenderArgs`.
        what: &'static str,
        /// serde's message, with line and column.
        detail: String,
    },
    /// A field the verb needs is absent.
    #[error("{verb}: {field} is missing{hint}")]
    MissingField {
        /// The verb.
        verb: &'static str,
        /// The field, e.g. `Pod` or `Pod.metadata.name`.
        field: &'static str,
        /// What to do about it, starting with `; ` (or empty).
        hint: &'static str,
    },
    /// An object in the request cannot be read (a malformed quantity, selector, ...).
    #[error("{verb}: {detail}")]
    BadObject {
        /// The verb.
        verb: &'static str,
        /// The object and what is wrong with it.
        detail: String,
    },
    /// The request names nodes drover's cache does not know.
    #[error(
        "{verb}: {count} node name(s) unknown to drover's node cache: {names}; a node added \
         a moment ago is retried by kube-scheduler, otherwise check that drover-extender \
         watches the same cluster"
    )]
    UnknownNodes {
        /// The verb.
        verb: &'static str,
        /// How many.
        count: usize,
        /// The first few, comma-separated.
        names: String,
    },
    /// The body is larger than `--body-limit`.
    #[error("{verb}: the body is larger than the limit of {limit} bytes; raise --body-limit")]
    TooLarge {
        /// The verb.
        verb: &'static str,
        /// The limit in bytes.
        limit: usize,
    },
    /// The request did not arrive, or could not be answered, within `--timeout`.
    #[error("{verb}: {what} took longer than --timeout ({millis} ms)")]
    Timeout {
        /// The verb.
        verb: &'static str,
        /// `reading the body` or `answering`.
        what: &'static str,
        /// The timeout.
        millis: u128,
    },
    /// The body could not be read from the connection.
    #[error("{verb}: reading the body failed: {detail}")]
    Read {
        /// The verb.
        verb: &'static str,
        /// The I/O error.
        detail: String,
    },
    /// drover has not listed the cluster yet.
    #[error("{verb}: drover-extender has not listed nodes, pods and gangs yet; retry shortly")]
    NotReady {
        /// The verb.
        verb: &'static str,
    },
    /// The verb is not enabled (bind without a cluster connection).
    #[error("{verb}: {detail}")]
    Disabled {
        /// The verb.
        verb: &'static str,
        /// Why.
        detail: &'static str,
    },
    /// The caller may not use this verb: bind without `--enable-bind`, or a bind
    /// drover's own decision does not support.
    #[error("{verb}: {detail}")]
    Forbidden {
        /// The verb.
        verb: &'static str,
        /// Why, and what to do.
        detail: String,
    },
    /// The request bodies in flight already hold `--in-flight-limit`: retried by
    /// kube-scheduler on the pod's next attempt.
    #[error(
        "{verb}: request bodies in flight already hold the limit of {limit} bytes; retry \
         shortly, or raise --in-flight-limit (with the memory limit)"
    )]
    Busy {
        /// The verb.
        verb: &'static str,
        /// The limit in bytes.
        limit: usize,
    },
    /// The bind call to the API server failed.
    #[error("bind: {0}")]
    Bind(String),
    /// A bug: the handler panicked. Reported, never fatal.
    #[error("{verb}: internal error: {detail}")]
    Internal {
        /// The verb.
        verb: &'static str,
        /// The panic message.
        detail: String,
    },
}

impl RequestError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::Malformed { .. }
            | RequestError::MissingField { .. }
            | RequestError::BadObject { .. }
            | RequestError::Read { .. } => 400,
            RequestError::UnknownNodes { .. } => 422,
            RequestError::TooLarge { .. } => 413,
            RequestError::Timeout { .. } => 408,
            // A bind refused by the API server is a well-formed answer: kube-scheduler
            // reads its Error.
            RequestError::Bind(_) => 200,
            RequestError::Disabled { .. } => 404,
            RequestError::Forbidden { .. } => 403,
            RequestError::Busy { .. } => 503,
            RequestError::NotReady { .. } => 503,
            RequestError::Internal { .. } => 500,
        }
    }

    /// A low-cardinality label for `drover_extender_errors_total{kind}`.
    pub fn kind(&self) -> &'static str {
        match self {
            RequestError::Malformed { .. } => "malformed",
            RequestError::MissingField { .. } => "missing_field",
            RequestError::BadObject { .. } => "bad_object",
            RequestError::UnknownNodes { .. } => "unknown_nodes",
            RequestError::TooLarge { .. } => "too_large",
            RequestError::Timeout { .. } => "timeout",
            RequestError::Read { .. } => "read",
            RequestError::NotReady { .. } => "not_ready",
            RequestError::Disabled { .. } => "disabled",
            RequestError::Forbidden { .. } => "forbidden",
            RequestError::Busy { .. } => "busy",
            RequestError::Bind(_) => "bind",
            RequestError::Internal { .. } => "internal",
        }
    }
}
