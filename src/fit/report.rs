//! What every 3.5 result reports about its basis (`basis_report`, `part_sparsity`), and the
//! column quantile sparseness (`simlr_sparseness`).

use crate::fit::functionals::{effective_rank, stiefel_defect, Orth};
use nalgebra::DMatrix;

/// Every diagnostic of a basis under fixed definitions (3.5's `basis_report`).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct BasisReport {
    /// `D̃`.
    pub defect_d: f64,
    /// `Cg`.
    pub defect_cg: f64,
    /// `C`.
    pub defect_c: f64,
    /// `Coff`.
    pub defect_coff: f64,
    /// `D = ‖G − I/k‖²`.
    pub raw_defect: f64,
    /// `k/(kD + 1)`.
    pub effective_rank: f64,
    /// `max ‖y_i‖ / min ‖y_i‖` (∞ with a zero column).
    pub column_norm_ratio: f64,
    /// Share of entries at most 1e-8 of the peak magnitude.
    pub sparsity: f64,
    /// Largest column support.
    pub max_support: usize,
    /// Mean column support.
    pub mean_support: f64,
    /// Columns with empty support.
    pub n_dead_columns: usize,
    /// Mean components per active feature, minus one (0: a clean partition).
    pub support_overlap: f64,
}

/// [`BasisReport`] of `y`.
pub fn basis_report(y: &DMatrix<f64>) -> BasisReport {
    let (p, k) = y.shape();
    let norms: Vec<f64> = (0..k).map(|j| y.column(j).norm()).collect();
    let lo = norms.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = norms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let peak = y.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let thr = 1e-8 * peak;
    let used = |i: usize, j: usize| y[(i, j)].abs() > thr;
    let nnz: Vec<usize> = (0..k)
        .map(|j| (0..p).filter(|&i| used(i, j)).count())
        .collect();
    let per_feature: Vec<usize> = (0..p)
        .map(|i| (0..k).filter(|&j| used(i, j)).count())
        .collect();
    let live: Vec<usize> = per_feature.iter().cloned().filter(|&c| c > 0).collect();
    let total_used: usize = nnz.iter().sum();
    BasisReport {
        defect_d: Orth::D.value(y),
        defect_cg: Orth::Cg.value(y),
        defect_c: Orth::C.value(y),
        defect_coff: Orth::Coff.value(y),
        raw_defect: stiefel_defect(y),
        effective_rank: effective_rank(y),
        column_norm_ratio: if lo > 0.0 { hi / lo } else { f64::INFINITY },
        sparsity: if p * k > 0 {
            1.0 - total_used as f64 / (p * k) as f64
        } else {
            0.0
        },
        max_support: nnz.iter().cloned().max().unwrap_or(0),
        mean_support: if k > 0 {
            total_used as f64 / k as f64
        } else {
            0.0
        },
        n_dead_columns: nnz.iter().filter(|&&c| c == 0).count(),
        support_overlap: if live.is_empty() {
            0.0
        } else {
            live.iter().sum::<usize>() as f64 / live.len() as f64 - 1.0
        },
    }
}

/// Per-part support statistics of signed parts `W = [V⁺|V⁻]` (3.5's `part_sparsity`:
/// entries above 1e-10 count).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct PartStats {
    /// Entries used per part.
    pub nnz_per_part: Vec<usize>,
    /// Parts with no entry used.
    pub n_dead: usize,
    /// Largest part support.
    pub max_nnz: usize,
    /// Mean support of the live parts.
    pub mean_nnz: f64,
    /// `p/(2k)`, the support of a disjoint partition.
    pub disjoint_ideal: usize,
    /// Mean share of each part's mass in its `disjoint_ideal` largest entries.
    pub mass_in_ideal: f64,
}

/// [`PartStats`] of `w`.
pub fn part_sparsity(w: &DMatrix<f64>) -> PartStats {
    let (p, m) = w.shape();
    let nnz: Vec<usize> = (0..m)
        .map(|j| w.column(j).iter().filter(|v| v.abs() > 1e-10).count())
        .collect();
    let live: Vec<usize> = nnz.iter().cloned().filter(|&c| c > 0).collect();
    let kpart = (p / m.max(1)).max(1);
    let mut mass = 0.0;
    for j in 0..m {
        let mut a: Vec<f64> = w.column(j).iter().map(|v| v.abs()).collect();
        a.sort_by(|x, y| y.total_cmp(x));
        let top: f64 = a.iter().take(kpart).sum();
        let all: f64 = a.iter().sum();
        mass += top / all.max(1e-300);
    }
    PartStats {
        n_dead: nnz.iter().filter(|&&c| c == 0).count(),
        max_nnz: nnz.iter().cloned().max().unwrap_or(0),
        mean_nnz: if live.is_empty() {
            0.0
        } else {
            live.iter().sum::<usize>() as f64 / live.len() as f64
        },
        disjoint_ideal: kpart,
        mass_in_ideal: if m > 0 { mass / m as f64 } else { 0.0 },
        nnz_per_part: nnz,
    }
}

/// Column quantile soft thresholding (3.5's `simlr_sparseness(Y, q, nonneg, "soft",
/// only_if_denser=True)`): each column keeps at most `max(1, round(p(1 − q)))` entries,
/// shrunk by the order statistic at that rank; a column already that sparse is only cleaned
/// of dust below 1e-12 of its peak. With `nonneg`, each column's sign gauge is resolved and
/// the result clamped at zero first.
pub fn simlr_sparseness(
    y: &DMatrix<f64>,
    q: f64,
    nonneg: bool,
    only_if_denser: bool,
) -> DMatrix<f64> {
    let mut y = y.clone();
    if nonneg {
        crate::fit::eig::resolve_column_sign_gauge(&mut y);
        y.apply(|v| *v = v.max(0.0));
    }
    if q.is_nan() || q <= 0.0 || y.is_empty() {
        return y;
    }
    let q = q.min(0.999);
    let (p, k) = y.shape();
    if p <= 1 || k == 0 {
        return y;
    }
    let n_keep = ((p as f64 * (1.0 - q)).round() as usize).max(1);
    if n_keep >= p {
        return y;
    }
    let mut out = DMatrix::zeros(p, k);
    for j in 0..k {
        let col: Vec<f64> = y.column(j).iter().copied().collect();
        let mag: Vec<f64> = col.iter().map(|v| v.abs()).collect();
        let max_mag = mag.iter().cloned().fold(0.0, f64::max);
        if max_mag <= 0.0 {
            continue;
        }
        if only_if_denser {
            let nnz = mag.iter().filter(|&&m| m > 1e-12 * max_mag).count();
            if nnz <= n_keep {
                for i in 0..p {
                    if mag[i] > 1e-12 * max_mag {
                        out[(i, j)] = col[i];
                    }
                }
                continue;
            }
        }
        let mut order: Vec<usize> = (0..p).collect();
        order.sort_by(|&a, &b| mag[b].total_cmp(&mag[a]).then(a.cmp(&b)));
        let thresh = mag[order[n_keep]];
        let keep_top = |out: &mut DMatrix<f64>, shrunk: Option<&[f64]>| {
            for &i in &order[..n_keep] {
                out[(i, j)] = shrunk.map_or(col[i], |s| s[i]);
            }
        };
        if mag[order[0]] - thresh > 1e-12 {
            let shrunk: Vec<f64> = (0..p)
                .map(|i| {
                    col[i].signum()
                        * (mag[i] - thresh).max(0.0)
                        * if col[i] == 0.0 { 0.0 } else { 1.0 }
                })
                .collect();
            let alive = shrunk.iter().filter(|v| v.abs() > 0.0).count();
            let peak = shrunk.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            if peak <= 0.0 {
                keep_top(&mut out, None);
            } else if alive > n_keep {
                keep_top(&mut out, Some(&shrunk));
            } else {
                for i in 0..p {
                    out[(i, j)] = shrunk[i];
                }
            }
        } else {
            keep_top(&mut out, None);
        }
    }
    out
}
