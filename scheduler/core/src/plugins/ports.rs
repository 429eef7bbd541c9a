//! `NodePorts`: a host port the pod asks for must be free on the node.

use crate::model::{NodeInfo, PodInfo};

use super::Reason;

/// See the module docs.
#[inline]
pub fn filter(pod: &PodInfo, node: &NodeInfo, why: &mut dyn FnMut(Reason)) -> bool {
    if pod.host_ports.is_empty() {
        return true;
    }
    let clash = pod
        .host_ports
        .iter()
        .any(|want| node.used_ports.iter().any(|used| used.conflicts(want)));
    if clash {
        why(Reason::HostPorts);
    }
    !clash
}

#[cfg(test)]
mod tests {
    use super::super::Filter;
    use super::super::testutil::{node, pod, run};
    use crate::model::*;
    use std::sync::Arc;

    fn hp(ip: &str, port: u16, protocol: Protocol) -> HostPort {
        HostPort {
            protocol,
            ip: ip.into(),
            port,
        }
    }

    #[test]
    fn table() {
        let cases = [
            (
                "free",
                hp("", 8080, Protocol::Tcp),
                hp("", 9090, Protocol::Tcp),
                true,
            ),
            (
                "same port",
                hp("", 8080, Protocol::Tcp),
                hp("", 8080, Protocol::Tcp),
                false,
            ),
            (
                "other protocol",
                hp("", 8080, Protocol::Tcp),
                hp("", 8080, Protocol::Udp),
                true,
            ),
            (
                "wildcard vs ip",
                hp("0.0.0.0", 8080, Protocol::Tcp),
                hp("10.0.0.1", 8080, Protocol::Tcp),
                false,
            ),
            (
                "different ips",
                hp("10.0.0.2", 8080, Protocol::Tcp),
                hp("10.0.0.1", 8080, Protocol::Tcp),
                true,
            ),
        ];
        for (name, used, want, ok) in cases {
            let mut n = node("n", 1000, 1000);
            let mut holder = pod(1, 1);
            holder.host_ports = vec![used];
            n.add_pod(Arc::new(holder));
            let mut p = pod(1, 1);
            p.host_ports = vec![want];
            assert_eq!(run(&Filter::Ports, &p, &n).0, ok, "{name}");
        }
    }
}
