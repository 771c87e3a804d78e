//! A real engine model behind sessions a test can make misbehave, for the rollout tests:
//! each run asks the [`Fault`] first (fail, or slow down), runs the real session, then lets
//! the fault change the outputs (wrong or fixed predictions). The model's info, backend and
//! load report stay the real ones.
#![allow(dead_code)]

use std::sync::Arc;

use edgeinfer_engine::{EngineError, Model, Outputs, Session, SessionFactory, TensorView};

/// What a faulty session does around the real run.
pub trait Fault: Send + Sync + 'static {
    /// Before the run: an error to answer instead of running (default: run).
    fn before(&self) -> Option<EngineError> {
        None
    }
    /// After a successful run: change the outputs (default: leave them).
    fn after(&self, _out: &mut Outputs) {}
}

struct Faulty {
    inner: Model,
    fault: Arc<dyn Fault>,
}

struct FaultySession {
    inner: Box<dyn Session>,
    fault: Arc<dyn Fault>,
}

impl SessionFactory for Faulty {
    fn new_session(&self) -> edgeinfer_engine::Result<Box<dyn Session>> {
        Ok(Box::new(FaultySession {
            inner: self.inner.new_session()?,
            fault: self.fault.clone(),
        }))
    }
}

impl Session for FaultySession {
    fn info(&self) -> &edgeinfer_engine::ModelInfo {
        self.inner.info()
    }

    fn backend(&self) -> edgeinfer_engine::Backend {
        self.inner.backend()
    }

    fn run(
        &mut self,
        inputs: &[TensorView<'_>],
        out: &mut Outputs,
    ) -> edgeinfer_engine::Result<()> {
        if let Some(e) = self.fault.before() {
            return Err(e);
        }
        self.inner.run(inputs, out)?;
        self.fault.after(out);
        Ok(())
    }
}

/// `inner` with its sessions wrapped in `fault`.
pub fn faulty(inner: Model, fault: Arc<dyn Fault>) -> Model {
    Model::new(
        inner.info.clone(),
        inner.report.clone(),
        Arc::new(Faulty { inner, fault }),
    )
}
