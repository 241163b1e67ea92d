//! The optimizer of the autograd loop: a registry optimizer whose state lives in backend
//! matrices (allocated once), or LBFGS re-evaluating the objective through a closure.

use crate::backend::Backend;
use crate::error::Result;
use crate::optim::{BackendLbfgs, Schedule};
use crate::params::OptimizerKind;

pub(crate) enum Stepper<M> {
    Rule {
        schedule: Schedule,
        state: Vec<M>,
        lr: f64,
    },
    Lbfgs {
        opt: Box<BackendLbfgs<M>>,
        shape: (usize, usize),
    },
}

/// Whether `kind` is an optimizer of the registry (`get_torch_optimizer`'s names; `fast` is
/// not one, as in the reference's autograd).
pub(crate) fn check_optimizer(kind: OptimizerKind) -> Result<()> {
    match kind {
        OptimizerKind::Fast => Err(crate::optim::unknown_optimizer("fast", &[])),
        OptimizerKind::Lbfgs => Ok(()),
        OptimizerKind::Sgdp | OptimizerKind::Torch(_) => {
            Schedule::new(kind.as_str(), 1.0).map(|_| ())
        }
    }
}

impl<M> Stepper<M> {
    pub(crate) fn new<B: Backend<Mat = M>>(
        be: &mut B,
        name: &str,
        lr: f64,
        p: usize,
        k: usize,
    ) -> Result<Self> {
        if name == "lbfgs" {
            return Ok(Stepper::Lbfgs {
                opt: Box::new(BackendLbfgs::new(lr)),
                shape: (p, k),
            });
        }
        let schedule = Schedule::new(name, lr)?;
        let state = (0..schedule.state_len())
            .map(|_| be.zeros(p, k))
            .collect::<Result<_>>()?;
        Ok(Stepper::Rule {
            schedule,
            state,
            lr,
        })
    }

    /// One `optimizer.step()` on `z` with gradient `g` (`scratch` receives the new parameter
    /// before it is copied back); LBFGS calls `closure(be, x, g)` at its trial points (the
    /// energy at `x`, its gradient written into `g`).
    pub(crate) fn step<B, F>(
        &mut self,
        be: &mut B,
        z: &mut M,
        g: &M,
        scratch: &mut M,
        closure: &mut F,
    ) -> Result<()>
    where
        B: Backend<Mat = M>,
        F: FnMut(&mut B, &M, &mut M) -> Result<f64>,
    {
        match self {
            Stepper::Rule {
                schedule,
                state,
                lr,
            } => {
                schedule.step(be, z, g, state, *lr, scratch);
                be.copy(scratch, z);
            }
            Stepper::Lbfgs { opt, shape } => {
                opt.step(be, z, shape.0, shape.1, |be: &mut B, x: &M, gg: &mut M| {
                    closure(be, x, gg)
                })?;
            }
        }
        Ok(())
    }
}
