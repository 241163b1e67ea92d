//! Each optimizer's 8-step trajectory from a fixed start with fixed gradients against torch's
//! (../shared/golden/optimizers).

mod common;
use common::*;
use nsa_flow::optim::TorchOptimizer;

#[test]
fn trajectories_match_torch() {
    let Some(root) = golden_roots()
        .into_iter()
        .find(|r| r.join("optimizers/index.json").is_file())
    else {
        eprintln!("skipping: no optimizers goldens");
        return;
    };
    let dir = root.join("optimizers");
    let index = json(dir.join("index.json"));
    let lr = index["lr"].as_f64().unwrap();
    let p0 = read(dir.join("param0.npy"));
    let grads = nsa_flow::io::read_batch(dir.join("grads.npy")).unwrap();
    let mut done = Vec::new();
    for name in [
        "sgd",
        "sgd_nesterov",
        "lars",
        "adam",
        "adamw",
        "adamax",
        "adagrad",
        "rmsprop",
        "asgd",
        "nadam",
        "radam",
        "rprop",
        "yogi",
        "qhm",
        "qhadam",
        "adabound",
        "adamp",
        "pid",
        "lookahead",
        "sgdp",
    ] {
        let traj = nsa_flow::io::read_batch(dir.join(format!("{name}_traj.npy"))).unwrap();
        let mut opt = TorchOptimizer::new(name, lr).unwrap();
        let mut p = p0.clone();
        let mut worst: f64 = 0.0;
        for (t, g) in grads.iter().enumerate() {
            opt.step(&mut p, g);
            worst = worst.max(rel_fro(&p, &traj[t]));
        }
        eprintln!("{name}: worst relative difference over 8 steps {worst:.2e}");
        assert!(worst < 1e-12, "{name}: {worst:e}");
        done.push(name);
    }
    assert!(TorchOptimizer::new("padam", lr).is_err());
}

#[test]
fn lbfgs_matches_torch_on_its_quadratic() {
    let Some(root) = golden_roots()
        .into_iter()
        .find(|r| r.join("optimizers/index.json").is_file())
    else {
        eprintln!("skipping: no optimizers goldens");
        return;
    };
    let dir = root.join("optimizers");
    let lr = json(dir.join("index.json"))["lr"].as_f64().unwrap();
    let p0 = read(dir.join("param0.npy"));
    let target = read(dir.join("lbfgs_target.npy"));
    let traj = nsa_flow::io::read_batch(dir.join("lbfgs_traj.npy")).unwrap();
    let mut opt = nsa_flow::optim::Lbfgs::new(lr);
    let mut p = p0.clone();
    let mut worst: f64 = 0.0;
    for want in &traj {
        opt.step(&mut p, |x| {
            let d = x - &target;
            (0.5 * d.norm_squared(), d)
        });
        worst = worst.max(rel_fro(&p, want));
    }
    eprintln!("lbfgs: worst relative difference over 8 steps {worst:.2e}");
    assert!(worst < 1e-12, "{worst:e}");
}
