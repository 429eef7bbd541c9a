//! Events (`events.k8s.io/v1`), recorded the way kube-runtime's `Recorder` records
//! them — one Event per object, action and reason, repeats within six minutes counted
//! in its `series` — with bookkeeping that costs the same whatever the number of
//! recent Events.
//!
//! kube-runtime's `Recorder` drops expired entries by scanning its whole cache on
//! every publish, under a lock that every Event waits for: with a `Scheduled` Event
//! per pod, the cost of an Event grows with the pods scheduled in the last six
//! minutes (150 000 entries at 400 pods a second). Here entries expire from the front
//! of a queue ordered by time, so a publish does a constant amount of work besides its
//! request.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};

/// How long a repeat of an Event counts in the first one's series.
pub const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// What makes two Events one series.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SeriesKey {
    type_: EventType,
    action: String,
    reason: String,
    regarding: ReferenceKey,
    related: Option<ReferenceKey>,
}

/// The identifying fields of an object reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ReferenceKey {
    api_version: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
}

impl From<&ObjectReference> for ReferenceKey {
    fn from(r: &ObjectReference) -> Self {
        ReferenceKey {
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            uid: r.uid.clone(),
        }
    }
}

/// The Events of the last [`SERIES_WINDOW`], by series, with a queue of when each was
/// last seen so that expiry looks only at the oldest.
#[derive(Debug, Default)]
struct SeriesCache {
    events: HashMap<SeriesKey, (K8sEvent, Timestamp)>,
    /// (when, key) in the order they happened; an entry whose time is older than its
    /// key's last sighting is stale and skipped.
    seen: VecDeque<(Timestamp, SeriesKey)>,
}

impl SeriesCache {
    /// Forgets the series not seen since `now - SERIES_WINDOW`.
    fn expire(&mut self, now: Timestamp) {
        while let Some((at, _)) = self.seen.front() {
            if *at + SERIES_WINDOW > now {
                break;
            }
            let (at, key) = self.seen.pop_front().expect("front exists");
            if self.events.get(&key).is_some_and(|(_, last)| *last == at) {
                self.events.remove(&key);
            }
        }
    }

    /// The Event of the series `key`, if it was seen within the window.
    fn get(&self, key: &SeriesKey) -> Option<&K8sEvent> {
        self.events.get(key).map(|(e, _)| e)
    }

    /// Records that `event` (of series `key`) was written at `now`.
    fn put(&mut self, key: SeriesKey, event: K8sEvent, now: Timestamp) {
        self.seen.push_back((now, key.clone()));
        self.events.insert(key, (event, now));
    }
}

/// Records Events as `reporter`.
pub struct EventRecorder {
    client: Client,
    reporter: Reporter,
    cache: Mutex<SeriesCache>,
}

impl EventRecorder {
    /// A recorder writing with `client` as `reporter`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        EventRecorder {
            client,
            reporter,
            cache: Mutex::default(),
        }
    }

    /// Writes `ev` about `regarding`: a new Event, or, when the same one was written
    /// within [`SERIES_WINDOW`], one more in its series.
    pub async fn publish(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = SeriesKey {
            type_: ev.type_,
            action: ev.action.clone(),
            reason: ev.reason.clone(),
            regarding: regarding.into(),
            related: ev.secondary.as_ref().map(Into::into),
        };
        let repeat = {
            let mut cache = self.cache.lock().expect("event cache lock");
            cache.expire(now);
            cache.get(&key).map(|e| next_in_series(e, now))
        };
        let events: Api<K8sEvent> = Api::namespaced(
            self.client.clone(),
            regarding.namespace.as_deref().unwrap_or("default"),
        );
        let written = match repeat {
            Some(event) => {
                let name = event.metadata.name.clone().unwrap_or_default();
                events
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&event))
                    .await?;
                event
            }
            None => {
                let event = new_event(&self.reporter, ev, regarding, now);
                events.create(&PostParams::default(), &event).await?;
                event
            }
        };
        self.cache
            .lock()
            .expect("event cache lock")
            .put(key, written, now);
        Ok(())
    }
}

/// The Event kube-runtime's `Recorder` writes for `ev` about `regarding` at `now`.
fn new_event(
    reporter: &Reporter,
    ev: &Event,
    regarding: &ObjectReference,
    now: Timestamp,
) -> K8sEvent {
    K8sEvent {
        action: Some(ev.action.clone()),
        reason: Some(ev.reason.clone()),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding.clone()),
        related: ev.secondary.clone(),
        note: ev.note.clone(),
        metadata: ObjectMeta {
            namespace: regarding.namespace.clone(),
            name: Some(format!(
                "{}.{:x}",
                regarding.name.as_ref().unwrap_or(&reporter.controller),
                now.as_nanosecond()
            )),
            ..Default::default()
        },
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        type_: Some(
            match ev.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .into(),
        ),
        ..Default::default()
    }
}

/// `event` counted once more, last seen at `now`.
fn next_in_series(event: &K8sEvent, now: Timestamp) -> K8sEvent {
    let count = event.series.as_ref().map_or(2, |s| s.count + 1);
    let mut next = event.clone();
    next.series = Some(EventSeries {
        count,
        last_observed_time: MicroTime(now),
    });
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> SeriesKey {
        SeriesKey {
            type_: EventType::Normal,
            action: "Scheduling".into(),
            reason: "Scheduled".into(),
            regarding: ReferenceKey::from(&ObjectReference {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            }),
            related: None,
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn series_expire_six_minutes_after_they_were_last_seen() {
        let mut c = SeriesCache::default();
        c.put(key("a"), K8sEvent::default(), at(0));
        c.put(key("b"), K8sEvent::default(), at(10));
        // "a" seen again at 300 s: its first sighting must not expire it at 360 s.
        c.put(key("a"), K8sEvent::default(), at(300));
        c.expire(at(365));
        assert!(c.get(&key("a")).is_some(), "seen 65 s ago");
        assert!(c.get(&key("b")).is_some(), "seen 355 s ago, within 6 min");
        c.expire(at(371));
        assert!(c.get(&key("b")).is_none());
        assert!(c.get(&key("a")).is_some());
        c.expire(at(660));
        assert!(c.events.is_empty());
        assert!(c.seen.is_empty(), "stale sightings are dropped too");
    }

    #[test]
    fn a_repeat_counts_in_the_series() {
        let reporter = Reporter {
            controller: "drover".into(),
            instance: Some("drover-0".into()),
        };
        let ev = Event {
            type_: EventType::Warning,
            reason: "FailedScheduling".into(),
            note: Some("0/3 nodes are available".into()),
            action: "Scheduling".into(),
            secondary: None,
        };
        let pod = ObjectReference {
            kind: Some("Pod".into()),
            name: Some("p".into()),
            namespace: Some("ns".into()),
            ..Default::default()
        };
        let first = new_event(&reporter, &ev, &pod, at(0));
        assert_eq!(first.type_.as_deref(), Some("Warning"));
        assert_eq!(first.reporting_instance.as_deref(), Some("drover-0"));
        assert!(first.metadata.name.as_deref().unwrap().starts_with("p."));
        let second = next_in_series(&first, at(5));
        let third = next_in_series(&second, at(9));
        assert_eq!(second.series.as_ref().unwrap().count, 2);
        assert_eq!(third.series.as_ref().unwrap().count, 3);
        assert_eq!(third.metadata.name, first.metadata.name, "one object");
    }
}
