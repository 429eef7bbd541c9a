//! Leader election on a `coordination.k8s.io/v1` Lease, with the semantics of
//! client-go's `leaderelection` (what kube-scheduler and kube-controller-manager use):
//!
//! - A replica takes the Lease when it does not exist, when it has no holder, or when
//!   its record (holder and renew time) has not changed for a whole lease duration *by
//!   this replica's own clock*: clocks of different machines are never compared.
//! - The holder renews every retry period. Every write carries the `resourceVersion`
//!   it read, so of two replicas racing for the Lease exactly one wins.
//! - A holder that could not renew for the renew deadline (two thirds of the lease
//!   duration) stops leading at once, before any other replica may take over (they
//!   wait the whole duration from when they last saw the record change).
//! - A holder that stops cleanly gives the Lease up (no holder), so a follower takes
//!   over at its next retry.
//!
//! [`Decision`] is the pure part (what to do with a Lease read at an instant), the
//! async loop in [`run`] reads and writes it.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;

/// How often the Lease is renewed or tried, and how long a holder goes without
/// renewing before it stops leading, for a lease of `duration` (client-go's defaults
/// are 2 s and 10 s for 15 s).
pub fn timings(duration: Duration) -> (Duration, Duration) {
    let retry = duration.mul_f64(2.0 / 15.0).max(Duration::from_millis(200));
    let deadline = duration.mul_f64(2.0 / 3.0);
    (retry, deadline)
}

/// What was last seen of the Lease record, and when (by this replica's clock).
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// Holder and renew time as written.
    pub record: (Option<String>, Option<String>),
    /// When this replica first saw that record.
    pub since: Instant,
}

/// What to do with the Lease as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Write it with this replica as holder (take it, or renew it).
    Take,
    /// Someone else holds it and its record changed less than a duration ago.
    Wait,
}

/// Decides from the Lease's `spec` read at `now`, updating what was observed.
pub fn decide(
    spec: Option<&LeaseSpec>,
    identity: &str,
    duration: Duration,
    observed: &mut Option<Observed>,
    now: Instant,
) -> Decision {
    let holder = spec
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty());
    let renewed = spec
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0.to_string());
    let record = (holder.clone(), renewed);
    match observed {
        Some(o) if o.record == record => {}
        _ => *observed = Some(Observed { record, since: now }),
    }
    let since = observed.as_ref().map_or(now, |o| o.since);
    match holder {
        None => Decision::Take,
        Some(h) if h == identity => Decision::Take,
        Some(_) if now.duration_since(since) >= duration => Decision::Take,
        Some(_) => Decision::Wait,
    }
}

/// Where the Lease is and who this replica is.
#[derive(Clone, Debug)]
pub struct Params {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (the Lease's `holderIdentity` while it leads).
    pub identity: String,
    /// The lease duration.
    pub duration: Duration,
}

/// Reads the Lease and, if [`decide`] says so, writes this replica as its holder.
/// `Ok(true)`: this replica holds a freshly renewed Lease.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    p: &Params,
    observed: &mut Option<Observed>,
) -> kube::Result<bool> {
    let now = k8s_openapi::jiff::Timestamp::now();
    let seconds = i32::try_from(p.duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&p.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(p.name.clone()),
                namespace: Some(p.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(p.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    if decide(
        lease.spec.as_ref(),
        &p.identity,
        p.duration,
        observed,
        Instant::now(),
    ) == Decision::Wait
    {
        return Ok(false);
    }
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(p.identity.as_str()) {
        spec.holder_identity = Some(p.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(seconds);
    // `replace` sends the resourceVersion read above: a write by anyone since fails.
    match api.replace(&p.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up if this replica holds it: no holder, so a follower need not wait
/// for it to expire.
async fn release(api: &Api<Lease>, p: &Params) -> kube::Result<()> {
    let Some(mut lease) = api.get_opt(&p.name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(p.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
    spec.lease_duration_seconds = Some(1);
    api.replace(&p.name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}

/// Holds the Lease while it can, calling `changed(true)` when this replica starts
/// leading and `changed(false)` when it stops (a `false` return ends the election);
/// gives the Lease up on shutdown.
pub async fn run(
    client: kube::Client,
    p: Params,
    mut changed: impl FnMut(bool) -> bool,
    shutdown: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &p.namespace);
    let (retry, deadline) = timings(p.duration);
    let mut observed = None;
    // When the Lease was last renewed by this replica, while it leads.
    let mut leading_since_renewal: Option<Instant> = None;
    let lease = format!("{}/{}", p.namespace, p.name);
    loop {
        let started = Instant::now();
        // A request may not outlast the time left before the renew deadline.
        let budget = match leading_since_renewal {
            Some(at) => deadline
                .saturating_sub(at.elapsed())
                .max(Duration::from_millis(1)),
            None => p.duration,
        };
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = tokio::time::timeout(budget, try_acquire_or_renew(&api, &p, &mut observed)) => r,
        };
        let held = match attempt {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, %lease, "cannot read or write the leader Lease; retrying");
                false
            }
            Err(_) => {
                tracing::warn!(%lease, "the leader Lease request timed out; retrying");
                false
            }
        };
        match (held, leading_since_renewal) {
            (true, None) => {
                tracing::info!(%lease, identity = %p.identity, "holding the leader Lease");
                leading_since_renewal = Some(Instant::now());
                if !changed(true) {
                    break;
                }
            }
            (true, Some(_)) => leading_since_renewal = Some(Instant::now()),
            (false, Some(at)) if at.elapsed() >= deadline || observed_other(&observed, &p) => {
                tracing::warn!(%lease, identity = %p.identity, "could not renew the leader Lease in time, or another replica holds it");
                leading_since_renewal = None;
                if !changed(false) {
                    break;
                }
            }
            _ => {}
        }
        let wait = retry.saturating_sub(started.elapsed());
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    if leading_since_renewal.is_some() {
        match tokio::time::timeout(retry.max(Duration::from_secs(2)), release(&api, &p)).await {
            Ok(Ok(())) => tracing::info!(%lease, "leader Lease released"),
            Ok(Err(e)) => tracing::warn!(error = %e, %lease, "releasing the leader Lease failed"),
            Err(_) => tracing::warn!(%lease, "releasing the leader Lease timed out"),
        }
    }
}

/// True when the Lease was last seen held by another replica.
fn observed_other(observed: &Option<Observed>, p: &Params) -> bool {
    observed
        .as_ref()
        .and_then(|o| o.record.0.as_deref())
        .is_some_and(|h| h != p.identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed_s: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            renew_time: Some(MicroTime(
                k8s_openapi::jiff::Timestamp::from_second(renewed_s).unwrap(),
            )),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }
    }

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn a_free_or_own_lease_is_taken() {
        let t0 = Instant::now();
        let mut o = None;
        assert_eq!(decide(None, "a", D, &mut o, t0), Decision::Take);
        let mut o = None;
        assert_eq!(
            decide(Some(&spec(None, 1)), "a", D, &mut o, t0),
            Decision::Take
        );
        let mut o = None;
        assert_eq!(
            decide(Some(&spec(Some(""), 1)), "a", D, &mut o, t0),
            Decision::Take,
            "an empty holder is no holder"
        );
        let mut o = None;
        assert_eq!(
            decide(Some(&spec(Some("a"), 1)), "a", D, &mut o, t0),
            Decision::Take
        );
    }

    #[test]
    fn another_holder_is_waited_for_a_whole_duration_by_the_local_clock() {
        let t0 = Instant::now();
        let mut o = None;
        // The renew time written (1970 here) says nothing: only how long the record
        // has stayed the same, as this replica saw it, counts.
        let s = spec(Some("b"), 1);
        assert_eq!(decide(Some(&s), "a", D, &mut o, t0), Decision::Wait);
        assert_eq!(
            decide(Some(&s), "a", D, &mut o, t0 + D - Duration::from_millis(1)),
            Decision::Wait
        );
        // b renewed: the wait starts again.
        let renewed = spec(Some("b"), 2);
        assert_eq!(
            decide(Some(&renewed), "a", D, &mut o, t0 + D),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&renewed), "a", D, &mut o, t0 + D + D / 2),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&renewed), "a", D, &mut o, t0 + D + D),
            Decision::Take,
            "unchanged for a whole duration"
        );
    }

    #[test]
    fn a_holder_stops_before_anyone_may_take_over() {
        for secs in [3, 6, 15, 60] {
            let d = Duration::from_secs(secs);
            let (retry, deadline) = timings(d);
            assert!(
                retry < deadline,
                "{secs}s: several renewals before the deadline"
            );
            // A follower that saw the last renewal at once still waits `d`; the holder
            // stops `deadline` after that renewal at the latest, one retry early.
            assert!(
                deadline + retry <= d,
                "{secs}s: {deadline:?} + {retry:?} > {d:?}"
            );
        }
        assert_eq!(
            timings(Duration::from_secs(15)),
            (Duration::from_secs(2), Duration::from_secs(10)),
            "client-go's defaults"
        );
    }
}
