//! The progress display of the long-running commands: the progress bar on a terminal and
//! the plain `--verbose` line.

use std::time::Instant;

/// The progress bar of `run`, `autograd` and `sweep` on stderr: iteration, energy,
/// orthogonality, rate. Drawn only when stderr is a terminal, the command is neither
/// --quiet nor --verbose, and it has already lasted a second (short runs never show it).
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    shown: bool,
    last_msg: Option<Instant>,
}

/// How long a command runs before its progress bar appears.
const PROGRESS_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

impl Progress {
    pub fn new(enabled: bool) -> Self {
        use std::io::IsTerminal;
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::hidden(),
            );
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix}[{elapsed}] {bar:16.cyan/blue} {pos}/{len} it  {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Progress {
            bar,
            started: Instant::now(),
            shown: false,
            last_msg: None,
        }
    }

    /// Starts a run of at most `len` iterations, labelled `prefix`.
    pub fn start_run(&mut self, len: usize, prefix: String) {
        if let Some(bar) = &self.bar {
            bar.reset();
            bar.set_length(len as u64);
            bar.set_prefix(prefix);
            bar.set_message("");
            self.last_msg = None;
        }
    }

    /// A spinner with `msg` for work that reports no iterations (a batch of solves).
    pub fn start_spinner(&mut self, msg: String) {
        if let Some(bar) = &self.bar {
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .expect("a valid template"),
            );
            bar.set_message(msg);
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            self.shown = true;
        }
    }

    pub fn update(&mut self, i: &nsa_flow::IterInfo, orth_name: &str) {
        let Some(bar) = &self.bar else { return };
        if !self.shown {
            if self.started.elapsed() < PROGRESS_DELAY {
                bar.set_position(i.iter as u64);
                return;
            }
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            self.shown = true;
        }
        // formatting the message is cheap, but not free at thousands of iterations a second
        if self
            .last_msg
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(50))
        {
            bar.set_message(format!(
                "E {:.4e}  {orth_name} {:.2e}  {:.0} it/s",
                i.total_energy,
                i.orthogonality,
                bar.per_sec()
            ));
            self.last_msg = Some(Instant::now());
        }
        bar.set_position(i.iter as u64);
    }

    /// Runs `f` (which prints on stdout) with the bar out of the way.
    pub fn suspend(&self, f: impl FnOnce()) {
        match &self.bar {
            Some(bar) if self.shown => bar.suspend(f),
            _ => f(),
        }
    }

    /// Removes the bar (the final summary line takes its place).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The plain line `--verbose` prints per iteration of `run` and `sweep`.
pub fn verbose_flow_line(prefix: &str, i: &nsa_flow::IterInfo) {
    eprintln!(
        "{prefix}iter {:5}  total_energy {:.8e}  fidelity {:.6e}  orthogonality {:.6e}  lr {:.3e}  backtracks {}",
        i.iter, i.total_energy, i.fidelity, i.orthogonality, i.learning_rate, i.backtracks
    );
}
