//! The rollout directive: the documented example parses, every refusal is typed.

use edgeinfer_rollout::{DirectiveError, ErrorKind, RolloutDirective};

const EXAMPLE: &str = r#"{
  "model": "churn",
  "stable": "3",
  "candidate": {
    "version": "4",
    "canary": { "percent": 10.0, "salt": "churn-4-2026-12" },
    "split": { "percent": 50.0 }
  },
  "min_release_counter": 12
}"#;

#[test]
fn the_documented_example_parses_and_round_trips() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/rollout.md"))
        .unwrap();
    assert!(doc.contains(EXAMPLE), "docs/rollout.md shows this example");
    let d = RolloutDirective::parse_for("churn", EXAMPLE.as_bytes()).unwrap();
    let c = d.candidate.as_ref().unwrap();
    assert_eq!((c.canary_bp(), c.split_bp()), (1000, Some(5000)));
    assert_eq!(d.min_release_counter, 12);
    assert_eq!(RolloutDirective::parse(&d.to_bytes()).unwrap(), d);
}

fn invalid(json: &str) -> DirectiveError {
    let e = RolloutDirective::parse(json.as_bytes()).expect_err(json);
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    e.directive_error().cloned().unwrap()
}

fn with_candidate(c: &str) -> String {
    format!(r#"{{"model":"churn","stable":"3","candidate":{c}}}"#)
}

#[test]
fn each_rule_has_its_own_error() {
    assert!(matches!(
        invalid(r#"{"model":"","stable":"3"}"#),
        DirectiveError::Empty { field: "model" }
    ));
    assert!(matches!(
        invalid(r#"{"model":"churn","stable":"../3"}"#),
        DirectiveError::BadName {
            field: "stable",
            ..
        }
    ));
    assert!(matches!(
        invalid(r#"{"model":"churn","stable":"@1"}"#),
        DirectiveError::BadName { .. }
    ));
    assert_eq!(
        invalid(&with_candidate(
            r#"{"version":"3","canary":{"percent":1,"salt":"s"}}"#
        )),
        DirectiveError::CandidateIsStable("3".into())
    );
    assert!(matches!(
        invalid(&with_candidate(
            r#"{"version":"4","canary":{"percent":100.5,"salt":"s"}}"#
        )),
        DirectiveError::PercentOutOfRange { .. }
    ));
    assert!(matches!(
        invalid(&with_candidate(
            r#"{"version":"4","canary":{"percent":-1,"salt":"s"}}"#
        )),
        DirectiveError::PercentOutOfRange { .. }
    ));
    assert!(matches!(
        invalid(&with_candidate(
            r#"{"version":"4","canary":{"percent":1.005,"salt":"s"}}"#
        )),
        DirectiveError::PercentTooFine { .. }
    ));
    assert!(matches!(
        invalid(&with_candidate(
            r#"{"version":"4","canary":{"percent":1,"salt":""}}"#
        )),
        DirectiveError::Empty {
            field: "candidate.canary.salt"
        }
    ));
    assert!(matches!(
        invalid(&with_candidate(
            r#"{"version":"4","canary":{"percent":1,"salt":"s"},"split":{"percent":101}}"#
        )),
        DirectiveError::PercentOutOfRange {
            field: "candidate.split.percent",
            ..
        }
    ));
}

#[test]
fn unknown_fields_and_bad_json_are_parse_errors() {
    let e = RolloutDirective::parse(br#"{"model":"churn","stable":"3","stabel":"4"}"#).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Parse);
    assert!(e.to_string().contains("stabel"), "{e}");
    assert_eq!(
        RolloutDirective::parse(b"{").unwrap_err().kind(),
        ErrorKind::Parse
    );
    assert_eq!(
        RolloutDirective::parse(b"").unwrap_err().kind(),
        ErrorKind::Parse
    );
}

#[test]
fn a_directive_for_another_model_is_refused() {
    let e = RolloutDirective::parse_for("fraud", EXAMPLE.as_bytes()).unwrap_err();
    assert!(matches!(
        e.directive_error(),
        Some(DirectiveError::ModelMismatch { .. })
    ));
}

#[test]
fn an_oversized_directive_is_refused_before_parsing() {
    let big = vec![b' '; 65 << 10];
    let e = RolloutDirective::parse(&big).unwrap_err();
    assert!(matches!(
        e.directive_error(),
        Some(DirectiveError::TooLarge(_))
    ));
}
