//! The engine driven by hand: events in, actions out, no server.

use super::*;
use crate::model::GangRef;

const GI: i64 = 1 << 30;

fn engine() -> Engine {
    engine_with(Config::default())
}

/// An engine in scheduler mode, everything listed, leading.
fn engine_with(config: Config) -> Engine {
    let mut e = Engine::new(Options::scheduler(config, "drover"));
    for r in Resource::BEFORE_DECIDING {
        e.handle_list_done(r, 0);
    }
    e.handle_leadership(true, 0);
    e
}

fn node(name: &str, cpu: i64, mem_gi: i64) -> NodeInfo {
    NodeInfo::new(name, Resources::cpu_mem(cpu, mem_gi * GI), 110)
}

fn pod(name: &str, cpu: i64, mem_gi: i64) -> PodInfo {
    PodInfo {
        key: PodKey::new("ns", name),
        uid: format!("uid-{name}").into(),
        scheduler_name: "drover".into(),
        requests: Resources::cpu_mem(cpu, mem_gi * GI),
        declares_requests: true,
        ..Default::default()
    }
}

/// Queue `team` with a max of `millicores` cpu.
fn team_queue(millicores: i64) -> QueueSpec {
    let mut max = Resources::default();
    max.set(&crate::model::ResourceKind::Cpu, millicores);
    QueueSpec {
        name: "team".into(),
        max: Some(max),
        max_listed: vec![crate::model::ResourceKind::Cpu],
        weight: 1,
        ..Default::default()
    }
}

fn member(name: &str, gang: &str, min: usize) -> PodInfo {
    PodInfo {
        gang: Some(Arc::new(GangRef {
            name: gang.into(),
            min_member: Some(min.to_string().into()),
            ..Default::default()
        })),
        ..pod(name, 1000, 1)
    }
}

/// An engine in extender mode (plans held 60 s, admissions 30 s), everything listed.
fn extender_engine() -> Engine {
    let mut e = Engine::new(Options {
        config: Config::default(),
        scheduler_names: vec![],
        mode: Mode::Extender {
            plan_ttl_ms: 60_000,
            admission_ttl_ms: 30_000,
        },
        tick_ms: 1_000,
    });
    for r in Resource::BEFORE_DECIDING {
        e.handle_list_done(r, 0);
    }
    e
}

/// Runs the engine until nothing is due at `now`; returns every action.
fn run(e: &mut Engine, now: i64) -> Vec<Action> {
    let mut out: Vec<Action> = std::iter::from_fn(|| e.poll_action()).collect();
    for _ in 0..10_000 {
        match e.poll_timeout() {
            Some(t) if t <= now => e.handle_timeout(now),
            _ => break,
        }
        while let Some(a) = e.poll_action() {
            out.push(a);
        }
    }
    out
}

fn binds(actions: &[Action]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Bind { pod, node, .. } => Some((pod.key.name.to_string(), node.to_string())),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// What the watch shows once a bind landed.
fn bound(p: &PodInfo, node: &str) -> PodInfo {
    PodInfo {
        node_name: Some(node.into()),
        phase: Phase::Running,
        ..p.clone()
    }
}

#[test]
fn nothing_is_decided_before_everything_is_listed_and_it_leads() {
    let mut e = Engine::new(Options::scheduler(Config::default(), "drover"));
    e.handle_node(node("a", 4000, 16), 0);
    e.handle_pod(pod("p", 1000, 1), 0);
    e.handle_leadership(true, 0);
    assert!(binds(&run(&mut e, 1)).is_empty(), "not listed yet");
    for r in Resource::BEFORE_DECIDING {
        e.handle_list_done(r, 1);
    }
    e.handle_leadership(false, 1);
    assert!(binds(&run(&mut e, 2)).is_empty(), "not leading");
    e.handle_leadership(true, 2);
    assert_eq!(binds(&run(&mut e, 3)), vec![("p".into(), "a".into())]);
}

#[test]
fn a_pod_is_bound_and_a_conflict_is_not_retried() {
    let mut e = engine();
    e.handle_node(node("a", 4000, 16), 0);
    let p = pod("p", 1000, 1);
    e.handle_pod(p.clone(), 0);
    assert_eq!(binds(&run(&mut e, 0)), vec![("p".into(), "a".into())]);
    assert!(e.is_assumed(&p.key));
    e.handle_bind_result(&p.key, BindResult::Gone("409".into()), 1);
    // Most often the pod is bound already: it keeps its room until the watch says.
    let q = pod("q", 3500, 1);
    e.handle_pod(q.clone(), 2);
    assert!(binds(&run(&mut e, 1_000)).is_empty(), "the room stays held");
    // The watch never confirms: the assumption lapses and frees the room, but the
    // pod that had the 409 is never bound again.
    let mut later = run(&mut e, 100_000);
    later.extend(run(&mut e, 200_000));
    assert_eq!(
        binds(&later),
        vec![("q".into(), "a".into())],
        "a 409 is never retried"
    );
}

/// An engine that has handed out the bind of pod `p` (1 cpu) to node `a` (4 cpus).
fn one_bind_out() -> (Engine, PodInfo) {
    let mut e = engine();
    e.handle_node(node("a", 4000, 16), 0);
    let p = pod("p", 1000, 1);
    e.handle_pod(p.clone(), 0);
    assert_eq!(binds(&run(&mut e, 0)).len(), 1);
    (e, p)
}

#[test]
fn an_unanswered_bind_keeps_its_room_then_is_retried() {
    let (mut e, p) = one_bind_out();
    e.handle_bind_result(&p.key, BindResult::Unknown("timed out".into()), 5_000);
    let said = run(&mut e, 5_000);
    assert!(
        said.iter()
            .any(|a| matches!(a, Action::Unschedulable { pod, message }
            if *pod == p.key && message.contains("went unanswered"))),
        "the pod says why it waits: {said:?}"
    );
    // It may have landed: another pod does not get its room, and it is not bound again.
    let q = PodInfo {
        created_ms: 5_001,
        ..pod("q", 3500, 1)
    };
    e.handle_pod(q.clone(), 5_001);
    assert!(
        binds(&run(&mut e, 10_000)).is_empty(),
        "the room stays held"
    );
    // The watch never shows it bound: once the confirm timeout passes it is tried
    // again (and `q`, which now fits, too).
    let mut later = run(&mut e, 40_000);
    later.extend(run(&mut e, 60_000));
    let mut bound: Vec<String> = binds(&later).into_iter().map(|(p, _)| p).collect();
    bound.sort();
    assert_eq!(
        bound,
        vec!["p".to_string()],
        "p is retried; q still does not fit"
    );
}

#[test]
fn an_unanswered_bind_the_watch_shows_landed_is_done() {
    let (mut e, p) = one_bind_out();
    e.handle_bind_result(&p.key, BindResult::Unknown("timed out".into()), 5_000);
    let mut landed = p.clone();
    landed.node_name = Some("a".into());
    e.handle_pod(landed, 6_000);
    let later = run(&mut e, 100_000);
    assert!(
        binds(&later).is_empty(),
        "a bind that landed is never repeated"
    );
}

#[test]
fn a_failed_bind_is_retried_after_backoff() {
    let (mut e, p) = one_bind_out();
    e.handle_bind_result(&p.key, BindResult::Failed("500".into()), 10);
    assert!(binds(&run(&mut e, 10)).is_empty(), "backs off first");
    assert_eq!(binds(&run(&mut e, 5_000)).len(), 1, "then tries again");
    e.handle_bind_result(&p.key, BindResult::Bound, 5_001);
    let actions = run(&mut e, 5_001);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Event(ev) if ev.reason == "Scheduled"))
    );
}

#[test]
fn a_pod_that_fits_nowhere_says_why_once() {
    let mut e = engine();
    e.handle_node(node("a", 1000, 1), 0);
    e.handle_pod(pod("big", 8000, 1), 0);
    let actions = run(&mut e, 0);
    let messages: Vec<&String> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Unschedulable { message, .. } => Some(message),
            _ => None,
        })
        .collect();
    assert_eq!(messages.len(), 1);
    assert!(messages[0].contains("Insufficient cpu"), "{}", messages[0]);
    // Retried later on the same cluster: same message, not written again.
    let again = run(&mut e, 400_000);
    assert!(
        !again
            .iter()
            .any(|a| matches!(a, Action::Unschedulable { .. }))
    );
}

#[test]
fn a_gang_is_bound_whole_or_not_at_all() {
    let mut e = engine();
    e.handle_node(node("a", 2000, 16), 0);
    e.handle_node(node("b", 2000, 16), 0);
    for i in 0..3 {
        e.handle_pod(member(&format!("m{i}"), "g", 3), 0);
    }
    assert_eq!(binds(&run(&mut e, 0)).len(), 3, "three of 1 cpu fit on 2+2");
    // A gang of five does not fit at all: nothing of it is bound.
    for i in 0..5 {
        e.handle_pod(member(&format!("h{i}"), "h", 5), 1);
    }
    assert!(binds(&run(&mut e, 1)).is_empty());
}

#[test]
fn a_gang_waits_for_its_members_then_goes_together() {
    let mut e = engine();
    e.handle_node(node("a", 8000, 16), 0);
    e.handle_pod(member("m0", "g", 2), 0);
    let actions = run(&mut e, 0);
    assert!(binds(&actions).is_empty());
    assert!(actions.iter().any(|a| matches!(a, Action::Unschedulable { message, .. } if message.contains("waiting for 1 more"))));
    e.handle_pod(member("m1", "g", 2), 10);
    assert_eq!(binds(&run(&mut e, 10)).len(), 2);
}

#[test]
fn a_failed_member_bind_is_repaired_ahead_of_other_work() {
    let mut e = engine();
    e.handle_node(node("a", 8000, 16), 0);
    let members: Vec<PodInfo> = (0..2).map(|i| member(&format!("m{i}"), "g", 2)).collect();
    for m in &members {
        e.handle_pod(m.clone(), 0);
    }
    assert_eq!(binds(&run(&mut e, 0)).len(), 2);
    e.handle_bind_result(&members[0].key, BindResult::Bound, 1);
    e.handle_pod(bound(&members[0], "a"), 1);
    e.handle_bind_result(&members[1].key, BindResult::Failed("500".into()), 1);
    let actions = run(&mut e, 1);
    assert_eq!(
        binds(&actions),
        vec![("m1".into(), "a".into())],
        "placed again at once, alone"
    );
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Event(ev) if ev.reason == "GangRepair"))
    );
}

#[test]
fn a_duplicate_or_stray_bind_result_changes_nothing() {
    let mut e = engine();
    e.handle_node(node("a", 4000, 16), 0);
    let p = pod("p", 1000, 1);
    e.handle_pod(p.clone(), 0);
    run(&mut e, 0);
    e.handle_bind_result(&p.key, BindResult::Bound, 1);
    e.handle_bind_result(&p.key, BindResult::Failed("late duplicate".into()), 2);
    assert!(
        e.is_assumed(&p.key),
        "still counts until the watch confirms"
    );
    e.handle_bind_result(&PodKey::new("ns", "stranger"), BindResult::Bound, 3);
    assert_eq!(e.binds_in_flight(), 0);
}

#[test]
fn an_unconfirmed_bind_expires_and_the_pod_is_pending_again() {
    let mut e = engine();
    e.handle_node(node("a", 4000, 16), 0);
    let p = pod("p", 1000, 1);
    e.handle_pod(p.clone(), 0);
    run(&mut e, 0);
    e.handle_bind_result(&p.key, BindResult::Bound, 1);
    let confirm = e.options().config.confirm_timeout_ms;
    assert!(
        binds(&run(&mut e, confirm - 1_000)).is_empty(),
        "not before the deadline"
    );
    // Then it is pending again and tried again; if it was bound after all, the API
    // answers 409 and the watch has the truth.
    assert_eq!(binds(&run(&mut e, confirm + 2_000)).len(), 1);
    assert_eq!(e.take_stats().expired_assumptions, 1);
}

#[test]
fn over_quota_pods_wait_with_the_queue_named() {
    let mut e = engine();
    e.handle_node(node("a", 8000, 16), 0);
    e.handle_queue(team_queue(1500), 0);
    for n in ["p", "q"] {
        e.handle_pod(
            PodInfo {
                queue: Some("team".into()),
                ..pod(n, 1000, 1)
            },
            0,
        );
    }
    let actions = run(&mut e, 0);
    assert_eq!(binds(&actions).len(), 1);
    assert!(actions.iter().any(|a| matches!(a, Action::Unschedulable { message, .. } if message.contains("would exceed its max cpu"))));
}

#[test]
fn losing_the_lease_drops_writes_not_yet_handed_out() {
    let mut e = engine();
    e.handle_node(node("a", 4000, 16), 0);
    e.handle_pod(pod("p", 1000, 1), 0);
    e.handle_timeout(0);
    e.handle_leadership(false, 1);
    assert!(e.poll_action().is_none());
}

#[test]
fn extender_plans_hold_every_member_until_bound_or_lapsed() {
    let mut e = extender_engine();
    e.handle_node(node("a", 2000, 16), 0);
    e.handle_node(node("b", 2000, 16), 0);
    let members: Vec<PodInfo> = (0..4).map(|i| member(&format!("m{i}"), "g", 4)).collect();
    for m in &members {
        e.handle_pod(m.clone(), 0);
    }
    let Verdict::Planned { node, .. } = e.extender_verdict(&members[0], 1) else {
        panic!("planned")
    };
    // Every member holds its place: a plain pod finds no room.
    let snap = e.snapshot();
    let free: i64 = snap.nodes().map(|(_, n)| n.free().cpu).sum();
    assert_eq!(free, 0, "all four members counted on their nodes");
    assert!(matches!(
        e.extender_verdict(&members[1], 2),
        Verdict::Planned { .. }
    ));
    e.handle_pod(bound(&members[0], &node), 3);
    // The plan lapses for the three never bound: they are pending again.
    run(&mut e, 70_000);
    for m in &members[1..] {
        assert!(!e.is_assumed(&m.key));
    }
    assert_eq!(e.gangs().counts(&GangKey::new("ns", "g")).scheduled, 1);
}

/// kube-scheduler refuses the last member's planned node (its cache still shows a
/// pod there that drover saw leave): the plan is dropped, but the members already
/// passed on their nodes stay there — kube-scheduler is binding them — and only the
/// refused member is decided again.
#[test]
fn a_dropped_plan_keeps_the_members_kube_scheduler_is_binding() {
    let mut e = extender_engine();
    for n in ["a", "b", "c", "d", "e"] {
        e.handle_node(node(n, 1000, 16), 0);
    }
    let members: Vec<PodInfo> = (0..4).map(|i| member(&format!("m{i}"), "g", 4)).collect();
    for m in &members {
        e.handle_pod(m.clone(), 0);
    }
    let mut nodes = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let Verdict::Planned { node, .. } = e.extender_verdict(m, 1 + i as i64) else {
            panic!("{} planned", m.key)
        };
        if i < 3 {
            e.hand_over(&m.key);
        }
        nodes.push(node);
    }
    e.drop_plan(&members[3].key, 10);
    for (m, n) in members[..3].iter().zip(&nodes) {
        assert_eq!(
            e.planned_node(&m.key).as_ref(),
            Some(n),
            "{} keeps its node",
            m.key
        );
    }
    assert_eq!(e.planned_node(&members[3].key), None);
    assert_eq!(e.gangs().counts(&GangKey::new("ns", "g")).scheduled, 3);
    // Decided again, the refused member alone gets a node none of the others holds.
    let Verdict::Planned { node, .. } = e.extender_verdict(&members[3], 11) else {
        panic!("the last member planned again")
    };
    assert!(
        !nodes[..3].contains(&node),
        "{node} is one of the others' nodes"
    );
}

fn gated(p: PodInfo) -> PodInfo {
    PodInfo {
        scheduling_gates: vec!["example.com/admission".into()],
        ..p
    }
}

fn pending_gauge(e: &Engine, state: &str) -> i64 {
    e.gauges(0)
        .pending
        .iter()
        .find(|(s, _)| *s == state)
        .map(|(_, n)| *n)
        .expect("a state of drover_pending_pods")
}

#[test]
fn a_gated_pod_is_never_attempted_until_its_gates_are_lifted() {
    let mut e = engine();
    e.handle_node(node("a", 4000, 16), 0);
    let p = pod("p", 1000, 1);
    e.handle_pod(gated(p.clone()), 0);
    let actions = run(&mut e, 100_000);
    assert!(binds(&actions).is_empty(), "gated: not bound");
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Unschedulable { .. })),
        "the API server already says SchedulingGated; drover writes nothing"
    );
    assert_eq!(pending_gauge(&e, "gated"), 1);
    assert_eq!(pending_gauge(&e, "active"), 0);
    e.handle_pod(p, 100_001);
    assert_eq!(binds(&run(&mut e, 100_001)), vec![("p".into(), "a".into())]);
    assert_eq!(pending_gauge(&e, "gated"), 0);
}

#[test]
fn a_gang_with_a_gated_member_waits_whole() {
    // Room for the whole gang, and for an elastic gang's minimum without the gated
    // member: still nothing is bound while one member is gated.
    // The gated member arrives with the others, or after they were decided and wait
    // for it: either way the members hear of the gate.
    for (size, min, late) in [(3, 3, false), (3, 2, false), (3, 3, true), (3, 2, true)] {
        let mut e = engine();
        e.handle_node(node("a", 8000, 16), 0);
        let members: Vec<PodInfo> = (0..size)
            .map(|i| member(&format!("m{i}"), "g", min))
            .collect();
        for m in &members[..size - 1] {
            e.handle_pod(m.clone(), 0);
        }
        let mut actions = Vec::new();
        if late && min == size {
            actions = run(&mut e, 0);
            assert!(binds(&actions).is_empty(), "2 of 3: nothing bound");
        }
        if late && min < size {
            // An elastic gang's minimum is met by the ungated members alone: they are
            // placed before the third exists, as a gang without it.
            let placed = binds(&run(&mut e, 0));
            assert_eq!(placed.len(), 2, "{placed:?}");
            continue;
        }
        e.handle_pod(gated(members[size - 1].clone()), 1);
        actions.extend(run(&mut e, 100_000));
        assert!(
            binds(&actions).is_empty(),
            "gang {size}/{min}: nothing bound"
        );
        let said = actions.iter().rev().find_map(|a| match a {
            Action::Unschedulable { message, .. } => Some(message.clone()),
            _ => None,
        });
        let said = said.expect("the ungated members hear why");
        assert!(
            said.contains("waiting for scheduling gates on 1 member(s) (m2)"),
            "{said}"
        );
        let g = GangKey::new("ns", "g");
        assert_eq!(e.gangs().counts(&g).gated, 1);
        assert_eq!(e.gauges(0).gangs_waiting, 1);
        e.handle_pod(members[size - 1].clone(), 100_001);
        assert_eq!(
            binds(&run(&mut e, 100_001)).len(),
            size,
            "gang {size}/{min}: whole once ungated"
        );
    }
}

#[test]
fn the_extender_holds_a_gang_with_a_gated_member() {
    let mut e = extender_engine();
    e.handle_node(node("a", 8000, 16), 0);
    let members: Vec<PodInfo> = (0..3).map(|i| member(&format!("m{i}"), "g", 3)).collect();
    e.handle_pod(members[0].clone(), 0);
    e.handle_pod(members[1].clone(), 0);
    e.handle_pod(gated(members[2].clone()), 0);
    let v = e.extender_verdict(&members[0], 1);
    assert!(
        matches!(&v, Verdict::HoldForMembers { message, .. } if message.contains("scheduling gates")),
        "{v:?}"
    );
    e.handle_pod(members[2].clone(), 2);
    assert!(matches!(
        e.extender_verdict(&members[0], 3),
        Verdict::Planned { .. }
    ));
}

fn nominations(actions: &[Action]) -> Vec<(String, Option<String>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Nominate { pod, node } => {
                Some((pod.name.to_string(), node.as_deref().map(str::to_string)))
            }
            _ => None,
        })
        .collect()
}

/// Two 4-cpu nodes held by low-priority pods and a 4-cpu pod of priority 1000.
fn preempting() -> (Engine, PodInfo) {
    let config = Config {
        reclaim_grace_ms: 0,
        min_runtime_ms: 0,
        ..Config::default()
    };
    let mut e = engine_with(config);
    for (n, p) in [("n1", "low-a"), ("n2", "low-b")] {
        e.handle_node(node(n, 4000, 16), 0);
        let low = PodInfo {
            priority: 10,
            ..pod(p, 4000, 1)
        };
        e.handle_pod(bound(&low, n), 0);
    }
    let urgent = PodInfo {
        priority: 1000,
        ..pod("urgent", 4000, 1)
    };
    e.handle_pod(urgent.clone(), 1);
    (e, urgent)
}

#[test]
fn a_preempting_pod_is_nominated_to_its_victims_node_and_cleared_when_it_binds_elsewhere() {
    // Cases: the victim's node frees and the pod binds there (the nomination stays, as
    // the API keeps it); another node frees first (the nomination is cleared).
    for elsewhere in [false, true] {
        let (mut e, urgent) = preempting();
        let actions = run(&mut e, 1_000);
        let victims: Vec<(String, String)> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Evict { pod, .. } => Some((
                    pod.key.name.to_string(),
                    pod.node_name.as_deref().unwrap_or("").to_string(),
                )),
                _ => None,
            })
            .collect();
        assert_eq!(victims.len(), 1, "{actions:?}");
        let (victim, at) = victims[0].clone();
        assert_eq!(
            nominations(&actions),
            vec![("urgent".to_string(), Some(at.clone()))]
        );
        e.handle_eviction_result(&PodKey::new("ns", &victim), EvictionResult::Evicted, 1_001);
        let other = if at == "n1" {
            ("low-b", "n2")
        } else {
            ("low-a", "n1")
        };
        let freed = if elsewhere {
            other
        } else {
            (victim.as_str(), at.as_str())
        };
        e.handle_pod_deleted(&PodKey::new("ns", freed.0), 2_000);
        let actions = run(&mut e, 3_000);
        assert_eq!(
            binds(&actions),
            vec![("urgent".to_string(), freed.1.to_string())]
        );
        assert!(nominations(&actions).is_empty(), "{actions:?}");
        e.handle_bind_result(&urgent.key, BindResult::Bound, 3_001);
        let actions: Vec<Action> = std::iter::from_fn(|| e.poll_action()).collect();
        let cleared = if elsewhere {
            vec![("urgent".to_string(), None)]
        } else {
            vec![]
        };
        assert_eq!(nominations(&actions), cleared, "elsewhere={elsewhere}");
    }
}

/// Two pods with claims of a `WaitForFirstConsumer` local class, one free volume
/// reachable only from node b: the first pod goes to b with that volume chosen, the
/// second is not offered it while the first bind is under way, and gets it back
/// when that bind fails.
#[test]
fn a_waiting_claim_binds_its_volume_and_no_other_claim_is_offered_it() {
    use crate::model::{
        AccessModes, BindingMode, Claim, ClaimKey, Requirement, SelectorOp, SelectorTerm,
        StorageClass, Volume, VolumeChoice,
    };
    let mut e = engine();
    e.handle_node(node("a", 4000, 16), 0);
    e.handle_node(node("b", 4000, 16), 0);
    e.handle_storage_class(
        "local",
        Some(StorageClass {
            provisioner: crate::model::volume::NO_PROVISIONER.into(),
            binding_mode: BindingMode::WaitForFirstConsumer,
            allowed_topologies: None,
        }),
        0,
    );
    e.handle_volume(
        "pv-b",
        Some(Volume {
            name: "pv-b".into(),
            class: Some("local".into()),
            capacity_bytes: GI,
            access_modes: AccessModes::RWO,
            node_affinity: Some(vec![SelectorTerm(vec![Requirement {
                key: "metadata.name".into(),
                op: SelectorOp::In,
                values: vec!["b".into()],
                bound: 0,
                field: true,
            }])]),
            available: true,
            ..Default::default()
        }),
        0,
    );
    for c in ["c1", "c2"] {
        e.handle_claim(
            ClaimKey::new("ns", c),
            Some(Claim {
                uid: format!("uid-{c}").into(),
                class: Some("local".into()),
                request_bytes: GI,
                access_modes: AccessModes::RWO,
                ..Default::default()
            }),
            0,
        );
    }
    let with_claim = |name: &str, claim: &str| PodInfo {
        claims: Some(vec![Arc::from(claim)].into()),
        ..pod(name, 1000, 1)
    };
    e.handle_pod(with_claim("p1", "c1"), 0);
    let actions = run(&mut e, 1);
    let chosen: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Bind { node, volumes, .. } => Some((node.to_string(), volumes.to_vec())),
            _ => None,
        })
        .collect();
    assert_eq!(
        chosen,
        vec![(
            "b".to_string(),
            vec![VolumeChoice::Bind {
                claim: ClaimKey::new("ns", "c1"),
                uid: "uid-c1".into(),
                volume: "pv-b".into(),
            }]
        )]
    );
    e.handle_pod(with_claim("p2", "c2"), 2);
    assert!(binds(&run(&mut e, 3)).is_empty(), "pv-b is promised to c1");
    e.handle_bind_result(
        &PodKey::new("ns", "p1"),
        BindResult::Failed("c1 did not bind".into()),
        4,
    );
    let later = binds(&run(&mut e, 60_000));
    assert_eq!(later.len(), 1, "one volume, one of the two pods: {later:?}");
    assert_eq!(later[0].1, "b");
}

/// A pod whose spec drover cannot read is never scheduled, and its condition and an
/// Event say why, once; a readable version seen before is forgotten.
#[test]
fn an_unreadable_pod_says_why_once_and_is_never_scheduled() {
    let mut e = engine();
    e.handle_node(node("a", 4000, 16), 0);
    let p = pod("p", 1000, 1);
    let problem = "default/p: containers[0].resources.requests[cpu]: overflow";
    // Seen first while the leader does not lead: it is not scheduled from its old spec.
    e.handle_leadership(false, 0);
    e.handle_pod(p.clone(), 0);
    e.handle_unreadable_pod(p.clone(), problem, 1);
    e.handle_leadership(true, 1);
    e.handle_unreadable_pod(p.clone(), problem, 2);
    e.handle_unreadable_pod(p.clone(), problem, 3);
    let actions = run(&mut e, 10_000);
    assert!(binds(&actions).is_empty(), "never scheduled");
    let conditions: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Unschedulable { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        conditions,
        vec![format!(
            "drover cannot read this pod, so it never schedules it: {problem}"
        )],
        "once"
    );
    assert_eq!(
        actions
            .iter()
            .filter(|a| matches!(a, Action::Event(ev) if ev.reason == "FailedScheduling"))
            .count(),
        1
    );
    // Another scheduler's pod is not drover's to explain.
    let theirs = PodInfo {
        scheduler_name: "default-scheduler".into(),
        ..pod("q", 1000, 1)
    };
    e.handle_unreadable_pod(theirs, problem, 4);
    assert!(run(&mut e, 10_001).is_empty());
}

/// A relist of claims, volumes, classes, CSI nodes or resource claims drops what it
/// did not show again, and keeps what it did.
#[test]
fn a_relist_drops_the_volume_objects_it_did_not_show() {
    use crate::model::{Claim, ClaimKey, CsiNode, DeviceClaim, StorageClass, Volume};
    let mut e = engine();
    let (kept, gone) = (ClaimKey::new("ns", "kept"), ClaimKey::new("ns", "gone"));
    for k in [&kept, &gone] {
        e.handle_claim(k.clone(), Some(Claim::default()), 0);
        e.handle_device_claim(k.clone(), Some(DeviceClaim::default()), 0);
    }
    for n in ["kept", "gone"] {
        e.handle_volume(n, Some(Volume::default()), 0);
        e.handle_storage_class(n, Some(StorageClass::default()), 0);
        e.handle_csi_node(n, Some(CsiNode::default()), 0);
    }
    for r in [
        Resource::Claims,
        Resource::PersistentVolumes,
        Resource::StorageClasses,
        Resource::CsiNodes,
        Resource::ResourceClaims,
    ] {
        e.handle_list_started(r);
    }
    e.handle_claim(kept.clone(), Some(Claim::default()), 1);
    e.handle_device_claim(kept.clone(), Some(DeviceClaim::default()), 1);
    e.handle_volume("kept", Some(Volume::default()), 1);
    e.handle_storage_class("kept", Some(StorageClass::default()), 1);
    e.handle_csi_node("kept", Some(CsiNode::default()), 1);
    for r in [
        Resource::Claims,
        Resource::PersistentVolumes,
        Resource::StorageClasses,
        Resource::CsiNodes,
        Resource::ResourceClaims,
    ] {
        e.handle_list_done(r, 2);
    }
    let v = e.snapshot().volumes().clone();
    let names = |keys: Vec<String>| {
        let mut k = keys;
        k.sort();
        k
    };
    assert_eq!(
        names(v.claims.keys().map(|k| k.to_string()).collect()),
        ["ns/kept"]
    );
    assert_eq!(
        names(v.device_claims.keys().map(|k| k.to_string()).collect()),
        ["ns/kept"]
    );
    for keys in [
        v.volumes.keys().map(|k| k.to_string()).collect(),
        v.classes.keys().map(|k| k.to_string()).collect(),
        v.csi_nodes.keys().map(|k| k.to_string()).collect(),
    ] {
        assert_eq!(names(keys), ["kept"]);
    }
}

/// Writes a gang costs the API server while its members arrive one every 10 ms and
/// then bind: (conditions + FailedScheduling Events, binds).
fn arrival_writes(n: usize) -> (usize, usize) {
    let mut e = engine();
    for i in 0..n.div_ceil(50) {
        e.handle_node(node(&format!("n{i}"), 50_000, 50), 0);
    }
    let mut writes = 0;
    let mut bound = 0;
    let mut count = |actions: &[Action]| {
        for a in actions {
            match a {
                Action::Unschedulable { .. } => writes += 1,
                Action::Event(ev) if ev.reason == "FailedScheduling" => writes += 1,
                Action::Bind { .. } => bound += 1,
                _ => {}
            }
        }
    };
    for i in 0..n {
        let now = i as i64 * 10;
        e.handle_pod(member(&format!("m{i}"), "g", n), now);
        count(&run(&mut e, now));
    }
    count(&run(&mut e, n as i64 * 10 + 60_000));
    (writes, bound)
}

#[test]
fn a_gang_arriving_one_by_one_costs_writes_in_proportion_to_its_size() {
    for n in [50, 200, 400] {
        let (writes, bound) = arrival_writes(n);
        println!(
            "gang of {n} arriving one per 10 ms: {writes} condition and Event writes, {bound} binds"
        );
        assert_eq!(bound, n, "the whole gang binds");
        assert!(
            writes <= 2 * n,
            "gang of {n}: {writes} writes while it arrived, more than one condition and one Event per member"
        );
    }
}

#[test]
fn a_gang_waiting_through_many_changes_is_retried_at_once_when_room_appears() {
    let mut e = engine();
    e.handle_node(node("small", 1000, 1), 0);
    let members: Vec<PodInfo> = (0..8).map(|i| member(&format!("m{i}"), "g", 8)).collect();
    for (i, m) in members.iter().enumerate() {
        e.handle_pod(m.clone(), i as i64 * 10);
        run(&mut e, i as i64 * 10);
    }
    // A minute of unrelated changes: nodes come and go, every member is retried.
    let mut now = 100;
    for i in 0..60 {
        now = 1_000 + i * 1_000;
        if i % 2 == 0 {
            e.handle_node(node("other", 500, 1), now);
        } else {
            e.handle_node_deleted("other", now);
        }
        assert!(binds(&run(&mut e, now)).is_empty());
    }
    // Room for the whole gang: it binds within the first backoff step, not after the
    // backoff its many fruitless tries would have earned.
    let freed = now + 500;
    e.handle_node(node("big", 8000, 8), freed);
    let mut bound_at = None;
    for t in (freed..freed + 20_000).step_by(50) {
        if binds(&run(&mut e, t)).len() == 8 {
            bound_at = Some(t);
            break;
        }
    }
    let waited = bound_at.expect("the gang binds") - freed;
    println!("gang bound {waited} ms after room appeared");
    assert!(
        waited <= 1_000,
        "the gang waited {waited} ms after room appeared"
    );
}

#[test]
fn a_pod_or_gang_no_cluster_could_hold_says_so() {
    let mut e = engine();
    e.handle_node(node("a", 4000, 16), 0);
    e.handle_node(node("b", 8000, 32), 0);
    let said = |actions: &[Action], name: &str| -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Unschedulable { pod, message } if &*pod.name == name => {
                    Some(message.clone())
                }
                _ => None,
            })
            .collect()
    };
    e.handle_pod(pod("huge", 1_000_000, 1), 0);
    let out = run(&mut e, 0);
    assert_eq!(
        said(&out, "huge"),
        [
            "0/2 nodes are available: 2 Insufficient cpu. No current node could fit it even empty: it requests cpu=1000, and the largest node (b) has cpu=8 allocatable."
        ]
    );
    // Too big only for the free room: no such sentence.
    e.handle_pod(pod("busy", 7000, 1), 0);
    e.handle_pod(pod("later", 7000, 1), 0);
    let out = run(&mut e, 0);
    let later = said(&out, "later");
    assert!(
        !later.is_empty() && later.iter().all(|m| !m.contains("even empty")),
        "{later:?}"
    );
    // A gang of 4 × 4 cpu on 12 cpus in all: it waits, holding and evicting nothing.
    for i in 0..4 {
        e.handle_pod(
            PodInfo {
                requests: Resources::cpu_mem(4000, GI),
                ..member(&format!("g{i}"), "wide", 4)
            },
            0,
        );
    }
    let out = run(&mut e, 0);
    assert_eq!(
        said(&out, "g0"),
        [
            "gang ns/wide: the current nodes could not hold it even empty: its 4 pods request cpu=16, and all 2 nodes together have cpu=12 allocatable"
        ]
    );
    assert!(
        !out.iter().any(|a| matches!(a, Action::Evict { .. })),
        "{out:?}"
    );
}

#[test]
fn decision_state_says_what_the_engine_would_do() {
    let mut e = engine();
    e.handle_node(node("a", 4000, 16), 0);
    e.handle_node(node("b", 4000, 16), 0);
    let busy = pod("busy", 3000, 1);
    e.handle_pod(bound(&busy, "a"), 0);
    // A gang of 2 × 4 cpu: one node is free, the other drains; capacity is held.
    for i in 0..2 {
        e.handle_pod(
            PodInfo {
                requests: Resources::cpu_mem(4000, GI),
                ..member(&format!("g{i}"), "train", 2)
            },
            0,
        );
    }
    run(&mut e, 0);
    let g = e.decision_state(&PodKey::new("ns", "g0"), 10);
    println!("{g:#?}");
    assert!(g.leading && g.known && g.gang.as_deref() == Some("ns/train"));
    assert!(g.now.starts_with("waits: gang ns/train:"), "{}", g.now);
    assert_eq!(
        g.told.as_deref().map(|t| t.starts_with("gang ns/train:")),
        Some(true)
    );
    assert_eq!(g.queue.as_ref().map(|q| q.state), Some("unschedulable"));
    // A 2-cpu pod would fit node b but for the capacity held there.
    e.handle_pod(pod("small", 2000, 1), 20);
    run(&mut e, 20);
    let s = e.decision_state(&PodKey::new("ns", "small"), 30);
    println!("{s:#?}");
    assert!(!s.reservations.is_empty(), "{s:#?}");
    assert!(s.now.contains("held for a waiting gang"), "{}", s.now);
    assert_eq!(
        s.now,
        format!("waits: {}", s.told.clone().unwrap_or_default())
    );
    // Over its queue's max.
    e.handle_queue(team_queue(500), 40);
    e.handle_pod(
        PodInfo {
            queue: Some("team".into()),
            ..pod("over", 1000, 1)
        },
        40,
    );
    run(&mut e, 40);
    let o = e.decision_state(&PodKey::new("ns", "over"), 50);
    assert!(o.now.contains("would exceed its max cpu"), "{}", o.now);
    assert_eq!(o.fair_share_queue.as_deref(), Some("team"));
    let b = e.decision_state(&PodKey::new("ns", "busy"), 50);
    assert_eq!(b.now, "bound to a");
    assert!(!e.decision_state(&PodKey::new("ns", "ghost"), 50).known);
}

#[test]
fn a_bound_pod_drover_cannot_read_keeps_its_node_full() {
    let mut e = engine();
    e.handle_node(node("a", 8000, 32), 0);
    e.handle_node(node("b", 2000, 8), 0);
    // Running on a with requests drover cannot read (cpu 1e16, say).
    e.handle_unreadable_pod(
        PodInfo {
            node_name: Some("a".into()),
            phase: Phase::Running,
            scheduler_name: "other".into(),
            ..pod("strange", 0, 0)
        },
        "cpu \"1e16\" is too large",
        0,
    );
    // A 4-cpu pod fits only a, by the numbers: it waits instead of joining it.
    e.handle_pod(pod("next", 4000, 1), 1);
    let out = run(&mut e, 1);
    assert!(binds(&out).is_empty(), "{out:?}");
    // A small pod goes to b.
    e.handle_pod(pod("small", 1000, 1), 2);
    assert_eq!(
        binds(&run(&mut e, 2)),
        [("small".to_string(), "b".to_string())]
    );
    // Gone: a takes the waiting pod.
    e.handle_pod_deleted(&PodKey::new("ns", "strange"), 3);
    assert_eq!(
        binds(&run(&mut e, 5_000)),
        [("next".to_string(), "a".to_string())]
    );
}

fn volcano_group(name: &str, min: i64, cpu: i64, queue: Option<&str>) -> crate::gang::PodGroupInfo {
    crate::gang::PodGroupInfo {
        key: GangKey::new("ns", name),
        dialect: crate::gang::Dialect::Volcano,
        queue: queue.map(Into::into),
        min_member: min,
        min_resources: Resources::cpu_mem(cpu, 0),
        ..Default::default()
    }
}

/// The last Volcano admission handed out per group, in this batch of actions.
fn admissions(actions: &[Action]) -> BTreeMap<String, bool> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::PodGroupStatus { gang, status }
                if status.dialect == crate::gang::Dialect::Volcano =>
            {
                Some((gang.name.to_string(), status.admitted))
            }
            _ => None,
        })
        .collect()
}

/// Two Volcano groups of 12 cpu on 16 free: the first is admitted (Inqueue) before any
/// member exists, the second is not — the first's room is spoken for, also while its
/// members are being placed — until the first is gone.
#[test]
fn volcano_groups_are_admitted_only_while_their_room_is_free() {
    let mut e = engine();
    for i in 0..4 {
        e.handle_node(node(&format!("n-{i}"), 4000, 16), 0);
    }
    e.handle_pod_group(volcano_group("a", 4, 12_000, None), 1);
    e.handle_pod_group(volcano_group("b", 4, 12_000, None), 1);
    let out = run(&mut e, 2);
    let first = admissions(&out);
    assert_eq!(first.get("a"), Some(&true), "{first:?}");
    assert_eq!(first.get("b"), Some(&false), "{first:?}");
    // a's members arrive one by one and bind: b is never admitted meanwhile.
    let members: Vec<PodInfo> = (0..4)
        .map(|i| PodInfo {
            gang: Some(Arc::new(GangRef {
                name: "a".into(),
                ..Default::default()
            })),
            ..pod(&format!("a-{i}"), 3000, 1)
        })
        .collect();
    for (i, m) in members.iter().enumerate() {
        e.handle_pod(m.clone(), 3 + i as i64);
        let out = run(&mut e, 3 + i as i64);
        assert_ne!(admissions(&out).get("b"), Some(&true), "after a-{i}");
        for (p, n) in binds(&out) {
            let m = members.iter().find(|m| *m.key.name == *p).unwrap();
            e.handle_bind_result(&m.key, BindResult::Bound, 10);
            e.handle_pod(bound(m, &n), 10);
            assert_ne!(admissions(&run(&mut e, 10)).get("b"), Some(&true));
        }
    }
    assert_eq!(e.gangs().counts(&GangKey::new("ns", "a")).scheduled, 4);
    for m in &members {
        e.handle_pod_deleted(&m.key, 20);
    }
    e.handle_pod_group_deleted(&GangKey::new("ns", "a"), 20);
    assert_eq!(admissions(&run(&mut e, 21)).get("b"), Some(&true));
}

/// A Volcano group's queue is its members' queue when they name none, and a group
/// over its queue's max is not admitted.
#[test]
fn a_volcano_groups_queue_is_its_members_queue() {
    let mut e = engine();
    e.handle_node(node("n-0", 16_000, 64), 0);
    e.handle_queue(team_queue(2000), 0);
    e.handle_pod_group(volcano_group("g", 1, 3000, Some("team")), 1);
    let m = PodInfo {
        gang: Some(Arc::new(GangRef {
            name: "g".into(),
            ..Default::default()
        })),
        ..pod("m", 1000, 1)
    };
    assert_eq!(&*e.queue_name(&m), "team");
    let mut named = m.clone();
    named.queue = Some("other".into());
    assert_eq!(&*e.queue_name(&named), "other", "a pod's own queue wins");
    assert_eq!(
        admissions(&run(&mut e, 2)).get("g"),
        Some(&false),
        "3 cpu over a 2-cpu max"
    );
}
