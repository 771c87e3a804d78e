//! edgeinfer rollout: what a device decides from a signed rollout directive, with no IO
//! except the bad-version record.
//!
//! - [`directive`]: the `rollout/<name>.json` TUF target (stable, candidate, canary, split);
//! - [`bucket`]: which devices are in the canary and which routing keys take the candidate
//!   arm, under one stable keyed hash whose vectors are published in `docs/rollout.md`;
//! - [`judge`]: one window of per-arm statistics in, a verdict with its evidence out;
//! - [`record`]: the candidates this device found bad, persisted atomically;
//! - [`device`]: the state machine that puts them together;
//! - [`state`]: what a device reports of its rollout in its retained status;
//! - [`config`]: the daemon's `[rollout]` section.
//!
//! Architecture invariant: this crate knows no sockets, no engines, no TUF and no MQTT. The
//! registry agent hands it a verified directive; the daemon hands it window statistics.

pub mod bucket;
pub mod config;
pub mod device;
pub mod directive;
pub mod error;
pub mod fleet;
pub mod judge;
pub mod record;
pub mod state;

pub use bucket::{bucket, in_canary, Arm, BUCKETS, BUCKET_KEY};
pub use config::{ConfigProblem, RolloutConfig};
pub use device::{Decision, DeviceRollout, Rollback, Serve};
pub use directive::{Canary, Candidate, DirectiveError, InDeviceSplit, RolloutDirective};
pub use error::{Error, ErrorKind};
pub use judge::{ArmWindow, Baseline, Failure, Verdict, WindowStats};
pub use record::{BadRecord, BadVersion};
pub use state::RolloutState;
