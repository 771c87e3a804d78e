//! The rollout directive, TUF target `rollout/<name>.json`: which version is stable, which
//! (if any) is the candidate, which devices take it (the canary), how a canary device splits
//! its own traffic, and the lowest release counter a device may install.
//!
//! Parsing crosses a trust boundary only after TUF has verified the bytes, but it still
//! never panics and refuses anything it does not understand (`deny_unknown_fields`): a
//! field this build ignores could be one the operator relied on.

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};

/// Largest directive accepted: a few hundred bytes in practice.
pub const MAX_DIRECTIVE_BYTES: usize = 64 << 10;

/// Longest model name, version or salt.
const MAX_NAME: usize = 128;

/// `rollout/<name>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutDirective {
    /// The model this directive is about; must match the target path's `<name>`.
    pub model: String,
    /// The version every device not in the canary serves.
    pub stable: String,
    /// The version under trial, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Candidate>,
    /// Devices refuse to install a release whose counter is below this (replayed old
    /// releases); `0` = no floor.
    #[serde(default)]
    pub min_release_counter: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    pub version: String,
    pub canary: Canary,
    /// How a canary device splits its traffic; absent = every request takes the candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<InDeviceSplit>,
}

/// Which devices install the candidate: `bucket(salt, device_id) < percent × 100`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// Share of the fleet, `0 ..= 100`, in steps of 0.01.
    pub percent: f64,
    /// Draws the canary set; a new salt draws a new set (and is a new trial: see
    /// [`crate::record`]). Also salts the in-device split's routing-key hash.
    pub salt: String,
}

/// The candidate's share of one canary device's traffic, sticky by routing key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InDeviceSplit {
    /// `0 ..= 100`, in steps of 0.01.
    pub percent: f64,
}

/// Why a directive was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DirectiveError {
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} {value:?} is not a usable name: at most {MAX_NAME} bytes, no '/', no leading '@' or '.', no control characters")]
    BadName { field: &'static str, value: String },
    #[error("the candidate {0:?} is also the stable version")]
    CandidateIsStable(String),
    #[error("{field} = {value} is out of range: 0 ..= 100")]
    PercentOutOfRange { field: &'static str, value: f64 },
    #[error("{field} = {value} is finer than 0.01 (one bucket in 10000)")]
    PercentTooFine { field: &'static str, value: f64 },
    #[error("the directive is for model {found:?}, but was published as rollout/{expected}.json")]
    ModelMismatch { expected: String, found: String },
    #[error("the directive is {0} bytes; at most {MAX_DIRECTIVE_BYTES} are read")]
    TooLarge(usize),
}

/// A percent as basis points, checked: finite, `0 ..= 100`, at most two decimals.
pub fn percent_to_bp(field: &'static str, value: f64) -> Result<u32, DirectiveError> {
    if !value.is_finite() || !(0.0..=100.0).contains(&value) {
        return Err(DirectiveError::PercentOutOfRange { field, value });
    }
    let bp = (value * 100.0).round();
    if (value * 100.0 - bp).abs() > 1e-6 {
        return Err(DirectiveError::PercentTooFine { field, value });
    }
    Ok(bp as u32)
}

fn check_name(field: &'static str, value: &str) -> Result<(), DirectiveError> {
    if value.is_empty() {
        return Err(DirectiveError::Empty { field });
    }
    let bad = value.len() > MAX_NAME
        || value.contains('/')
        || value.starts_with('@')
        || value.starts_with('.')
        || value.chars().any(char::is_control);
    if bad {
        return Err(DirectiveError::BadName {
            field,
            value: value.chars().take(MAX_NAME + 8).collect(),
        });
    }
    Ok(())
}

// === impl RolloutDirective ===

impl RolloutDirective {
    /// A directive with no candidate: every device serves `stable`.
    pub fn stable_only(model: &str, stable: &str) -> RolloutDirective {
        RolloutDirective {
            model: model.into(),
            stable: stable.into(),
            candidate: None,
            min_release_counter: 0,
        }
    }

    /// Parses and validates the bytes of `rollout/<model>.json`.
    pub fn parse_for(model: &str, bytes: &[u8]) -> Result<RolloutDirective, Error> {
        let d = RolloutDirective::parse(bytes)?;
        if d.model != model {
            return Err(DirectiveError::ModelMismatch {
                expected: model.into(),
                found: d.model,
            }
            .into());
        }
        Ok(d)
    }

    /// Parses and validates a directive for whichever model it names.
    pub fn parse(bytes: &[u8]) -> Result<RolloutDirective, Error> {
        if bytes.len() > MAX_DIRECTIVE_BYTES {
            return Err(DirectiveError::TooLarge(bytes.len()).into());
        }
        let d: RolloutDirective = serde_json::from_slice(bytes)
            .map_err(|e| Error::new(ErrorKind::Parse, format!("rollout directive: {e}")))?;
        d.validate()?;
        Ok(d)
    }

    /// The bytes published as the TUF target (pretty JSON, newline-terminated).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a directive always serialises");
        out.push(b'\n');
        out
    }

    pub fn validate(&self) -> Result<(), DirectiveError> {
        check_name("model", &self.model)?;
        check_name("stable", &self.stable)?;
        if let Some(c) = &self.candidate {
            check_name("candidate.version", &c.version)?;
            if c.version == self.stable {
                return Err(DirectiveError::CandidateIsStable(c.version.clone()));
            }
            percent_to_bp("candidate.canary.percent", c.canary.percent)?;
            if c.canary.salt.is_empty() {
                return Err(DirectiveError::Empty {
                    field: "candidate.canary.salt",
                });
            }
            if c.canary.salt.len() > MAX_NAME || c.canary.salt.chars().any(char::is_control) {
                return Err(DirectiveError::BadName {
                    field: "candidate.canary.salt",
                    value: c.canary.salt.chars().take(MAX_NAME + 8).collect(),
                });
            }
            if let Some(s) = &c.split {
                percent_to_bp("candidate.split.percent", s.percent)?;
            }
        }
        Ok(())
    }
}

impl Candidate {
    /// The canary's share of the fleet in basis points (the directive is validated).
    pub fn canary_bp(&self) -> u32 {
        percent_to_bp("candidate.canary.percent", self.canary.percent).unwrap_or(0)
    }

    /// The candidate's share of a canary device's traffic in basis points; `None` = all.
    pub fn split_bp(&self) -> Option<u32> {
        self.split
            .as_ref()
            .map(|s| percent_to_bp("candidate.split.percent", s.percent).unwrap_or(0))
    }
}
