//! The iteration loop allocates no p-sized storage: every p×k buffer is sized once per solve.
//! (The k×k work of the eigendecomposition may allocate O(k²) bytes; the reference's polar
//! retraction goes through nalgebra's SVD, which allocates its own p×k workspace, and is
//! excluded.)
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod common;

use common::randn;
use nsa_flow::{
    nsa_flow_with_callback, BackendChoice, Control, Mode, NonNeg, OptimizerKind, Params, Precision,
    Retraction,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Counting;

static ARMED: AtomicBool = AtomicBool::new(false);
static THRESHOLD: AtomicUsize = AtomicUsize::new(usize::MAX);
static LARGE: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            if layout.size() >= THRESHOLD.load(Ordering::Relaxed) {
                LARGE.fetch_add(1, Ordering::Relaxed);
            }
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            if new_size >= THRESHOLD.load(Ordering::Relaxed) {
                LARGE.fetch_add(1, Ordering::Relaxed);
            }
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn no_p_sized_allocation_inside_the_loop() {
    // p·k above linalg::PAR_MIN_ELEMS, so the parallel blocked kernels are measured too
    let (p, k) = (33000, 4);
    let y0 = randn(p, k, 1);
    let x0 = randn(p, k, 2);
    // gemm (under faer's products) keeps a packing buffer per thread, allocated on that
    // thread's first product: warm every rayon worker up with the parallel kernels' block
    // shape, so that which worker first receives a block inside the measured window (the
    // scheduler's choice) cannot count as an allocation of the loop.
    let block = randn(p / 4 + 1, k, 3);
    let block32 = block.map(|v| v as f32);
    rayon::broadcast(|_| {
        let s = nsa_flow::linalg::gram(&block, &block);
        std::hint::black_box(nsa_flow::linalg::mul_small(&block, &s));
        let s32 = nsa_flow::linalg::gram(&block32, &block32);
        std::hint::black_box(nsa_flow::linalg::mul_small(&block32, &s32));
    });
    let mut checked = 0;
    for mode in [Mode::Reference, Mode::Corrected] {
        for precision in [Precision::F64, Precision::F32] {
            for retraction in [Retraction::SoftPolar, Retraction::None] {
                for optimizer in [
                    OptimizerKind::Fast,
                    OptimizerKind::Sgdp,
                    OptimizerKind::Torch("adamp"),
                    OptimizerKind::Torch("lookahead"),
                ] {
                    for nonneg in [NonNeg::Hard, NonNeg::None] {
                        let params = Params::default()
                            .mode(mode)
                            .precision(precision)
                            .retraction(retraction)
                            .optimizer(optimizer)
                            .nonneg(nonneg)
                            .max_iter(25)
                            .tol(0.0)
                            // the CPU loop is what this measures (auto could take a GPU, and
                            // enumerating adapters starts driver threads that allocate)
                            .backend(BackendChoice::Cpu);
                        let elem = if precision == Precision::F64 { 8 } else { 4 };
                        // a single column of Y is p·elem bytes; k×k scratch is 16·elem
                        THRESHOLD.store(p * elem / 2, Ordering::SeqCst);
                        LARGE.store(0, Ordering::SeqCst);
                        LARGEST.store(0, Ordering::SeqCst);
                        let mut iters_seen = 0;
                        let res = nsa_flow_with_callback(&y0, Some(&x0), &params, |info| {
                            iters_seen = info.iter;
                            // measure iterations 2..=20: from the end of the first to the end of the 20th
                            ARMED.store(info.iter >= 1 && info.iter < 20, Ordering::SeqCst);
                            if info.iter >= 20 {
                                Control::Stop
                            } else {
                                Control::Continue
                            }
                        })
                        .unwrap();
                        ARMED.store(false, Ordering::SeqCst);
                        if iters_seen < 20 {
                            // the loop ended by itself (e.g. an f32 line search at its floor): the
                            // measurement window then ran on past the loop (into the download)
                            continue;
                        }
                        checked += 1;
                        assert_eq!(
                            LARGE.load(Ordering::SeqCst),
                            0,
                            "{params:?} allocated p-sized storage in the loop (largest {} bytes, stop {:?})",
                            LARGEST.load(Ordering::SeqCst),
                            res.stop_reason
                        );
                    }
                }
            }
        }
    }
    assert!(checked >= 20, "only {checked} configurations measured");
}
