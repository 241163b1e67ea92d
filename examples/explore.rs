use nsa_flow::*;
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let x = io::read_matrix(&path).unwrap();
    println!("{path}: {:?} defect {:.4e}", x.shape(), invariant_orthogonality_defect(&x));
    for w in [0.1, 0.25, 0.5, 0.75, 0.9] {
        let mut es = vec![];
        let r = nsa_flow_with_callback(&x, Some(&x), &Params { w, ..Params::default() }, |i| { es.push(i.total_energy); Control::Continue }).unwrap();
        let mono = es.windows(2).all(|p| p[1] <= p[0]);
        println!("w={w:.2} it={:4} stop={:?} E={:.6e} defect={:.4e} sparsity={:.3} cert={:.2e} fid={:.4e} mono={mono} lr0={:.3e} lrf={:.3e} evals={} bt={} retr={} t={:.3}s",
          r.iterations, r.stop_reason, r.best_total_energy.unwrap(), r.defect(), r.sparsity(), r.certificate.value,
          r.traces.last().map(|t| t.fidelity).unwrap_or(0.0), r.learning_rate_initial, r.learning_rate_final, r.energy_evaluations, r.backtracking_iterations, r.retracted_steps, r.seconds);
    }
}
