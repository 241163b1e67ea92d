//! The optimizer of the autograd loop, stepping a backend-resident parameter.

use crate::backend::Backend;
use crate::error::Result;
use crate::optim::{Lbfgs, TorchOptimizer};

pub(crate) enum Stepper {
    Torch(TorchOptimizer),
    Lbfgs(Lbfgs),
}

impl Stepper {
    pub(crate) fn check_name(name: &str) -> Result<()> {
        Stepper::host(name, 1.0).map(|_| ())
    }

    fn host(name: &str, lr: f64) -> Result<Stepper> {
        if name == "lbfgs" {
            Ok(Stepper::Lbfgs(Lbfgs::new(lr)))
        } else {
            Ok(Stepper::Torch(TorchOptimizer::new(name, lr)?))
        }
    }

    pub(crate) fn new<B: Backend>(
        _be: &mut B,
        name: &str,
        lr: f64,
        _p: usize,
        _k: usize,
    ) -> Result<Stepper> {
        Stepper::host(name, lr)
    }

    /// One `optimizer.step()` on `z` with gradient `g` (LBFGS re-evaluates through `closure`,
    /// which writes the gradient at its argument and returns the energy there).
    pub(crate) fn step<B: Backend, F>(
        &mut self,
        be: &mut B,
        z: &mut B::Mat,
        g: &B::Mat,
        _energy: f64,
        scratch: &mut B::Mat,
        closure: &mut F,
    ) -> Result<()>
    where
        F: FnMut(&mut B, &B::Mat, &mut B::Mat) -> Result<f64>,
    {
        match self {
            Stepper::Torch(opt) => {
                let mut zh = be.download(z)?;
                let gh = be.download(g)?;
                opt.step(&mut zh, &gh);
                let up = be.upload(&zh)?;
                be.copy(&up, z);
            }
            Stepper::Lbfgs(opt) => {
                let mut zh = be.download(z)?;
                let mut err = None;
                opt.step(&mut zh, |p| {
                    let r = (|| -> Result<(f64, nalgebra::DMatrix<f64>)> {
                        let up = be.upload(p)?;
                        let e = closure(be, &up, scratch)?;
                        Ok((e, be.download(scratch)?))
                    })();
                    match r {
                        Ok(v) => v,
                        Err(e) => {
                            err = Some(e);
                            (f64::NAN, p.map(|_| 0.0))
                        }
                    }
                });
                if let Some(e) = err {
                    return Err(e);
                }
                let up = be.upload(&zh)?;
                be.copy(&up, z);
            }
        }
        Ok(())
    }
}
