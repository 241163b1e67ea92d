//! `nsa-flow`: the command-line tool.
//!
//! Exit codes: 0 success, 1 bad input or failed computation (message on stderr, no output
//! file written) or, for `run --verify` and `autograd --verify`, CPU and GPU runs that
//! disagree, 2 command-line usage error (`nsa-flow --help` says the same).

mod cli;

use clap::{CommandFactory, Parser};
use cli::Command;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "nsa-flow",
    version,
    about = "NSA-Flow: non-negative, nearly orthogonal approximation of a p×k matrix",
    long_about = "NSA-Flow: non-negative, nearly orthogonal approximation of a p×k matrix.\n\n\
        Finds a non-negative Y close to a target X0 whose columns are nearly orthogonal; the \
        weight w in [0, 1] trades fidelity (w = 0) against orthogonality (w = 1). Runs on the \
        CPU or on a GPU (wgpu: Vulkan, Metal, DX12). `nsa-flow <command> --help` shows a \
        command's flags and examples.",
    after_help = cli::EXIT_CODES,
    after_long_help = concat!(
        "Examples:\n",
        "  nsa-flow run --y0 Y0.npy --x0 X0.npy --w 0.5 --out Y.npy --plot trace.svg\n",
        "  nsa-flow sweep --y0 Y0.npy --ws 0.1,0.5,0.9 --out-dir sweep/\n",
        "  nsa-flow autograd --y0 Y0.npy --w 0.5 --optimizer adam --out Y.npy\n",
        "  nsa-flow info\n\n",
        "Exit codes:\n",
        "  0  success\n",
        "  1  failure: bad input, a failed computation, or (run/autograd --verify) CPU and GPU runs that\n",
        "     disagree; the message is on stderr and no output file is written (--verify excepted)\n",
        "  2  usage error: an unknown or malformed flag or value, or conflicting flags"
    )
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    use clap::parser::ValueSource;
    use clap::FromArgMatches;
    let matches = Cli::command().get_matches();
    // `run --solver` needs to know which of --max-iter/--tol were given (their defaults are the
    // flow's, not the 3.5 solver's)
    let explicit = |name: &str| {
        matches
            .subcommand_matches("run")
            .is_some_and(|m| m.value_source(name) == Some(ValueSource::CommandLine))
    };
    let run_explicit = (explicit("max_iter"), explicit("tol"));
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let res = match cli.command {
        Command::Run(a) if a.solver.is_some() => cli::run::cmd_run_fit(*a, run_explicit),
        Command::Run(a) => cli::run::cmd_run(*a),
        Command::Fit(a) => cli::fit::cmd_fit(*a),
        Command::Sweep(a) => cli::sweep::cmd_sweep(*a),
        Command::Batch(a) => cli::batch::cmd_batch(*a),
        Command::Defect(a) => cli::defect::cmd_defect(a),
        Command::Retract(a) => cli::retract::cmd_retract(a).map(|()| ExitCode::SUCCESS),
        Command::Autograd(a) => cli::autograd::cmd_autograd(*a),
        Command::Bench(a) => cli::bench::cmd_bench(a),
        Command::Info { json } => cli::info::cmd_info(json),
        Command::Optimizers => {
            for name in nsa_flow::optimizers() {
                println!("{name}");
            }
            Ok(ExitCode::SUCCESS)
        }
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", e.full_message());
            ExitCode::from(1)
        }
    }
}
