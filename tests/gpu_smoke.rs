mod common;
use common::*;
use nsa_flow::backend::{cpu::CpuBackend, Backend, GradientRule, Projection, Reduction};
use nsa_flow::*;

#[test]
fn smoke() {
    let Some(mut g) = gpu_backend("smoke", Precision::F64) else { return };
    let mut c = CpuBackend::<f64>::new();
    let (p, k) = (65, 3);
    let y = randn(p, k, 1);
    let x = randn(p, k, 2);
    let gy = g.upload(&y).unwrap();
    let gx = g.upload(&x).unwrap();
    let cy = c.upload(&y).unwrap();
    let cx = c.upload(&x).unwrap();
    let r1 = g.reduce(&[Reduction::EnergyTerms { y: &gy, target: &gx }, Reduction::NormSq(&gy), Reduction::AllFinite(&gy)]).unwrap();
    let r2 = c.reduce(&[Reduction::EnergyTerms { y: &cy, target: &cx }, Reduction::NormSq(&cy), Reduction::AllFinite(&cy)]).unwrap();
    println!("{r1:?}\n{r2:?}");
    for proj in [Projection::None, Projection::ReferenceOrthOnly, Projection::ReferenceFull, Projection::PolarFull] {
        let rule = GradientRule { fid: 0.7, orth: 0.3, simplified: None, projection: proj };
        let mut go = g.zeros(p, k).unwrap();
        g.gradient(&gy, &gx, &rule, &mut go);
        let mut co = c.zeros(p, k).unwrap();
        c.gradient(&cy, &cx, &rule, &mut co);
        let gd = g.download(&go).unwrap();
        println!("grad {proj:?} rel {:e}", rel_fro(&gd, &co));
    }
    for opts in [RetractOptions::reference(Retraction::SoftPolar, 0.6), RetractOptions::corrected(Retraction::SoftPolar, 0.6), RetractOptions::reference(Retraction::Polar, 1.0),
        RetractOptions { inv_method: InvSqrtMethod::NewtonSchulz, ..RetractOptions::reference(Retraction::SoftPolar, 0.6) },
        RetractOptions { inv_method: InvSqrtMethod::Diag, ..RetractOptions::reference(Retraction::SoftPolar, 0.6) }] {
        let mut go = g.zeros(p, k).unwrap();
        g.retract(&gy, &mut go, &opts);
        let mut co = c.zeros(p, k).unwrap();
        c.retract(&cy, &mut co, &opts);
        println!("retract {:?} {:?} rel {:e}", opts.style, opts.inv_method, rel_fro(&g.download(&go).unwrap(), &co));
    }
    let x0 = randn(200, 5, 3).abs();
    for mode in [Mode::Reference, Mode::Corrected] {
        for prec in [Precision::F64, Precision::F32] {
        let params = Params { mode, w: 0.5, max_iter: 100, precision: prec, ..Default::default() };
        let a = nsa_flow(&x0, Some(&x0), &Params { backend: BackendChoice::Cpu, ..params.clone() }).unwrap();
        let b = nsa_flow(&x0, Some(&x0), &Params { backend: BackendChoice::Gpu, ..params.clone() }).unwrap();
        println!("{mode:?} {prec:?} iters {} {} best {} {} rel {:e} readbacks {:?} stop {} {}", a.iterations, b.iterations, a.best_iteration, b.best_iteration, rel_fro(&a.y, &b.y), b.readbacks, a.stop_reason, b.stop_reason);
        }
    }
}
