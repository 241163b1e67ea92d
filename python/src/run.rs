//! Running a solve: without the GIL, in an optional rayon pool of `n_threads`, answering
//! Ctrl-C (`check_signals` every few milliseconds, a `KeyboardInterrupt` raised once the
//! solver has stopped), and with no panic crossing into Python.

use crate::errors::{invalid, no_panic, to_py};
use nsa_flow::{Control, IterInfo};
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the solver thread looks for a pending signal.
const POLL: Duration = Duration::from_millis(2);

/// Shared between the Python thread and the solver: the stop request and the pending error.
pub struct Guard {
    stop: AtomicBool,
    err: Mutex<Option<PyErr>>,
    last: Mutex<Instant>,
    /// The solver runs on the calling (Python) thread and checks signals itself.
    check_here: bool,
    verbose: bool,
}

impl Guard {
    fn new(check_here: bool, verbose: bool) -> Self {
        Guard {
            stop: AtomicBool::new(false),
            err: Mutex::new(None),
            last: Mutex::new(Instant::now()),
            check_here,
            verbose,
        }
    }

    /// Called by the solver's per-iteration callback: `true` means stop now.
    pub fn poll(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return true;
        }
        if self.check_here {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() >= POLL {
                *last = Instant::now();
                if let Err(e) = Python::attach(|py| py.check_signals()) {
                    self.fail(e);
                    return true;
                }
            }
        }
        false
    }

    /// The per-iteration callback of the flow solvers: the verbose line when asked, then
    /// stop on Ctrl-C (or an earlier failure).
    pub fn on_iteration(&self, i: &IterInfo) -> Control {
        self.say(|| format!("[NSA-Flow] {}", iter_line(i)));
        self.control()
    }

    /// [`Guard::poll`] as the solvers' answer.
    pub fn control(&self) -> Control {
        if self.poll() {
            Control::Stop
        } else {
            Control::Continue
        }
    }

    /// Prints one line on Python's `sys.stdout` when `verbose` was asked for; a failure to
    /// print stops the solve with that error.
    pub fn say(&self, line: impl FnOnce() -> String) {
        if !self.verbose {
            return;
        }
        let r = Python::attach(|py| -> PyResult<()> {
            let out = py.import("sys")?.getattr("stdout")?;
            out.call_method1("write", (format!("{}\n", line()),))?;
            Ok(())
        });
        if let Err(e) = r {
            self.fail(e);
        }
    }

    fn fail(&self, e: PyErr) {
        let mut slot = self.err.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
        self.stop.store(true, Ordering::Relaxed);
    }

    fn take(&self) -> Option<PyErr> {
        self.err.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The verbose line of one iteration, as the reference printed it (after its prefix).
pub fn iter_line(i: &IterInfo) -> String {
    format!(
        "iter {:4} | fid {:.6e} | orth {:.6e} | total {:.6e} | lr {:.3e}",
        i.iter, i.fidelity, i.orthogonality, i.total_energy, i.learning_rate
    )
}

/// Runs `f` without the GIL. `n_threads`: `None` runs on this thread in rayon's global pool
/// (for the parts that use rayon); `Some(n)` runs in a pool of `n` threads built for this
/// call, and this thread waits, checking signals.
pub fn solve<T: Send>(
    py: Python<'_>,
    n_threads: Option<usize>,
    verbose: bool,
    f: impl FnOnce(&Guard) -> nsa_flow::Result<T> + Send,
) -> PyResult<T> {
    let pool = match n_threads {
        None => None,
        Some(0) => return Err(invalid("n_threads", "must be at least 1 (or None)")),
        Some(n) => Some(
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| invalid("n_threads", e))?,
        ),
    };
    let guard = Guard::new(pool.is_none(), verbose);
    let out = py.detach(|| match &pool {
        None => no_panic(|| f(&guard).map_err(to_py)),
        Some(pool) => wait_checking(&guard, || {
            pool.install(|| no_panic(|| f(&guard).map_err(to_py)))
        }),
    });
    match guard.take() {
        Some(e) => Err(e),
        None => out,
    }
}

/// Runs `f` on a helper thread (in rayon's pool, or in a pool of `n_threads`) while this
/// thread checks signals: for work whose callbacks come from many threads (a batch), where
/// only this thread may look at signals. `f`'s callbacks stop on `guard.poll()`, which a
/// Ctrl-C seen here turns true; the interrupt is raised once `f` has returned.
pub fn solve_waiting<T: Send>(
    py: Python<'_>,
    n_threads: Option<usize>,
    verbose: bool,
    f: impl FnOnce(&Guard) -> nsa_flow::Result<T> + Send,
) -> PyResult<T> {
    if n_threads.is_some() {
        return solve(py, n_threads, verbose, f);
    }
    let guard = Guard::new(false, verbose);
    let out = py.detach(|| wait_checking(&guard, || no_panic(|| f(&guard).map_err(to_py))));
    match guard.take() {
        Some(e) => Err(e),
        None => out,
    }
}

/// Runs `f`, which cannot be stopped early (the layer's forward and backward), as
/// [`solve_waiting`] does: an interrupt is raised when `f` is done.
pub fn solve_unstoppable<T: Send>(
    py: Python<'_>,
    n_threads: Option<usize>,
    f: impl FnOnce() -> nsa_flow::Result<T> + Send,
) -> PyResult<T> {
    solve_waiting(py, n_threads, false, |_| f())
}

/// Runs `f` on a scoped thread; this thread polls signals until it finishes.
fn wait_checking<T: Send>(guard: &Guard, f: impl FnOnce() -> PyResult<T> + Send) -> PyResult<T> {
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        s.spawn(move || {
            let _ = tx.send(f());
        });
        loop {
            match rx.recv_timeout(POLL) {
                Ok(r) => return r,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(e) = Python::attach(|py| py.check_signals()) {
                        guard.fail(e);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(crate::errors::NsaFlowError::new_err(
                        "internal error: the solver thread ended without a result",
                    ))
                }
            }
        }
    })
}
