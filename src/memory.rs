//! Sizes and the memory budget: every size that comes from a file header, a CSV or a flag
//! goes through [`elements`] (checked arithmetic, a typed error on overflow), and every large
//! allocation is checked against [`budget`] before it is made, so a request the machine
//! cannot hold is a typed error naming the size instead of an allocator abort.
//!
//! The budget is, in order: `NSA_FLOW_MEMORY_BUDGET` (bytes) when set; otherwise, on Linux,
//! the smaller of the memory the kernel reports available (`MemAvailable`) and the address
//! space the process may still map under `RLIMIT_AS` (`ulimit -v`); elsewhere, unlimited
//! (the allocations themselves still fail as errors where they use [`try_vec`]).

use crate::error::{NsaError, Result};

/// The environment variable that sets the memory budget in bytes.
pub const BUDGET_ENV: &str = "NSA_FLOW_MEMORY_BUDGET";

/// The checked product of `dims`: the number of elements of an array of that shape.
///
/// ```
/// assert_eq!(nsa_flow::memory::elements("X", &[3, 4, 5]).unwrap(), 60);
/// assert!(nsa_flow::memory::elements("X", &[1 << 40, 1 << 40]).is_err());
/// ```
pub fn elements(what: &str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| NsaError::SizeOverflow {
            what: what.to_string(),
            dims: dims.to_vec(),
        })
}

/// The checked size in bytes of `dims` elements of `elem_bytes` bytes each.
pub fn bytes_of(what: &str, dims: &[usize], elem_bytes: usize) -> Result<u64> {
    let n = elements(what, dims)?;
    n.checked_mul(elem_bytes)
        .map(|b| b as u64)
        .ok_or_else(|| NsaError::SizeOverflow {
            what: what.to_string(),
            dims: dims.iter().copied().chain([elem_bytes]).collect(),
        })
}

/// How many bytes may still be allocated, and where that number comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Bytes; `u64::MAX` when nothing limits it.
    pub bytes: u64,
    /// What set it: the environment variable, available memory, the address-space limit,
    /// or "unlimited".
    pub source: &'static str,
}

/// The current memory budget (read afresh on every call: it shrinks as memory is used).
pub fn budget() -> Result<Budget> {
    if let Some(v) = std::env::var_os(BUDGET_ENV) {
        let s = v.to_string_lossy();
        return s
            .trim()
            .parse::<u64>()
            .map(|bytes| Budget {
                bytes,
                source: BUDGET_ENV,
            })
            .map_err(|_| NsaError::InvalidParameter {
                name: BUDGET_ENV,
                reason: format!("{s:?} is not a number of bytes"),
            });
    }
    let mut b = Budget {
        bytes: u64::MAX,
        source: "unlimited",
    };
    if let Some(avail) = mem_available() {
        b = Budget {
            bytes: avail,
            source: "available memory (MemAvailable)",
        };
    }
    if let Some(room) = address_space_budget() {
        if room.bytes < b.bytes {
            b = room;
        }
    }
    Ok(b)
}

/// What `ulimit -v` leaves, when a limit is set.
fn address_space_budget() -> Option<Budget> {
    address_space_left().map(|bytes| Budget {
        bytes,
        source: "the address-space limit (ulimit -v)",
    })
}

/// Requests up to this size are not checked against `MemAvailable`: reading /proc/meminfo
/// costs about as much as a whole small solve, and a machine without 16 MiB to spare is
/// past what an up-front estimate can help with. They are still checked against
/// `NSA_FLOW_MEMORY_BUDGET` and the address-space limit, which are exact.
pub const UNCHECKED_AVAILABLE_BYTES: u64 = 16 << 20;

/// Refuses, with [`NsaError::MemoryBudget`], a request of `bytes` that the budget cannot
/// hold; `what` names it in the message. Requests up to [`UNCHECKED_AVAILABLE_BYTES`] skip
/// the `MemAvailable` part of the budget.
pub fn ensure_fits(what: &str, bytes: u64) -> Result<()> {
    let b = if bytes <= UNCHECKED_AVAILABLE_BYTES && std::env::var_os(BUDGET_ENV).is_none() {
        match address_space_budget() {
            Some(b) => b,
            None => return Ok(()),
        }
    } else {
        budget()?
    };
    if bytes > b.bytes {
        return Err(NsaError::MemoryBudget {
            what: what.to_string(),
            bytes,
            budget: b.bytes,
            origin: b.source,
        });
    }
    Ok(())
}

/// A vector of `n` copies of `value`, or [`NsaError::OutOfMemory`] when the allocation fails
/// (instead of the allocator's abort).
pub fn try_vec<T: Clone>(what: &str, n: usize, value: T) -> Result<Vec<T>> {
    let mut v = try_with_capacity(what, n)?;
    v.resize(n, value);
    Ok(v)
}

/// An empty vector with room for exactly `n` elements, or [`NsaError::OutOfMemory`].
pub fn try_with_capacity<T>(what: &str, n: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| NsaError::OutOfMemory {
        what: what.to_string(),
        bytes: (n as u64).saturating_mul(std::mem::size_of::<T>() as u64),
    })?;
    Ok(v)
}

/// Host bytes a solve of a p×k problem needs beyond its inputs: on the CPU about sixteen p×k
/// matrices of the working element (iterate, candidate, gradient, optimizer state, best, …)
/// and eight k×k ones, plus four f64 p×k copies (start, target, result, best) on the host; a
/// device solve keeps only the host copies. A conservative figure (measured peaks are ~¾ of
/// it), used to refuse hopeless requests up front.
pub fn solve_bytes(p: usize, k: usize, elem_bytes: usize, on_device: bool) -> Result<u64> {
    let pk = bytes_of("the p×k workspace", &[p, k], 1)?;
    let kk = bytes_of("the k×k workspace", &[k, k], 1)?;
    let per_pk = 4 * 8 + if on_device { 0 } else { 16 * elem_bytes as u64 };
    let per_kk = if on_device { 0 } else { 8 * elem_bytes as u64 };
    pk.checked_mul(per_pk)
        .and_then(|a| kk.checked_mul(per_kk).and_then(|b| a.checked_add(b)))
        .ok_or_else(|| NsaError::SizeOverflow {
            what: "the solver's workspace".into(),
            dims: vec![p, k],
        })
}

/// Checks that a solve of a p×k problem fits the budget ([`solve_bytes`]).
pub fn ensure_solve_fits(p: usize, k: usize, elem_bytes: usize, on_device: bool) -> Result<()> {
    let bytes = solve_bytes(p, k, elem_bytes, on_device)?;
    ensure_fits(&format!("a solve of a {p}×{k} problem"), bytes)
}

#[cfg(target_os = "linux")]
fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    kib_field(&s, "MemAvailable:")
}

#[cfg(not(target_os = "linux"))]
fn mem_available() -> Option<u64> {
    None
}

/// `RLIMIT_AS` minus the address space already mapped, when a limit is set. The limit comes
/// from `getrlimit` (a syscall; /proc/self/limits costs microseconds to format), and the
/// mapped size is read only when there is a limit.
#[cfg(target_os = "linux")]
fn address_space_left() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer and touches nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    let limit = lim.rlim_cur;
    // /proc/self/statm: "<VmSize pages> <resident pages> ..."
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().next()?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let used = pages.saturating_mul(u64::try_from(page).unwrap_or(4096));
    Some(limit.saturating_sub(used))
}

#[cfg(not(target_os = "linux"))]
fn address_space_left() -> Option<u64> {
    None
}

#[cfg(target_os = "linux")]
fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// The address space a GPU driver probe is given room for: `--backend auto` and `info` do
/// not enumerate adapters with less left under `ulimit -v` (Mesa's GL driver was seen to
/// crash below ~350 MB).
pub const GPU_PROBE_ROOM: u64 = 1 << 30;

/// `true` when the address space left under `ulimit -v` is below `bytes`: GPU drivers are
/// not probed then, since some (Mesa's GL) crash instead of failing when an allocation does.
pub fn address_space_tight(bytes: u64) -> bool {
    address_space_left().is_some_and(|room| room < bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_and_bytes_are_checked() {
        assert_eq!(elements("x", &[]).unwrap(), 1);
        assert_eq!(elements("x", &[0, usize::MAX]).unwrap(), 0);
        assert!(matches!(
            elements("x", &[usize::MAX, 2]),
            Err(NsaError::SizeOverflow { .. })
        ));
        assert!(matches!(
            bytes_of("x", &[usize::MAX / 4, 1], 8),
            Err(NsaError::SizeOverflow { .. })
        ));
        assert_eq!(bytes_of("x", &[3, 5], 8).unwrap(), 120);
        assert!(solve_bytes(usize::MAX, 2, 8, false).is_err());
    }

    #[test]
    fn try_vec_reports_an_impossible_allocation() {
        assert!(matches!(
            try_vec::<u64>("x", usize::MAX / 2, 0),
            Err(NsaError::OutOfMemory { .. })
        ));
        assert_eq!(try_vec("x", 3, 1.5f64).unwrap(), vec![1.5; 3]);
    }

    /// The getrlimit reading agrees with what /proc/self/limits says (both unlimited, or a
    /// finite room below the soft limit); the hostile CLI tests run the limited case under a
    /// real `ulimit -v`.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_address_space_room_agrees_with_proc_limits() {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let soft = limits
            .lines()
            .find(|l| l.starts_with("Max address space"))
            .and_then(|l| {
                l.trim_start_matches("Max address space")
                    .split_whitespace()
                    .next()
                    .map(str::to_string)
            })
            .unwrap();
        match soft.parse::<u64>() {
            Err(_) => assert_eq!(soft, "unlimited"),
            Ok(limit) => {
                let room = address_space_left().expect("a limit is set");
                assert!(room < limit, "{room} of {limit}");
            }
        }
        if soft == "unlimited" {
            assert_eq!(address_space_left(), None);
            // nothing limits a small request then, and no file is read for it
            assert!(
                ensure_fits("x", UNCHECKED_AVAILABLE_BYTES).is_ok()
                    || std::env::var_os(BUDGET_ENV).is_some()
            );
        }
    }
}
