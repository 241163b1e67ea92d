//! The typed error of every fallible operation in the crate.

use std::path::PathBuf;
use std::sync::Arc;

/// The underlying error of an [`NsaError::Gpu`] (wgpu's or the driver's), shared so that a
/// batch can hand one failure to every problem it stops.
pub type GpuErrorSource = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong, as a value: bad input is reported before any work is done
/// and nothing is written on failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NsaError {
    /// An input holds NaN or ±Inf.
    #[error("{what} contains a non-finite value ({value}) at row {row}, column {col}")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// Row of the first offending entry.
        row: usize,
        /// Column of the first offending entry.
        col: usize,
        /// The offending value.
        value: f64,
    },
    /// Two inputs that must have the same shape do not.
    #[error(
        "shape mismatch: {what} is {got_rows}×{got_cols}, expected {expected_rows}×{expected_cols}"
    )]
    ShapeMismatch {
        /// Which input.
        what: &'static str,
        /// Expected rows.
        expected_rows: usize,
        /// Expected columns.
        expected_cols: usize,
        /// Actual rows.
        got_rows: usize,
        /// Actual columns.
        got_cols: usize,
    },
    /// An input has no rows or no columns.
    #[error("{what} is empty ({rows}×{cols})")]
    Empty {
        /// Which input.
        what: &'static str,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
    },
    /// An input is identically zero where the method needs a non-zero matrix.
    #[error("{what} is all zeros: {why}")]
    ZeroMatrix {
        /// Which input.
        what: &'static str,
        /// Why a zero matrix cannot be used here.
        why: &'static str,
    },
    /// `w` outside [0, 1] (or not finite).
    #[error("w = {0:?} is outside [0, 1]")]
    InvalidWeight(f64),
    /// More columns than rows where the method needs `k ≤ p`.
    #[error("k = {k} columns > p = {p} rows: {why}")]
    KGreaterThanP {
        /// Rows.
        p: usize,
        /// Columns.
        k: usize,
        /// Why `k ≤ p` is needed here.
        why: &'static str,
    },
    /// A name (retraction, optimizer, mode, …) that is not known.
    #[error("unknown {kind} '{name}'; expected one of: {expected}")]
    UnknownName {
        /// What kind of name.
        kind: &'static str,
        /// The name given.
        name: String,
        /// The accepted names, comma separated.
        expected: String,
    },
    /// A parameter value outside its domain.
    #[error("invalid value for {name}: {reason}")]
    InvalidParameter {
        /// Parameter name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its content is not a usable matrix.
    #[error("malformed file {path}: {reason}")]
    MalformedFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A computation on finite input overflowed, underflowed or produced NaN before any
    /// result existed, or a result would hold NaN/Inf (nothing is returned or written then).
    #[error("the {what} is not finite: {cause}")]
    NonFiniteComputation {
        /// What could not be computed.
        what: &'static str,
        /// Why, as far as the input's magnitude tells.
        cause: NumericCause,
    },
    /// A size computed from a header, a file or a parameter overflows the address space.
    #[error("the size of {what} ({}) overflows the address space", fmt_dims(dims))]
    SizeOverflow {
        /// What was being sized.
        what: String,
        /// The dimensions whose product overflows.
        dims: Vec<usize>,
    },
    /// A request larger than the memory budget ([`crate::memory::budget`]), refused before
    /// any allocation.
    #[error(
        "{what} needs {bytes} bytes ({:.2} GiB) of memory, more than the {budget} bytes ({:.2} GiB) of {origin}; \
         use a smaller problem, free memory, or set NSA_FLOW_MEMORY_BUDGET",
        gib(*bytes), gib(*budget)
    )]
    MemoryBudget {
        /// What needed the memory.
        what: String,
        /// Bytes needed.
        bytes: u64,
        /// Bytes the budget allows.
        budget: u64,
        /// Where the budget came from.
        origin: &'static str,
    },
    /// An allocation failed (reported instead of the allocator's abort).
    #[error("out of memory: {what} needs {bytes} bytes")]
    OutOfMemory {
        /// What was being allocated.
        what: String,
        /// Its size.
        bytes: u64,
    },
    /// The requested backend cannot be used here.
    #[error("backend '{name}' is unavailable: {reason}")]
    BackendUnavailable {
        /// The backend asked for.
        name: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// The GPU reported an error (validation, out of memory, device lost) or a request exceeds
    /// the adapter's limits.
    ///
    /// `message` says what was being done (or which limit, and by how much); wgpu's own error,
    /// where there is one, is the [`std::error::Error::source`]. [`NsaError::full_message`]
    /// joins the two (what the command line prints and Python raises).
    #[error("GPU {kind}: {message}")]
    Gpu {
        /// What kind of failure.
        kind: GpuErrorKind,
        /// What was being done, or which limit and by how much.
        message: String,
        /// wgpu's or the driver's error, when one caused this.
        source: Option<GpuErrorSource>,
    },
    /// The layer's backward has no exact derivative for this combination of parameters (it
    /// is refused rather than approximated).
    #[error("the backward does not differentiate {combination}: {reason}")]
    NotDifferentiable {
        /// The parameter combination, e.g. `mode = reference`.
        combination: String,
        /// Why, and what is supported.
        reason: String,
    },
    /// The library broke one of its own invariants (a bug: please report it with the input
    /// that caused it), or the system refused something the library cannot run without (a
    /// thread). Never the result of bad input, which has its own variants.
    #[error("internal error: {what}")]
    Internal {
        /// What failed.
        what: String,
    },
    /// A problem of a batch failed (its index, from 0, and why).
    #[error("problem {index} of the batch: {source}")]
    InBatch {
        /// Which problem.
        index: usize,
        /// What went wrong with it.
        source: Box<NsaError>,
    },
}

impl NsaError {
    /// A GPU error with no underlying error (a limit, a missing feature).
    #[cfg(feature = "gpu")]
    pub(crate) fn gpu(kind: GpuErrorKind, message: impl Into<String>) -> Self {
        NsaError::Gpu {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A GPU error caused by wgpu's (or the driver's) error `source` while doing `context`.
    #[cfg(feature = "gpu")]
    pub(crate) fn gpu_caused(
        kind: GpuErrorKind,
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        NsaError::Gpu {
            kind,
            message: context.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// The message with every underlying cause that it does not already quote, joined by
    /// `": "`: what `nsa-flow` prints after `error:` and what the Python exceptions carry.
    pub fn full_message(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            let text = c.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            cause = c.source();
        }
        out
    }
}

/// Why a computation on finite input is not finite, judged from the input's magnitude.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NumericCause {
    /// Squares or products of the input's entries exceed the range of f64.
    Overflow,
    /// The input's entries are so small that their squares vanish (or are subnormal).
    Underflow,
    /// The input's entries, or their squares, exceed the range of f32.
    F32Range,
    /// No cause could be told from the input's magnitude.
    Unknown,
}

impl NumericCause {
    /// The likely cause for an input whose largest absolute entry is `amax`, computed in
    /// f32 when `f32` is set.
    pub fn of_magnitude(amax: f64, f32: bool) -> Self {
        // squares must stay within range: the reductions form sums of squares
        let (tiny, huge) = if f32 { (1e-18, 1e18) } else { (1e-150, 1e150) };
        if amax > 0.0 && amax < tiny {
            NumericCause::Underflow
        } else if f32 && amax >= huge {
            NumericCause::F32Range
        } else if amax >= 1e150 {
            NumericCause::Overflow
        } else {
            NumericCause::Unknown
        }
    }
}

impl std::fmt::Display for NumericCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NumericCause::Overflow => "the input's magnitude overflows f64 arithmetic; rescale it",
            NumericCause::Underflow => {
                "the input's entries are so small that their squares underflow; rescale it"
            }
            NumericCause::F32Range => {
                "the input's magnitude exceeds the range of f32 arithmetic; use f64 (--precision f64) or rescale it"
            }
            NumericCause::Unknown => "the arithmetic produced NaN or Inf",
        })
    }
}

fn fmt_dims(dims: &[usize]) -> String {
    dims.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(" × ")
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

/// The kinds of [`NsaError::Gpu`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GpuErrorKind {
    /// The device ran out of memory.
    OutOfMemory,
    /// The device was lost (driver reset, GPU removed).
    DeviceLost,
    /// A buffer or dispatch would exceed an adapter limit.
    Limit,
    /// wgpu rejected a command (a bug in nsa-flow if it ever happens).
    Validation,
    /// The adapter lacks a feature this request needs (f64 shaders).
    MissingFeature,
}

impl std::fmt::Display for GpuErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GpuErrorKind::OutOfMemory => "out of memory",
            GpuErrorKind::DeviceLost => "device lost",
            GpuErrorKind::Limit => "adapter limit exceeded",
            GpuErrorKind::Validation => "validation error",
            GpuErrorKind::MissingFeature => "missing feature",
        })
    }
}

/// Result alias for this crate.
pub type Result<T, E = NsaError> = std::result::Result<T, E>;

#[cfg(all(test, feature = "gpu"))]
mod gpu_source_tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn a_gpu_error_keeps_its_cause_and_the_full_message_quotes_it_once() {
        let cause = std::io::Error::other("driver says no");
        let e = NsaError::gpu_caused(
            GpuErrorKind::OutOfMemory,
            "allocating 64 bytes for Y",
            cause,
        );
        assert_eq!(
            e.to_string(),
            "GPU out of memory: allocating 64 bytes for Y"
        );
        assert_eq!(
            e.source().map(|s| s.to_string()).as_deref(),
            Some("driver says no")
        );
        assert_eq!(
            e.full_message(),
            "GPU out of memory: allocating 64 bytes for Y: driver says no"
        );
        // a batch quotes its problem's error: the chain adds only what is not quoted yet
        let b = NsaError::InBatch {
            index: 3,
            source: Box::new(e),
        };
        assert_eq!(
            b.full_message(),
            "problem 3 of the batch: GPU out of memory: allocating 64 bytes for Y: driver says no"
        );
        let plain = NsaError::gpu(GpuErrorKind::Limit, "too big");
        assert!(plain.source().is_none());
        assert_eq!(plain.full_message(), plain.to_string());
        let internal = NsaError::Internal {
            what: "the solve of problem 0 panicked".into(),
        };
        assert_eq!(
            internal.to_string(),
            "internal error: the solve of problem 0 panicked"
        );
    }
}
