//! The subcommands of `nsa-flow`, one module each, and the pieces they share: the flags
//! ([`args`]), the value parsers ([`parse`]), the output files and summaries ([`output`])
//! and the progress display ([`progress`]).

pub mod args;
pub mod autograd;
pub mod batch;
pub mod bench;
pub mod defect;
pub mod fit;
pub mod info;
pub mod output;
pub mod parse;
pub mod progress;
pub mod retract;
pub mod run;
pub mod sweep;

use clap::Subcommand;

/// The exit codes, shown at the end of every --help.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure: bad input, a failed computation, or (run/autograd --verify) CPU and GPU runs that
     disagree; the message is on stderr and no output file is written (--verify excepted)
  2  usage error: an unknown or malformed flag or value, or conflicting flags";

// The doc comments of the variants and of their flags are the help text: keep them verbatim.
#[derive(Subcommand)]
pub enum Command {
    /// Run NSA-Flow from Y0 towards X0 and write the best Y.
    ///
    /// On a terminal, a run that lasts over a second shows a progress bar on stderr
    /// (iteration, energy, orthogonality defect, iterations per second); --verbose prints one
    /// plain line per iteration instead, --quiet nothing. The final line goes to stdout.
    #[command(
        after_help = EXIT_CODES,
        after_long_help = concat!(
            "Examples:\n",
            "  nsa-flow run --y0 Y0.npy --x0 X0.npy --w 0.8 --out Y.npy --summary s.json\n",
            "  nsa-flow run --y0 Y0.npy --w 0.5 --out Y.csv --trace t.csv --plot trace.svg\n",
            "  nsa-flow run --y0 Y0.npy --x0 X0.npy --backend gpu --precision f32 --out Y.npy --plot trace.png\n",
            "  nsa-flow run --y0 Y0.npy --x0 X0.npy --mode reference --optimizer sgdp --lr 1e-2 --max-iter 50 --out Y.npy\n\n",
            "Exit codes: 0 success; 1 failure (message on stderr, nothing written) or, with --verify,\n",
            "CPU and GPU disagree; 2 usage error."
        )
    )]
    Run(Box<run::RunArgs>),
    /// Run the flow at several weights w on one input and tabulate and plot the results: the
    /// figure to choose w with.
    ///
    /// Each w runs exactly as `nsa-flow run --w <w>` with the same flags would (its Y is
    /// identical), and all of them together: in parallel across cores on the CPU, as one
    /// batch on a GPU (every w a problem of the same launches, one readback per round for all).
    /// With --verbose the weights run one after another, to print every iteration. Writes into
    /// --out-dir:
    ///
    /// - Y_w<w>.npy: the best Y of each w, in the run's precision; <w> is the shortest decimal
    ///   that reads back as the same number (Y_w0.5.npy, Y_w0.25.npy, Y_w1.npy).
    ///
    /// - sweep.csv: one row per w, in the order given, with the columns w, iterations,
    ///   best_total_energy, fidelity, defect, sparsity.
    ///
    /// - sweep.svg: sparsity and fidelity (left axis) and defect (right axis, log scale)
    ///   against w.
    ///
    /// The columns: iterations run; best_total_energy, the energy of Y in the mode's own
    /// scaling (nan when a reference run accepted no step); fidelity, the relative fidelity
    /// error ‖Y − X‖_F / ‖X‖_F against the target X the flow fitted (X0 after the
    /// non-negativity projection, or Y0's non-negative part without --x0), so 0 is a perfect
    /// fit; defect, the invariant orthogonality defect of Y (0 = orthogonal columns); sparsity,
    /// the fraction of entries of Y that are exactly 0.
    ///
    /// Nothing is written unless every w succeeds.
    #[command(
        after_help = EXIT_CODES,
        after_long_help = concat!(
            "Examples:\n",
            "  nsa-flow sweep --y0 Y0.npy --x0 X0.npy --ws 0.1,0.5,0.9 --out-dir sweep/\n",
            "  nsa-flow sweep --y0 loadings.npy --ws 0.05,0.25,0.5,0.75,0.95 --backend gpu --out-dir golub-sweep/\n\n",
            "Exit codes: 0 success; 1 failure (message on stderr, nothing written); 2 usage error\n",
            "(including a bad --ws: empty, not a number, outside [0, 1], or repeated)."
        )
    )]
    Sweep(Box<sweep::SweepArgs>),
    /// Solve B problems of the same shape together (3-D .npy [B, p, k] in and out), each with
    /// its own start, target and weight; on the CPU in parallel across cores, each result
    /// bit-identical to `nsa-flow run` on that problem.
    #[command(
        after_help = EXIT_CODES,
        after_long_help = concat!(
            "Examples:\n",
            "  nsa-flow batch --y0 Y0s.npy --x0 X0s.npy --ws 0.5 --out Ys.npy --summary s.json\n",
            "  nsa-flow batch --y0 Y0s.npy --ws 0.1,0.5,0.9 --out Ys.npy     # one w per problem\n\n",
            "Exit codes: 0 success; 1 failure (message on stderr, nothing written); 2 usage error\n"
        )
    )]
    Batch(Box<batch::BatchArgs>),
    /// Print the invariant orthogonality defect of a matrix.
    #[command(
        after_help = EXIT_CODES,
        after_long_help = concat!(
            "Examples:\n",
            "  nsa-flow defect Y.npy\n",
            "  nsa-flow defect Y.npy --backend gpu --precision f32\n\n",
            "Exit codes: 0 success; 1 failure (message on stderr); 2 usage error."
        )
    )]
    Defect(defect::DefectArgs),
    /// Time the flow on random data: seconds per iteration on the CPU or a GPU, against the
    /// memory-bandwidth bound.
    ///
    /// A perfect iteration reads Y and X0 and writes Y once: 3·p·k·(4 or 8) bytes. The bound is
    /// that traffic at the bandwidth a plain copy achieves on the same device (a copy kernel of
    /// min(256 MiB, max_storage_buffer_binding_size) on a GPU; a parallel copy of a 256 MiB
    /// buffer on the host), and the ratio measured/bound says how far an iteration is from it.
    #[command(
        after_help = EXIT_CODES,
        after_long_help = concat!(
            "Examples:\n",
            "  nsa-flow bench --p 100000 --k 32 --backend gpu --precision f32 --iters 20\n",
            "  nsa-flow bench --p 5000 --k 20 --mode corrected --json\n\n",
            "Exit codes: 0 success; 1 failure (message on stderr); 2 usage error."
        )
    )]
    Bench(bench::BenchArgs),
    /// List the GPU adapters (best first), their limits and features, and which one
    /// `--backend auto` and `--backend gpu` would use.
    ///
    /// Always exits 0: it is informational, also when there is no adapter.
    #[command(after_long_help = concat!(
        "Examples:\n",
        "  nsa-flow info\n",
        "  nsa-flow info --json\n",
        "  NSA_FLOW_ADAPTER=llvmpipe nsa-flow info\n\n",
        "Exit codes: 0 always (2 for a usage error)."
    ))]
    Info {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Differentiable NSA-Flow (nsa_flow_autograd): minimise E(nonneg(R_w(Z))) over Z with an
    /// optimizer, the gradient by the exact backward through the retraction.
    ///
    /// Progress, --verbose and --quiet behave as for `run`.
    #[command(
        after_help = EXIT_CODES,
        after_long_help = concat!(
            "Examples:\n",
            "  nsa-flow autograd --y0 Y0.npy --x0 X0.npy --w 0.5 --out Y.npy\n",
            "  nsa-flow autograd --y0 Y0.npy --x0 X0.npy --w 0.5 --optimizer adam --lr 1e-2 \\\n",
            "      --fidelity-type basic --orth-type scale_invariant --out Y.npy --trace t.csv --plot t.svg\n",
            "  nsa-flow autograd --y0 Y0.npy --w 0.9 --lr-strategy armijo --backend gpu --out Y.npy\n\n",
            "Exit codes: 0 success; 1 failure (message on stderr, nothing written) or, with --verify,\n",
            "CPU and GPU disagree; 2 usage error."
        )
    )]
    Autograd(Box<autograd::AutogradArgs>),
    /// Apply the retraction (nsa_flow_retract_auto) once.
    #[command(
        after_help = EXIT_CODES,
        after_long_help = concat!(
            "Examples:\n",
            "  nsa-flow retract Y.npy --w 0.5 --out R.npy\n",
            "  nsa-flow retract Y.npy --w 0.5 --inv-sqrt ns --ns-iter 10 --out R.npy\n",
            "  nsa-flow retract Y.npy --retraction polar --mode corrected --backend gpu --out R.csv\n\n",
            "Exit codes: 0 success; 1 failure (message on stderr, nothing written); 2 usage error."
        )
    )]
    Retract(retract::RetractArgs),
    /// Print the optimizer registry (the reference's get_torch_optimizer names), one name per
    /// line.
    ///
    /// Every name but padam (which the reference cannot construct) is accepted by
    /// `--optimizer`, as is "fast", the default plain gradient step of `run`.
    #[command(after_long_help = concat!(
        "Examples:\n",
        "  nsa-flow optimizers\n",
        "  for o in $(nsa-flow optimizers | grep -v padam); do\n",
        "      nsa-flow run --y0 Y0.npy --optimizer \"$o\" --out \"Y_$o.npy\" --quiet; done\n\n",
        "Exit codes: 0 always (2 for a usage error)."
    ))]
    Optimizers,
    /// Fit with the solvers of nsa_flow 3.5: a calibration-free energy
    /// (1 − w)·fidelity + w·orthogonality minimised over V ≥ 0 by projected L-BFGS-B (or SPG)
    /// until the scale-invariant certificate ‖P(V − ‖V‖²∇E) − V‖/‖V‖ ≤ --tol.
    ///
    /// Modes: data (a non-negative basis V reconstructing X: ‖X − XVVᵀ‖²/‖X‖², matrix-free
    /// when p > n), signed (V = V⁺ − V⁻ with near-disjoint non-negative parts), anchored (V
    /// close to a target X0, entrywise or, for a signed target, sign-blind through
    /// range(X0)). Runs on the CPU in f64. The final line goes to stdout; --summary holds
    /// certificate, stop_reason, n_grad and the basis_report.
    #[command(
        after_help = EXIT_CODES,
        after_long_help = concat!(
            "Examples:\n",
            "  nsa-flow fit --data X.npy --k 5 --w 0.5 --out V.npy --summary s.json\n",
            "  nsa-flow fit --data Xc.npy --k 5 --mode signed --consolidate --out V.npy --parts W.npy\n",
            "  nsa-flow fit --data X.npy --k 5 --orth Cg --sparseness 0.8 --init relax --out V.npy\n",
            "  nsa-flow fit --target loadings.npy --w 0.5 --out Y.npy\n\n",
            "Exit codes: 0 success (whatever the stop reason: see the summary's certificate); 1 failure\n",
            "(message on stderr, nothing written); 2 usage error."
        )
    )]
    Fit(Box<fit::FitArgs>),
}

/// A mebibyte, for the sizes `bench` and `info` print.
pub const MIB: usize = 1 << 20;
