//! numpy's `default_rng(seed)` (SeedSequence → PCG64) with `Generator.random()` and
//! `Generator.standard_normal()` (numpy's 256-strip ziggurat), reproduced bit for bit so that
//! the reference estimator's `random` and `bayes` candidate grids come out exactly.
//!
//! Only what the estimator draws is implemented: doubles in `[0, 1)` and standard normals.

use std::sync::OnceLock;

// SeedSequence constants (numpy/random/bit_generator.pyx).
const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;
const POOL_SIZE: usize = 4;

fn hashmix(value: u32, hash_const: &mut u32) -> u32 {
    let mut v = value ^ *hash_const;
    *hash_const = hash_const.wrapping_mul(MULT_A);
    v = v.wrapping_mul(*hash_const);
    v ^ (v >> XSHIFT)
}

fn mix(x: u32, y: u32) -> u32 {
    let r = MIX_MULT_L
        .wrapping_mul(x)
        .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
    r ^ (r >> XSHIFT)
}

/// `SeedSequence(seed).generate_state(n_words, np.uint64)` for a non-negative integer seed.
fn seed_sequence_state_u64(seed: u64, n_words: usize) -> Vec<u64> {
    // _coerce_to_uint32_array(int): little-endian 32-bit words, [0] for 0
    let mut entropy = Vec::new();
    let mut n = seed;
    if n == 0 {
        entropy.push(0);
    }
    while n > 0 {
        entropy.push((n & 0xffff_ffff) as u32);
        n >>= 32;
    }
    // mix_entropy
    let mut pool = [0u32; POOL_SIZE];
    let mut hash_const = INIT_A;
    for (i, slot) in pool.iter_mut().enumerate() {
        *slot = hashmix(entropy.get(i).copied().unwrap_or(0), &mut hash_const);
    }
    for i_src in 0..POOL_SIZE {
        for i_dst in 0..POOL_SIZE {
            if i_src != i_dst {
                let h = hashmix(pool[i_src], &mut hash_const);
                pool[i_dst] = mix(pool[i_dst], h);
            }
        }
    }
    for &e in entropy.iter().skip(POOL_SIZE) {
        for slot in pool.iter_mut() {
            let h = hashmix(e, &mut hash_const);
            *slot = mix(*slot, h);
        }
    }
    // generate_state
    let mut hash_const = INIT_B;
    let words: Vec<u32> = (0..2 * n_words)
        .map(|i| {
            let mut v = pool[i % POOL_SIZE] ^ hash_const;
            hash_const = hash_const.wrapping_mul(MULT_B);
            v = v.wrapping_mul(hash_const);
            v ^ (v >> XSHIFT)
        })
        .collect();
    words
        .chunks(2)
        .map(|w| u64::from(w[0]) | (u64::from(w[1]) << 32))
        .collect()
}

const PCG_MULT: u128 = (2_549_297_995_355_413_924u128 << 64) | 4_865_540_595_714_422_341u128;

/// numpy's `Generator(PCG64(SeedSequence(seed)))`, i.e. `np.random.default_rng(seed)`.
#[derive(Clone, Debug)]
pub(crate) struct NumpyRng {
    state: u128,
    inc: u128,
}

impl NumpyRng {
    /// `np.random.default_rng(seed)`.
    pub(crate) fn default_rng(seed: u64) -> Self {
        let v = seed_sequence_state_u64(seed, 4);
        let initstate = (u128::from(v[0]) << 64) | u128::from(v[1]);
        let initseq = (u128::from(v[2]) << 64) | u128::from(v[3]);
        let mut rng = NumpyRng {
            state: 0,
            inc: (initseq << 1) | 1,
        };
        rng.step();
        rng.state = rng.state.wrapping_add(initstate);
        rng.step();
        rng
    }

    fn step(&mut self) {
        self.state = self.state.wrapping_mul(PCG_MULT).wrapping_add(self.inc);
    }

    /// PCG64 XSL-RR output of the advanced state.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.step();
        let s = self.state;
        ((s >> 64) as u64 ^ s as u64).rotate_right((s >> 122) as u32)
    }

    /// `Generator.random()`: a double in `[0, 1)` from the top 53 bits.
    pub(crate) fn random(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `Generator.standard_normal()`: numpy's ziggurat (`random_standard_normal`).
    pub(crate) fn standard_normal(&mut self) -> f64 {
        let t = tables();
        loop {
            let mut r = self.next_u64();
            let idx = (r & 0xff) as usize;
            r >>= 8;
            let sign = r & 1;
            let rabs = (r >> 1) & 0x000f_ffff_ffff_ffff;
            let mut x = rabs as f64 * t.wi[idx];
            if sign == 1 {
                x = -x;
            }
            if rabs < t.ki[idx] {
                return x;
            }
            if idx == 0 {
                // the tail beyond R (1 − U avoids log 0, as numpy does)
                loop {
                    let xx = -ZIGGURAT_NOR_INV_R * (-self.random()).ln_1p();
                    let yy = -(-self.random()).ln_1p();
                    if yy + yy > xx * xx {
                        return if (rabs >> 8) & 1 == 1 {
                            -(ZIGGURAT_NOR_R + xx)
                        } else {
                            ZIGGURAT_NOR_R + xx
                        };
                    }
                }
            } else if (t.fi[idx - 1] - t.fi[idx]) * self.random() + t.fi[idx] < (-0.5 * x * x).exp()
            {
                return x;
            }
        }
    }
}

/// The start of the tail of numpy's 256-strip normal ziggurat (`ziggurat_nor_r`).
const ZIGGURAT_NOR_R: f64 = 3.654_152_885_361_009;
/// `1 / ziggurat_nor_r`.
const ZIGGURAT_NOR_INV_R: f64 = 0.273_661_237_329_758_3;

struct Tables {
    ki: [u64; 256],
    wi: [f64; 256],
    fi: [f64; 256],
}

/// The ziggurat tables, built as Marsaglia & Tsang (2000) build theirs, for 256 strips and
/// 52-bit mantissas (numpy's `ki_double`, `wi_double`, `fi_double`).
///
/// Each strip has area `v = R·f(R) + ∫_R^∞ f`, `f(x) = exp(−x²/2)`; the tail integral is
/// `f(R)·M(R)` with `M` Mills' ratio (a continued fraction), so the base strip's width is
/// `v/f(R) = R + M(R)`. The strip edges then follow `x_{i−1} = √(−2 ln(v/x_i + f(x_i)))`
/// from the top edge R down. In double precision the entries agree with numpy's to about
/// 1e-13 relative (numpy's were produced at higher precision); that moves a normal draw by
/// far less than the 1e-12 to which the reference's grids are reproduced, and changes an
/// accept/reject decision with probability ~1e-13 per draw.
fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        let m1 = 4_503_599_627_370_496.0; // 2^52
        let r = ZIGGURAT_NOR_R;
        let f = |x: f64| (-0.5 * x * x).exp();
        // Mills' ratio M(r) = 1/(r + 1/(r + 2/(r + 3/(r + …)))), evaluated from the bottom
        let mut cf = r;
        for n in (1..=200).rev() {
            cf = r + f64::from(n) / cf;
        }
        let q = r + 1.0 / cf; // v / f(r): the width of the base strip
        let v = q * f(r);
        let mut ki = [0u64; 256];
        let mut wi = [0f64; 256];
        let mut fi = [0f64; 256];
        ki[0] = ((r / q) * m1) as u64;
        ki[1] = 0;
        wi[0] = q / m1;
        wi[255] = r / m1;
        fi[0] = 1.0;
        fi[255] = f(r);
        let mut dn = r;
        let mut tn = r;
        for i in (1..=254).rev() {
            dn = (-2.0 * (v / dn + f(dn)).ln()).sqrt();
            ki[i + 1] = ((dn / tn) * m1) as u64;
            tn = dn;
            fi[i] = f(dn);
            wi[i] = dn / m1;
        }
        Tables { ki, wi, fi }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rng_42_random_matches_numpy() {
        // np.random.default_rng(42).random(3)
        let mut g = NumpyRng::default_rng(42);
        let got: Vec<f64> = (0..3).map(|_| g.random()).collect();
        assert_eq!(
            got,
            [0.7739560485559633, 0.4388784397520523, 0.8585979199113825]
        );
    }

    #[test]
    fn ziggurat_tables_match_numpy() {
        let t = tables();
        // numpy's ziggurat_constants.h (wi_double[0..3]); the top strips (small i) carry the
        // most accumulated rounding of the recursion
        let close = |a: f64, b: f64| ((a - b) / b).abs() < 1e-12;
        assert!(close(t.wi[0], 8.683627060801306e-16));
        assert!(close(t.wi[1], 4.779330175727737e-17));
        assert!(close(t.wi[2], 6.354352417405262e-17));
        assert_eq!(t.ki[1], 0);
        assert!(close(t.fi[0], 1.0));
    }
}
