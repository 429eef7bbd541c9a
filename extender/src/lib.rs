//! drover as an HTTP extender for kube-scheduler (see issue: extender).
