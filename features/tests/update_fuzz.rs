//! The MQTT feature-update payload parser and applier against many mutated payloads: never
//! a panic, every refusal typed, nothing half-written, and what is accepted is what is
//! stored. A deterministic loop (seeded xorshift), so a failure reproduces.

mod common;

use edgeinfer_features::mqtt::apply_message;
use edgeinfer_features::update::parse_payload;
use edgeinfer_features::{Assembler, ErrorKind};

const VALID: &str = r#"{"schema_version": 1, "rows": [
  {"entity": "c-1", "event_ts_ms": 1000, "values": {"age": 41, "score": 0.25, "vip": 1}},
  {"entity": "c-2", "event_ts_ms": 2000, "values": {"score": 0.75}}
]}"#;

fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// One mutation of `base`: flip, replace, insert or delete a byte, cut, or splice a token
/// that JSON and the schema care about.
fn mutate(base: &[u8], s: &mut u64) -> Vec<u8> {
    let mut v = base.to_vec();
    let tokens: [&[u8]; 10] = [
        b"NaN",
        b"1e999",
        b"-1",
        b"\"",
        b"{",
        b"]",
        b"null",
        b"4.5",
        b"\"bogus\"",
        b"99999999999",
    ];
    for _ in 0..(1 + next(s) % 3) {
        if v.is_empty() {
            break;
        }
        let at = (next(s) % v.len() as u64) as usize;
        match next(s) % 6 {
            0 => v[at] ^= 1 << (next(s) % 8),
            1 => v[at] = next(s) as u8,
            2 => v.insert(at, next(s) as u8),
            3 => {
                v.remove(at);
            }
            4 => v.truncate(at),
            _ => {
                let t = tokens[(next(s) % tokens.len() as u64) as usize];
                let end = (at + 1 + (next(s) % 4) as usize).min(v.len());
                v.splice(at..end, t.iter().copied());
            }
        }
    }
    v
}

#[test]
fn mutated_payloads_are_refused_whole_or_applied_exactly() {
    let (_d, store) = common::store();
    Assembler::new(&store, common::schema()).unwrap();
    assert_eq!(apply_message(&store, VALID.as_bytes()).unwrap(), 2);
    let (mut accepted, mut refused) = (0, 0);
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..5_000 {
        let p = mutate(VALID.as_bytes(), &mut s);
        let before = common::entities(&store);
        let parsed = parse_payload(&p);
        match apply_message(&store, &p) {
            Ok(_) => {
                accepted += 1;
                // What was accepted parsed, and every row is now stored no older than it.
                let updates = parsed.expect("applied, so it parses");
                for u in &updates {
                    let key = String::from_utf8(u.key.clone()).unwrap();
                    let row = common::row(&store, &key).expect("an applied row is stored");
                    assert!(row.event_ts_ms >= u.event_ts_ms);
                }
            }
            Err(e) => {
                refused += 1;
                assert!(
                    matches!(
                        e.kind(),
                        ErrorKind::Malformed
                            | ErrorKind::Schema
                            | ErrorKind::InvalidValue
                            | ErrorKind::Oversized
                    ),
                    "{:?}: {e} for {:?}",
                    e.kind(),
                    String::from_utf8_lossy(&p)
                );
                assert_eq!(
                    common::entities(&store),
                    before,
                    "a refused update wrote rows"
                );
            }
        }
    }
    // The mutations reach both sides; most break the JSON or the schema.
    assert!(
        accepted > 0 && refused > accepted,
        "{accepted} accepted, {refused} refused"
    );
    let bad = store
        .metrics()
        .mqtt_bad_payloads
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(bad, refused);
}
