//! Running a model for an HTTP request on an inference-pool thread: that thread's own engine
//! sessions (one per model version, made on first use and dropped when the version leaves
//! the table), input checks, and the per-version counters shared with the data path.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use edgeinfer_engine::{validate_inputs, DType, ErrorKind, Outputs, Session, TensorView};

use super::{ApiError, HttpState};
use crate::model_table::{ModelVersion, Outcome, Snapshot};

/// One session per model version, for one inference-pool thread.
#[derive(Default)]
pub struct SessionCache {
    generation: u64,
    /// Keyed by the version's address; the `Arc` kept beside it keeps that address valid.
    entries: HashMap<usize, Entry>,
}

struct Entry {
    version: Arc<ModelVersion>,
    session: Box<dyn Session>,
    outputs: Outputs,
}

impl SessionCache {
    /// Drops the sessions of versions that left the table.
    fn prune(&mut self, snap: &Snapshot) {
        if snap.generation == self.generation {
            return;
        }
        self.generation = snap.generation;
        let live: std::collections::HashSet<usize> =
            snap.versions().map(|v| Arc::as_ptr(v) as usize).collect();
        self.entries.retain(|k, _| live.contains(k));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// An input tensor owned by the request (decoded from JSON or copied out of the body).
#[derive(Debug)]
pub(crate) struct OwnedInput {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl OwnedInput {
    pub fn view(&self) -> TensorView<'_> {
        TensorView {
            dtype: self.dtype,
            shape: &self.shape,
            data: &self.data,
        }
    }
}

/// The version a request asks for, ready to run (503 while it warms up).
pub(crate) fn resolve(
    state: &HttpState,
    model: &str,
    version: Option<&str>,
    routing_key: &[u8],
) -> Result<Arc<ModelVersion>, ApiError> {
    let snap = state.table.snapshot();
    let v = snap.resolve(model, version, routing_key)?.clone();
    if !v.is_ready() {
        return Err(ApiError::unavailable(format!(
            "model {:?} version {:?} is not ready yet",
            v.name, v.version
        )));
    }
    Ok(v)
}

/// Runs `version` on `inputs` (in the model's declared order) and hands the outputs to
/// `render` while the session's buffers are borrowed. Counts the request in the version's
/// stats, like the data path does.
pub(crate) fn run<R>(
    cache: &mut SessionCache,
    state: &HttpState,
    version: &Arc<ModelVersion>,
    inputs: &[OwnedInput],
    start: Instant,
    render: impl FnOnce(&Outputs) -> Result<R, ApiError>,
) -> Result<R, ApiError> {
    let stats = &version.stats;
    let views: Vec<TensorView<'_>> = inputs.iter().map(OwnedInput::view).collect();
    if let Err(e) = validate_inputs(&version.model.info, &views, state.allow_non_finite) {
        stats.record(Outcome::BadInput);
        return Err(ApiError::bad_request(e.message));
    }
    let rows = views
        .first()
        .and_then(|v| v.shape.first().copied())
        .unwrap_or(1) as u64;

    cache.prune(&state.table.load());
    let key = Arc::as_ptr(version) as usize;
    let entry = match cache.entries.entry(key) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            let session = version.model.new_session().map_err(|err| {
                stats.record(Outcome::EngineError);
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("making a session: {}", err.message),
                )
            })?;
            e.insert(Entry {
                version: version.clone(),
                session,
                outputs: Outputs::for_model(&version.model.info),
            })
        }
    };
    debug_assert!(Arc::ptr_eq(&entry.version, version));

    let run_start = Instant::now();
    let ran = entry.session.run(&views, &mut entry.outputs);
    let compute = run_start.elapsed();
    if let Err(e) = ran {
        return Err(match e.kind {
            ErrorKind::BadInput => {
                stats.record(Outcome::BadInput);
                ApiError::bad_request(e.message)
            }
            _ => {
                stats.record(Outcome::EngineError);
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("engine error: {}", e.message),
                )
            }
        });
    }
    stats.compute.observe(compute);
    stats.batch_rows.observe(rows);
    let out = render(&entry.outputs);
    match &out {
        Ok(_) => {
            stats.record(Outcome::Ok);
            stats.rows.fetch_add(rows, Relaxed);
            stats.latency.observe(start.elapsed());
        }
        Err(_) => stats.record(Outcome::BadInput),
    }
    out
}

/// Little-endian element bytes of a float row matrix, as the model's input dtype.
pub(crate) fn encode_floats(values: impl Iterator<Item = f64>, dtype: DType, out: &mut Vec<u8>) {
    for v in values {
        match dtype {
            DType::F64 => out.extend_from_slice(&v.to_le_bytes()),
            _ => out.extend_from_slice(&(v as f32).to_le_bytes()),
        }
    }
}
