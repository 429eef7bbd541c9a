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

/// A series is written at most this often: repeats in between are counted in memory
/// and go out with the next write (kube-scheduler's recorder, client-go's
/// `tools/events`, likewise counts repeats and writes the series on a timer), so an
/// object told something again and again costs the API server one write a minute,
/// not one per repeat. The first repeat is written at once.
pub const SERIES_WRITE_EVERY: SignedDuration = SignedDuration::from_mins(1);

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
    /// Each series' Event as counted, when it was last seen, and when last written.
    events: HashMap<SeriesKey, (K8sEvent, Timestamp, Timestamp)>,
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
            if self
                .events
                .get(&key)
                .is_some_and(|(_, last, _)| *last == at)
            {
                self.events.remove(&key);
            }
        }
    }

    /// The Event of the series `key`, if it was seen within the window.
    #[cfg(test)]
    fn get(&self, key: &SeriesKey) -> Option<&K8sEvent> {
        self.events.get(key).map(|(e, _, _)| e)
    }

    /// Records that `event` (of series `key`) was seen at `now`, and written then
    /// (`written`) or not.
    fn put(&mut self, key: SeriesKey, event: K8sEvent, now: Timestamp, written: bool) {
        let last_written = match self.events.get(&key) {
            Some((_, _, w)) if !written => *w,
            _ => now,
        };
        self.seen.push_back((now, key.clone()));
        self.events.insert(key, (event, now, last_written));
    }

    /// What to do with one more Event of series `key` at `now`: create it (`None`:
    /// not seen within the window), patch its series with this event, or only count
    /// it (`Some((event, false))`) because the series was written less than
    /// [`SERIES_WRITE_EVERY`] ago.
    fn plan(&mut self, key: &SeriesKey, now: Timestamp) -> Option<(K8sEvent, bool)> {
        self.expire(now);
        let (event, _, written) = self.events.get(key)?;
        // The first repeat is written at once (the Event shows it happened again).
        let first_repeat = event.series.is_none();
        let next = next_in_series(event, now);
        Some((next, first_repeat || *written + SERIES_WRITE_EVERY <= now))
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
        let plan = self.cache.lock().expect("event cache lock").plan(&key, now);
        let events: Api<K8sEvent> = Api::namespaced(
            self.client.clone(),
            regarding.namespace.as_deref().unwrap_or("default"),
        );
        let (written, wrote) = match plan {
            Some((event, true)) => {
                let name = event.metadata.name.clone().unwrap_or_default();
                events
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&event))
                    .await?;
                (event, true)
            }
            // Counted; written with the series' next write.
            Some((event, false)) => (event, false),
            None => {
                let event = new_event(&self.reporter, ev, regarding, now);
                events.create(&PostParams::default(), &event).await?;
                (event, true)
            }
        };
        self.cache
            .lock()
            .expect("event cache lock")
            .put(key, written, now, wrote);
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
        c.put(key("a"), K8sEvent::default(), at(0), true);
        c.put(key("b"), K8sEvent::default(), at(10), true);
        // "a" seen again at 300 s: its first sighting must not expire it at 360 s.
        c.put(key("a"), K8sEvent::default(), at(300), true);
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

    #[test]
    fn repeats_are_counted_and_written_at_most_once_a_minute() {
        let mut c = SeriesCache::default();
        let k = key("p");
        assert!(c.plan(&k, at(0)).is_none(), "new: create it");
        c.put(k.clone(), K8sEvent::default(), at(0), true);
        let mut writes = 0;
        // A repeat every second for five minutes.
        for t in 1..=300 {
            let (event, write) = c.plan(&k, at(t)).expect("in the series");
            writes += usize::from(write);
            c.put(k.clone(), event, at(t), write);
        }
        assert_eq!(writes, 5, "the first repeat, then one write a minute");
        let counted = c.get(&k).and_then(|e| e.series.as_ref()).map(|s| s.count);
        assert_eq!(counted, Some(301), "every repeat counted");
        // Six minutes after the last: a new series.
        assert!(c.plan(&k, at(300 + 361)).is_none());
    }
}
