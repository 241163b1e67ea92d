//! The few numpy array operations the reference estimator uses, with numpy's evaluation order
//! (so that the candidate grids agree with the reference to the last bit or two).

/// `np.linspace(start, stop, num)` (endpoint included): `i·step + start`, the last set to `stop`.
pub(crate) fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let div = (num - 1) as f64;
    let delta = stop - start;
    let step = delta / div;
    let mut y: Vec<f64> = (0..num)
        .map(|i| {
            let fi = i as f64;
            let t = if step == 0.0 {
                fi / div * delta
            } else {
                fi * step
            };
            t + start
        })
        .collect();
    y[num - 1] = stop;
    y
}

/// `np.logspace(start, stop, num)`: `10 ** linspace(start, stop, num)`.
pub(crate) fn logspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    linspace(start, stop, num)
        .into_iter()
        .map(|e| 10f64.powf(e))
        .collect()
}

/// `array ** exponent` for a Python-float exponent, with numpy's fast paths
/// (`-1` reciprocal, `0.5` square root, `2` square).
pub(crate) fn array_pow(x: &[f64], exponent: f64) -> Vec<f64> {
    x.iter()
        .map(|&v| {
            if exponent == 0.5 {
                v.sqrt()
            } else if exponent == 2.0 {
                v * v
            } else if exponent == -1.0 {
                1.0 / v
            } else {
                v.powf(exponent)
            }
        })
        .collect()
}

/// `np.sum` of a contiguous float64 array: numpy's pairwise summation (eight interleaved
/// accumulators within blocks of 128, recursive halving above).
pub(crate) fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        // numpy starts from -0.0 so that a sum of negative zeros stays -0.0
        let mut res = -0.0;
        for &v in a {
            res += v;
        }
        res
    } else if n <= 128 {
        let mut r = [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]];
        let mut i = 8;
        while i < n - n % 8 {
            for (j, rj) in r.iter_mut().enumerate() {
                *rj += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// `np.quantile(a, q)` with the default (linear) method; `a` non-empty.
pub(crate) fn quantile_linear(a: &[f64], q: f64) -> f64 {
    let mut s = a.to_vec();
    s.sort_by(|x, y| x.total_cmp(y));
    let n = s.len();
    // numpy: virtual index n·q + (α + q(1−α−β)) − 1 with α = β = 1, i.e. n·q + (1 − q) − 1
    // (q·(−1) + 1 is exactly 1 − q)
    let virtual_index = n as f64 * q + (1.0 - q) - 1.0;
    let prev = virtual_index.floor();
    let gamma = virtual_index - prev;
    let lo = (prev.max(0.0) as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    let (a0, b0) = (s[lo], s[hi]);
    let diff = b0 - a0;
    // numpy's _lerp: a + d·t, or b − d·(1−t) when t ≥ 0.5
    if gamma >= 0.5 {
        b0 - diff * (1.0 - gamma)
    } else {
        a0 + diff * gamma
    }
}

/// `np.gradient(a)` with unit spacing: first differences at the ends, central ones inside.
/// (numpy raises for fewer than two points; a single point gets a zero gradient here.)
pub(crate) fn gradient(a: &[f64]) -> Vec<f64> {
    let n = a.len();
    if n < 2 {
        return vec![0.0; n];
    }
    (0..n)
        .map(|i| {
            if i == 0 {
                a[1] - a[0]
            } else if i == n - 1 {
                a[n - 1] - a[n - 2]
            } else {
                (a[i + 1] - a[i - 1]) / 2.0
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_ends_exact_and_quantile_interpolates() {
        let l = linspace(1e-5, 0.1, 25);
        assert_eq!(l[0], 1e-5);
        assert_eq!(l[24], 0.1);
        assert_eq!(quantile_linear(&[3.0, 1.0, 2.0, 4.0, 5.0], 0.9), 4.6);
        assert_eq!(gradient(&[1.0, 2.0, 4.0, 8.0]), vec![1.0, 1.5, 3.0, 4.0]);
        let v: Vec<f64> = (0..200).map(|i| i as f64 * 0.1).collect();
        assert!((pairwise_sum(&v) - 1990.0).abs() < 1e-9);
    }
}
