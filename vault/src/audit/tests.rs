#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
use super::*;
use crate::store::{Batch, MemoryStore};

fn append(store: &dyn Store, n: u64) {
    let mut head = Head::load(store).unwrap();
    let mut b = Batch::default();
    for i in 0..n {
        let mut ev = Draft {
            request_id: format!("r{i}"),
            caller: "app".into(),
            action: "detokenize",
            purpose: Some("notification".into()),
            subject: Some(format!("s{}", i % 3)),
            outcome: "released",
            ..Draft::default()
        }
        .into_event(head.seq + 1, 1000 + i);
        let (h, bytes) = chain(&head, &mut ev);
        b.put(Space::Audit, seq_key(h.seq), bytes);
        head = h;
    }
    b.put(Space::Meta, HEAD_KEY.to_vec(), head.encode());
    store.write(b).unwrap();
}

fn rewrite(store: &dyn Store, seq: u64, f: impl FnOnce(&mut AuditEvent)) {
    let bytes = store.get(Space::Audit, &seq_key(seq)).unwrap().unwrap();
    let mut ev: AuditEvent = serde_json::from_slice(&bytes).unwrap();
    f(&mut ev);
    let mut b = Batch::default();
    b.put(Space::Audit, seq_key(seq), serde_json::to_vec(&ev).unwrap());
    store.write(b).unwrap();
}

#[test]
fn intact_chain_verifies_across_appends() {
    let s = MemoryStore::new();
    assert_eq!(verify(&s).unwrap(), Verdict::Intact { events: 0 });
    append(&s, 5);
    append(&s, 2000);
    assert_eq!(verify(&s).unwrap(), Verdict::Intact { events: 2005 });
}

#[test]
fn a_changed_event_is_found() {
    let s = MemoryStore::new();
    append(&s, 10);
    rewrite(&s, 4, |e| e.outcome = "denied".into());
    assert_eq!(
        verify(&s).unwrap(),
        Verdict::Broken {
            seq: 4,
            why: "hash mismatch"
        }
    );
}

/// A field added to a stored event (a value planted in the log), or the
/// same event re-encoded, is not the event the hash covers.
#[test]
fn bytes_added_to_an_event_are_found() {
    for edit in [
        |b: &str| b.replacen('{', "{\"note\":\"350102199003071234\",", 1),
        |b: &str| b.replacen(',', ", ", 1),
    ] {
        let s = MemoryStore::new();
        append(&s, 10);
        let bytes = s.get(Space::Audit, &seq_key(3)).unwrap().unwrap();
        let edited = edit(std::str::from_utf8(&bytes).unwrap());
        let mut b = Batch::default();
        b.put(Space::Audit, seq_key(3), edited.into_bytes());
        s.write(b).unwrap();
        assert_eq!(
            verify(&s).unwrap(),
            Verdict::Broken {
                seq: 3,
                why: "stored bytes are not the event's own"
            }
        );
    }
}

#[test]
fn a_removed_event_is_found() {
    let s = MemoryStore::new();
    append(&s, 10);
    let mut b = Batch::default();
    b.delete(Space::Audit, seq_key(6));
    s.write(b).unwrap();
    assert_eq!(
        verify(&s).unwrap(),
        Verdict::Broken {
            seq: 6,
            why: "missing or inserted event"
        }
    );
}

#[test]
fn an_inserted_event_is_found() {
    let s = MemoryStore::new();
    append(&s, 10);
    // Shift events 6.. up by one and insert a forged, well-formed event 6.
    for seq in (6..=10).rev() {
        let bytes = s.get(Space::Audit, &seq_key(seq)).unwrap().unwrap();
        let mut b = Batch::default();
        b.put(Space::Audit, seq_key(seq + 1), bytes);
        s.write(b).unwrap();
    }
    rewrite(&s, 6, |e| e.caller = "mallory".into());
    let v = verify(&s).unwrap();
    assert!(matches!(v, Verdict::Broken { seq: 6, .. }), "{v:?}");
}

#[test]
fn reordered_events_are_found() {
    let s = MemoryStore::new();
    append(&s, 10);
    let a = s.get(Space::Audit, &seq_key(3)).unwrap().unwrap();
    let b_ = s.get(Space::Audit, &seq_key(7)).unwrap().unwrap();
    let mut b = Batch::default();
    b.put(Space::Audit, seq_key(3), b_);
    b.put(Space::Audit, seq_key(7), a);
    s.write(b).unwrap();
    assert_eq!(
        verify(&s).unwrap(),
        Verdict::Broken {
            seq: 3,
            why: "event moved"
        }
    );
}

#[test]
fn a_cut_tail_is_found() {
    let s = MemoryStore::new();
    append(&s, 10);
    let mut b = Batch::default();
    b.delete(Space::Audit, seq_key(10));
    s.write(b).unwrap();
    assert!(matches!(
        verify(&s).unwrap(),
        Verdict::Broken { seq: 10, .. }
    ));
}

#[test]
fn query_filters_by_subject_and_since() {
    let s = MemoryStore::new();
    append(&s, 30);
    let all = query(&s, None, 0, 100, Deadline::NEVER).unwrap();
    assert_eq!(all.len(), 30);
    let s1 = query(&s, Some("s1"), 0, 100, Deadline::NEVER).unwrap();
    assert_eq!(s1.len(), 10);
    assert!(s1.iter().all(|e| e.subject.as_deref() == Some("s1")));
    let later = query(&s, None, 25, 3, Deadline::NEVER).unwrap();
    assert_eq!(
        later.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![26, 27, 28]
    );
}

#[test]
fn newest_caps_after_its_filter_and_says_when_it_left_some_out() {
    let s = MemoryStore::new();
    // 3,000 events, a third each for s0, s1, s2.
    append(&s, 3_000);
    let of_s1 = |e: &AuditEvent| e.subject.as_deref() == Some("s1");
    let (got, next) = newest(&s, None, 5, Deadline::NEVER, of_s1).unwrap();
    // The newest five of s1, oldest first, and where to go on.
    assert_eq!(
        got.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![2987, 2990, 2993, 2996, 2999]
    );
    assert_eq!(next, Some(2987));
    let (got, _) = newest(&s, Some(2987), 2, Deadline::NEVER, of_s1).unwrap();
    assert_eq!(
        got.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![2981, 2984]
    );
    // At the cap it stops at once (the page after may be empty); the walk
    // that reaches the start says so.
    let (got, next) = newest(&s, None, 1_000, Deadline::NEVER, of_s1).unwrap();
    assert_eq!((got.len(), next), (1_000, Some(2)));
    assert_eq!(got.first().map(|e| e.seq), Some(2));
    assert_eq!(
        newest(&s, Some(2), 1_000, Deadline::NEVER, of_s1).unwrap(),
        (vec![], None)
    );
    let (got, next) = newest(&s, None, 2_000, Deadline::NEVER, of_s1).unwrap();
    assert_eq!((got.len(), next), (1_000, None));
    // Events of other kinds, however many, cannot hide the one asked for.
    let (got, _) = newest(&s, None, 1, Deadline::NEVER, |e| e.seq == 7).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        newest(&MemoryStore::new(), None, 5, Deadline::NEVER, |_| true)
            .unwrap()
            .0,
        vec![]
    );
    // A walk past its request's deadline stops: with nothing examined, an
    // error; else with what it has and where it stopped, so that walking
    // on from there finds every event once.
    let gone = Deadline::at(std::time::Instant::now());
    assert!(matches!(
        newest(&s, None, 5, gone, |_| false),
        Err(AuditError::TimedOut)
    ));
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        // A deadline that passes during the first page of each walk.
        let soon = Deadline::at(std::time::Instant::now() + std::time::Duration::from_millis(1));
        let slow = |e: &AuditEvent| {
            std::thread::sleep(std::time::Duration::from_micros(5));
            of_s1(e)
        };
        let (got, next) = newest(&s, before, 10_000, soon, slow).unwrap();
        seen.extend(got.into_iter().rev().map(|e| e.seq));
        match next {
            Some(n) => before = Some(n),
            None => break,
        }
    }
    seen.reverse();
    assert_eq!(seen, (0..1_000).map(|i| 2 + 3 * i).collect::<Vec<u64>>());
    assert!(matches!(
        query(&s, Some("nobody"), 0, 5, gone),
        Err(AuditError::TimedOut)
    ));
    assert!(matches!(
        for_each_in_window(&s, 0, u64::MAX, gone, |_| {}),
        Err(AuditError::TimedOut)
    ));
}

#[test]
fn windows_are_found_by_binary_search() {
    let s = MemoryStore::new();
    assert_eq!(first_at_or_after(&s, 0).unwrap(), 1);
    append(&s, 10_000); // times 1000..=10999, seq 1..=10000
    assert_eq!(first_at_or_after(&s, 0).unwrap(), 1);
    assert_eq!(first_at_or_after(&s, 1000).unwrap(), 1);
    assert_eq!(first_at_or_after(&s, 1001).unwrap(), 2);
    assert_eq!(first_at_or_after(&s, 5000).unwrap(), 4001);
    assert_eq!(first_at_or_after(&s, 99_999).unwrap(), 10_001);
    let mut seen = Vec::new();
    let read = for_each_in_window(&s, 5000, 5005, Deadline::NEVER, |e| {
        seen.push((e.seq, e.time_ms))
    })
    .unwrap();
    assert_eq!(read, 5);
    assert_eq!(
        seen,
        (4001..=4005).map(|q| (q, q + 999)).collect::<Vec<_>>()
    );
    assert_eq!(
        for_each_in_window(&s, 20_000, 30_000, Deadline::NEVER, |_| {}).unwrap(),
        0
    );
    assert_eq!(
        for_each_in_window(&s, 0, 20_000, Deadline::NEVER, |_| {}).unwrap(),
        10_000
    );
}

#[test]
fn a_row_at_the_last_sequence_number_ends_every_walk() {
    // Found by fuzzing: the readers stepped past u64::MAX by saturating
    // (query re-read the row forever) or by `+ 1` (overflow, or a wrap to a
    // rescan from 0 in release).
    let s = MemoryStore::new();
    append(&s, 3);
    let mut ev = Draft {
        caller: "app".into(),
        action: "detokenize",
        outcome: "released",
        ..Draft::default()
    }
    .into_event(u64::MAX, 2000);
    let (_, bytes) = chain(&Head::EMPTY, &mut ev);
    let mut b = Batch::default();
    b.put(Space::Audit, seq_key(u64::MAX), bytes);
    s.write(b).unwrap();
    assert_eq!(
        query(&s, Some("nobody"), 0, 10, Deadline::NEVER).unwrap(),
        vec![]
    );
    assert_eq!(query(&s, None, 0, 10, Deadline::NEVER).unwrap().len(), 4);
    assert_eq!(
        for_each_in_window(&s, 0, u64::MAX, Deadline::NEVER, |_| {}).unwrap(),
        4
    );
}

#[test]
fn the_sealed_bytes_are_the_event_serialized_with_its_hash() {
    let drafts = [
        Draft::default(),
        Draft {
            request_id: "r\"1\\\n".into(),
            caller: "app".into(),
            action: "detokenize",
            purpose: Some("notification".into()),
            subject: Some("用户-7".into()),
            class: Some("phone".into()),
            token: Some("tok".into()),
            outcome: "released",
            reference: Some("case \"9\"".into()),
            approval: Some("apr-1".into()),
            requester: Some("app".into()),
            reason: Some("consent_required".into()),
        },
    ];
    let mut prev = Head::EMPTY;
    for (i, d) in drafts.into_iter().enumerate() {
        let mut event = d.into_event(i as u64 + 1, 1_700_000_000_000);
        let (head, bytes) = chain(&prev, &mut event);
        assert_eq!(bytes, serde_json::to_vec(&event).unwrap());
        let back: AuditEvent = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, event);
        assert_eq!(hex::encode(head.hash), event.hash);
        prev = head;
    }
}

/// Known answers: the hashes of events as earlier versions wrote them.
/// A field added later is absent from them and from their hash (a chain
/// written before it must still verify), and present in the hash of an
/// event that has it.
#[test]
fn events_hash_as_they_always_have() {
    let draft = || Draft {
        request_id: "req-1".into(),
        caller: "officer".into(),
        action: "approval",
        purpose: Some("criminal_investigation".into()),
        subject: Some("acct-1".into()),
        outcome: "granted",
        reference: Some("case-1".into()),
        approval: Some("apr-1".into()),
        ..Draft::default()
    };
    let hash = |d: Draft| {
        let mut event = d.into_event(7, 1_700_000_000_000);
        let (head, bytes) = chain(&Head::EMPTY, &mut event);
        (hex::encode(head.hash), String::from_utf8(bytes).unwrap())
    };
    let (old, bytes) = hash(draft());
    assert!(!bytes.contains("requester"), "{bytes}");
    assert_eq!(
        old,
        "4d9c0245547b5f9397546f2515e5e839ed194c0aeacfaf1678fd7cfa20b5177a"
    );
    let (new, bytes) = hash(Draft {
        requester: Some("app".into()),
        ..draft()
    });
    assert!(bytes.contains(r#""requester":"app""#), "{bytes}");
    assert_ne!(new, old);
}

/// Rewrites the chain from `from` on as an intruder with write access to
/// the database would: the events changed, every hash after them
/// recomputed, the head moved along. Plain verification cannot tell.
fn forge_from(store: &dyn Store, from: u64, keep: u64) {
    let mut head = if from == 1 {
        Head::EMPTY
    } else {
        let bytes = store
            .get(Space::Audit, &seq_key(from - 1))
            .unwrap()
            .unwrap();
        let ev: AuditEvent = serde_json::from_slice(&bytes).unwrap();
        let mut h = [0u8; 32];
        hex::decode_to_slice(&ev.hash, &mut h).unwrap();
        Head {
            seq: from - 1,
            hash: h,
        }
    };
    let old = Head::load(store).unwrap();
    let mut b = Batch::default();
    for seq in from..=old.seq {
        if seq > keep {
            b.delete(Space::Audit, seq_key(seq));
            continue;
        }
        let bytes = store.get(Space::Audit, &seq_key(seq)).unwrap().unwrap();
        let mut ev: AuditEvent = serde_json::from_slice(&bytes).unwrap();
        ev.outcome = "denied".into();
        let (h, bytes) = chain(&head, &mut ev);
        b.put(Space::Audit, seq_key(seq), bytes);
        head = h;
    }
    b.put(Space::Meta, HEAD_KEY.to_vec(), head.encode());
    store.write(b).unwrap();
}

#[test]
fn anchors_recorded_outside_catch_a_rewritten_or_cut_chain() {
    let s = MemoryStore::new();
    append(&s, 6);
    let at4 = {
        let bytes = s.get(Space::Audit, &seq_key(4)).unwrap().unwrap();
        let ev: AuditEvent = serde_json::from_slice(&bytes).unwrap();
        parse_anchor(&format!("4:{}", ev.hash)).unwrap()
    };
    let at6 = Head::load(&s).unwrap();
    let anchors = [at4, at6];
    assert_eq!(
        verify_anchored(&s, &anchors).unwrap(),
        Verdict::Intact { events: 6 }
    );
    // Events 3 to 6 rewritten with their hashes and the head: the plain
    // walk passes, the anchors do not.
    forge_from(&s, 3, 6);
    assert_eq!(verify(&s).unwrap(), Verdict::Intact { events: 6 });
    assert_eq!(
        verify_anchored(&s, &anchors).unwrap(),
        Verdict::Broken {
            seq: 4,
            why: "differs from an anchor recorded outside the database"
        }
    );
    // Cut after event 5 (the head moved back): the anchor at 6 is past
    // the end.
    let t = MemoryStore::new();
    append(&t, 6);
    let at6 = Head::load(&t).unwrap();
    forge_from(&t, 6, 5);
    assert_eq!(verify(&t).unwrap(), Verdict::Intact { events: 5 });
    assert_eq!(
        verify_anchored(&t, &[at6]).unwrap(),
        Verdict::Broken {
            seq: 6,
            why: "the chain ends before an anchor recorded outside the database"
        }
    );
    // The anchor's written form.
    let text = format!("{}:{}", at6.seq, hex::encode(at6.hash));
    assert_eq!(parse_anchor(&text), Some(at6));
    for bad in [
        "",
        "6",
        "x:00",
        "0:00",
        "6:zz",
        &format!("6:{}", "0".repeat(62)),
    ] {
        assert_eq!(parse_anchor(bad), None, "{bad}");
    }
}

/// Puts one raw row into the audit space, as an intruder with write access
/// to the database could.
fn plant(store: &dyn Store, key: Vec<u8>) {
    let mut b = Batch::default();
    b.put(Space::Audit, key, b"{}".to_vec());
    store.write(b).unwrap();
}

#[test]
fn a_row_under_a_key_that_is_not_a_sequence_number_is_an_inserted_event() {
    // (events, planted key, the event named). 1023 events put the planted
    // row last in the verifier's first 1024-row page; 1024 put it first in
    // the second page, just past the key the first page ended on.
    let after = |seq: u64| {
        let mut k = seq_key(seq);
        k.push(0);
        k
    };
    let cases = [
        (10, after(10), 11),
        (10, after(4), 5),
        (10, seq_key(4)[..7].to_vec(), 1),
        (10, seq_key(0), 1),
        (10, Vec::new(), 1),
        (1023, after(1023), 1024),
        (1024, after(1024), 1025),
        (1024, after(1023), 1024),
    ];
    for (events, key, named) in cases {
        let s = MemoryStore::new();
        append(&s, events);
        assert_eq!(verify(&s).unwrap(), Verdict::Intact { events });
        plant(&s, key.clone());
        assert_eq!(
            verify(&s).unwrap(),
            Verdict::Broken {
                seq: named,
                why: "missing or inserted event"
            },
            "{events} events, key {key:?}"
        );
    }
}

#[test]
fn a_head_that_does_not_decode_breaks_the_chain() {
    for (events, head) in [(10, vec![0u8; 39]), (10, vec![0u8; 41]), (0, Vec::new())] {
        let s = MemoryStore::new();
        append(&s, events);
        let mut b = Batch::default();
        b.put(Space::Meta, HEAD_KEY.to_vec(), head);
        s.write(b).unwrap();
        assert_eq!(
            verify(&s).unwrap(),
            Verdict::Broken {
                seq: events + 1,
                why: "the stored head cannot be decoded"
            }
        );
    }
    // An event broken before the end is still the one named.
    let s = MemoryStore::new();
    append(&s, 10);
    rewrite(&s, 4, |e| e.outcome = "denied".into());
    let mut b = Batch::default();
    b.put(Space::Meta, HEAD_KEY.to_vec(), vec![1, 2, 3]);
    s.write(b).unwrap();
    assert_eq!(
        verify(&s).unwrap(),
        Verdict::Broken {
            seq: 4,
            why: "hash mismatch"
        }
    );
}
