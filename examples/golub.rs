//! NSA-Flow on real data: the Golub et al. (1999) leukaemia training set (multtest
//! preprocessing, 3051 genes × 38 bone-marrow samples, 27 ALL / 11 AML; see data/README.md).
//!
//! What it does:
//! 1. PCA, k = 3, computed here with nalgebra: the data matrix is samples × genes
//!    (`X = Eᵀ`, 38 × 3051, the transpose of the stored genes × samples matrix `E`); each
//!    **gene is centred across the 38 samples** (column-centring of `X`, i.e. each row of `E`
//!    minus its mean; no scaling, and the samples are already standardised by multtest). The
//!    loadings are the top 3 right singular vectors of the centred `X` (genes × 3, orthonormal).
//!    They are cross-checked, up to sign, against the numpy/LAPACK loadings shipped in
//!    data/golub_multtest_pca_loadings_k3.npy.
//! 2. NSA-Flow (corrected mode, default settings but the CPU backend pinned so the table is
//!    the same on every machine) at w = 0.25, 0.5, 0.75, 0.9, started from the loadings.
//! 3. For plain PCA and for each w: sparsity, orthogonality defect, the genes with the
//!    largest weight per component, and how well the component scores separate ALL from AML
//!    (leave-one-out nearest-centroid accuracy), then one summary table.
//!
//! Run: `cargo run --release --example golub` (reads ./data, about a second).

use nalgebra::DMatrix;
use nsa_flow::{invariant_orthogonality_defect, nsa_flow, sparsity, BackendChoice, Params};
use std::path::{Path, PathBuf};
use std::time::Instant;

const K: usize = 3;
const WS: [f64; 4] = [0.25, 0.5, 0.75, 0.9];
const TOP_GENES: usize = 4;

pub(crate) fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// Splits one CSV line on commas outside double quotes (`""` inside quotes is a quote).
pub(crate) fn csv_fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                out.last_mut().unwrap().push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            _ => out.last_mut().unwrap().push(c),
        }
    }
    out
}

/// Reads a CSV with a header line and returns the named columns of every row.
fn read_csv_columns(path: &Path, names: &[&str]) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut lines = text.lines();
    let header = csv_fields(lines.next().expect("a header line"));
    let idx: Vec<usize> = names
        .iter()
        .map(|n| {
            header
                .iter()
                .position(|h| h == n)
                .unwrap_or_else(|| panic!("{}: no column {n}", path.display()))
        })
        .collect();
    lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f = csv_fields(l);
            idx.iter().map(|&i| f[i].clone()).collect()
        })
        .collect()
}

/// PCA loadings (genes × k) of the samples × genes matrix `x`, gene-centred; also returns
/// the singular values and the explained-variance ratios. Each column's sign is fixed like
/// the numpy reference: its largest-|.| entry is positive.
pub(crate) fn pca_loadings(x: &DMatrix<f64>, k: usize) -> (DMatrix<f64>, Vec<f64>, Vec<f64>) {
    let means = x.row_mean(); // 1 × genes: each gene's mean over the samples
    let mut xc = x.clone();
    for mut row in xc.row_iter_mut() {
        row -= &means;
    }
    // SVD of the tall genes × samples matrix Xcᵀ: its left singular vectors are the loadings.
    let svd = xc.transpose().svd(true, false);
    let u = svd.u.expect("U was requested");
    let mut order: Vec<usize> = (0..svd.singular_values.len()).collect();
    order.sort_by(|&a, &b| svd.singular_values[b].total_cmp(&svd.singular_values[a]));
    let total: f64 = svd.singular_values.iter().map(|s| s * s).sum();
    let mut v = DMatrix::zeros(u.nrows(), k);
    let mut sv = Vec::new();
    for (j, &o) in order.iter().take(k).enumerate() {
        let mut col = u.column(o).into_owned();
        let imax = col.iamax();
        if col[imax] < 0.0 {
            col = -col;
        }
        v.set_column(j, &col);
        sv.push(svd.singular_values[o]);
    }
    let evr = sv.iter().map(|s| s * s / total).collect();
    (v, sv, evr)
}

/// Flips each column so that most of its squared mass is positive (`‖v₊‖ ≥ ‖v₋‖`).
pub(crate) fn mostly_positive(mut v: DMatrix<f64>) -> DMatrix<f64> {
    for mut col in v.column_iter_mut() {
        let pos: f64 = col.iter().filter(|&&a| a > 0.0).map(|a| a * a).sum();
        let neg: f64 = col.iter().filter(|&&a| a < 0.0).map(|a| a * a).sum();
        if neg > pos {
            col.neg_mut();
        }
    }
    v
}

/// Leave-one-out nearest-centroid accuracy of the rows of `scores` (samples × k) for the
/// 0/1 labels `y`, with Euclidean distance in the k-dimensional score space.
pub(crate) fn loo_nearest_centroid(scores: &DMatrix<f64>, y: &[usize]) -> (usize, usize) {
    let n = scores.nrows();
    let mut correct = 0;
    for i in 0..n {
        let mut sums = [
            DMatrix::zeros(1, scores.ncols()),
            DMatrix::zeros(1, scores.ncols()),
        ];
        let mut counts = [0usize; 2];
        for j in (0..n).filter(|&j| j != i) {
            sums[y[j]] += scores.row(j);
            counts[y[j]] += 1;
        }
        let dist = |c: usize| (scores.row(i) - &sums[c] / counts[c] as f64).norm();
        let pred = if dist(1) < dist(0) { 1 } else { 0 };
        correct += usize::from(pred == y[i]);
    }
    (correct, n)
}

struct Row {
    name: String,
    sparsity: f64,
    defect: f64,
    loo: (usize, usize),
    iterations: String,
    seconds: String,
}

/// Prints what one basis (genes × k) says about the data; returns its sparsity, defect and
/// LOO accuracy.
fn describe(
    name: &str,
    y: &DMatrix<f64>,
    x: &DMatrix<f64>,
    labels: &[usize],
    genes: &[(String, String)],
) -> (f64, f64, (usize, usize)) {
    let sp = sparsity(y);
    let defect = invariant_orthogonality_defect(y);
    // The component scores of each sample: its gene-centred expression profile projected on
    // the basis, scores = Xc·Y (38 × k), Xc = Eᵀ with each gene's mean over the samples
    // removed. (The centring shifts every sample's scores by the same vector, so it changes
    // the mean scores printed below but not the nearest-centroid decisions.)
    let scores = x * y;
    let loo = loo_nearest_centroid(&scores, labels);
    println!(
        "\n== {name}: sparsity {:.1} % ({} of {} weights are 0), defect {:.3e}, LOO nearest-centroid accuracy {}/{} = {:.1} %",
        100.0 * sp,
        y.iter().filter(|v| **v == 0.0).count(),
        y.len(),
        defect,
        loo.0,
        loo.1,
        100.0 * loo.0 as f64 / loo.1 as f64
    );
    for j in 0..y.ncols() {
        let col = y.column(j);
        let nnz = col.iter().filter(|v| **v != 0.0).count();
        let mean_of = |c: usize| {
            let (s, n) = (0..scores.nrows())
                .filter(|&i| labels[i] == c)
                .fold((0.0, 0), |(s, n), i| (s + scores[(i, j)], n + 1));
            s / n as f64
        };
        println!(
            "  component {}: {nnz} genes with non-zero weight; mean score ALL {:+.2}, AML {:+.2}",
            j + 1,
            mean_of(0),
            mean_of(1)
        );
        let mut idx: Vec<usize> = (0..col.len()).collect();
        idx.sort_by(|&a, &b| col[b].abs().total_cmp(&col[a].abs()).then(a.cmp(&b)));
        for &g in idx.iter().take(TOP_GENES) {
            let (probe, desc) = &genes[g];
            let desc: String = desc.chars().take(48).collect();
            println!("    {:+.4}  {probe:<18} {desc}", col[g]);
        }
    }
    (sp, defect, loo)
}

pub(crate) fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = data_dir();
    let e = nsa_flow::io::read_matrix(dir.join("golub_multtest_expr.npy"))?; // genes × samples
    let x = e.transpose(); // samples × genes
    let labels: Vec<usize> = read_csv_columns(&dir.join("golub_multtest_labels.csv"), &["class"])
        .into_iter()
        .map(|r| usize::from(r[0] == "AML"))
        .collect();
    let genes: Vec<(String, String)> = read_csv_columns(
        &dir.join("golub_multtest_genes.csv"),
        &["probe_id", "description"],
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone()))
    .collect();
    assert_eq!(labels.len(), x.nrows());
    assert_eq!(genes.len(), x.ncols());
    let n_aml = labels.iter().sum::<usize>();
    println!(
        "Golub leukaemia (multtest): {} genes × {} samples ({} ALL, {} AML)",
        x.ncols(),
        x.nrows(),
        x.nrows() - n_aml,
        n_aml
    );

    // 1. PCA, and the cross-check against numpy.
    let (v, sv, evr) = pca_loadings(&x, K);
    println!(
        "PCA (genes centred across samples, no scaling): singular values {}; explained variance {}",
        sv.iter()
            .map(|s| format!("{s:.4}"))
            .collect::<Vec<_>>()
            .join(", "),
        evr.iter()
            .map(|r| format!("{r:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let v_np = nsa_flow::io::read_matrix(dir.join("golub_multtest_pca_loadings_k3.npy"))?;
    let agreement: Vec<String> = (0..K)
        .map(|j| {
            let (a, b) = (v.column(j), v_np.column(j));
            let cos = a.dot(&b);
            let diff = (a - b * cos.signum()).amax();
            format!(
                "component {}: | |cos| − 1 | = {:.1e}, max |Δ| = {diff:.1e}",
                j + 1,
                (cos.abs() - 1.0).abs()
            )
        })
        .collect();
    println!(
        "cross-check with data/golub_multtest_pca_loadings_k3.npy (numpy), up to sign:\n  {}",
        agreement.join("\n  ")
    );

    // 2. The start. NSA-Flow looks for Y ≥ 0 near its target, and a loading vector's sign is
    // arbitrary, so each loading is flipped to the sign that carries most of its squared mass
    // (‖v₊‖ ≥ ‖v₋‖): clamping it to Y ≥ 0 then keeps as much of the component as possible. The
    // flipped loadings are both the start Y0 and the target X0 (the corrected solver clamps
    // both to ≥ 0), so NSA-Flow looks for the non-negative, nearly orthogonal basis closest to
    // the clamped loadings, with w trading closeness for orthogonality.
    let x0 = mostly_positive(v.clone());

    // 3. Plain PCA, then NSA-Flow for each w; the scores use the gene-centred data Xc.
    let mut rows = Vec::new();
    let mut xc = x.clone();
    let gene_means = x.row_mean();
    for mut row in xc.row_iter_mut() {
        row -= &gene_means;
    }
    let (sp, defect, loo) = describe("PCA loadings (mixed signs)", &x0, &xc, &labels, &genes);
    rows.push(Row {
        name: "PCA".into(),
        sparsity: sp,
        defect,
        loo,
        iterations: "-".into(),
        seconds: "-".into(),
    });

    for w in WS {
        let params = Params::default()
            .w(w)
            // pinned (auto would pick a hardware GPU where there is one) so that the table
            // is the same on every machine
            .backend(BackendChoice::Cpu);
        let t = Instant::now();
        let res = nsa_flow(&x0, Some(&x0), &params)?;
        let seconds = t.elapsed().as_secs_f64();
        let (sp, defect, loo) = describe(
            &format!(
                "NSA-Flow w = {w} ({} iterations, stop: {})",
                res.iterations, res.stop_reason
            ),
            &res.y,
            &xc,
            &labels,
            &genes,
        );
        rows.push(Row {
            name: format!("NSA-Flow w = {w}"),
            sparsity: sp,
            defect,
            loo,
            iterations: res.iterations.to_string(),
            seconds: format!("{:.1}", 1e3 * seconds),
        });
    }

    println!(
        "\n| method            | sparsity | defect    | LOO accuracy | iterations | time (ms) |"
    );
    println!(
        "|-------------------|---------:|----------:|-------------:|-----------:|----------:|"
    );
    for r in &rows {
        println!(
            "| {:<17} | {:>7.1}% | {:>9.3e} | {:>2}/{} {:>5.1}% | {:>10} | {:>9} |",
            r.name,
            100.0 * r.sparsity,
            r.defect,
            r.loo.0,
            r.loo.1,
            100.0 * r.loo.0 as f64 / r.loo.1 as f64,
            r.iterations,
            r.seconds
        );
    }
    println!(
        "\nsparsity: share of the {}×{} weights exactly 0; defect: invariant orthogonality defect;\n\
         LOO accuracy: leave-one-out nearest-centroid classification of ALL/AML on the component\n\
         scores Xc·Y (38 samples × {K}); time: wall clock of the solve (varies by machine, the rest does not).",
        x.ncols(),
        K
    );
    Ok(())
}
