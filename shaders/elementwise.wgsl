// Fused elementwise work on p×k matrices stored column-major as flat arrays of n = p·k entries:
// linear combinations, the interpolation of the line search, in-place scaling by a device
// scalar (the reference retraction's renormalisation) and the non-negativity maps.
// One entry per invocation on a 2-D grid (65 535 workgroups per dimension is the limit), so no
// invocation loops: the Mesa 22.3 loop cap cannot bite.

// After prelude.wgsl (T, Params, Lane, bindings 0/5/6/7, enter_lane, coef, reduce2, …).
@group(0) @binding(1) var<storage, read_write> a: array<T>;
@group(0) @binding(2) var<storage, read_write> b: array<T>;
@group(0) @binding(4) var<storage, read_write> out: array<T>;

fn linear_id(wid: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * params.groups_x) * 256u + lid.x;
}

// mode 0: out = c0·a + c1·b          (lincomb, the plain step)
// mode 1: out = a + c0·(b − a)       (lerp, written like the CPU oracle)
// mode 2: out = a                    (a copy inside one buffer, which a buffer copy cannot do:
//                                     the matrices of a batch share buffers)
// k2 = 1: the result clamped at zero as nonneg_in_place mode 0 would clamp it afterwards.
@compute @workgroup_size(256)
fn combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    enter_lane(wid.z);
    let i = linear_id(wid, lid);
    if (i >= params.n) {
        return;
    }
    var v: T;
    if (params.mode == 2u) {
        v = a[lane_b1 + i];
    } else {
        v = combine_value(params.mode, a[lane_b1 + i], b[lane_b2 + i]);
    }
    if (params.k2 == 1u) {
        v = select(v, 0.0, v < 0.0);
    }
    out[lane_b4 + i] = v;
}

// out ← c0·out in place (c0 usually a device scalar); k2 = 1: clamped at zero as
// nonneg_in_place mode 0 would clamp it afterwards.
@compute @workgroup_size(256)
fn scale_in_place(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    enter_lane(wid.z);
    let i = linear_id(wid, lid);
    if (i >= params.n) {
        return;
    }
    var v = coef(0u) * out[lane_b4 + i];
    if (params.k2 == 1u) {
        v = select(v, 0.0, v < 0.0);
    }
    out[lane_b4 + i] = v;
}

// log(1 + u) for 0 < u ≤ 1 through atanh: 2·(z + z³/3 + …), z = u/(2+u) ≤ 1/3. Written out
// rather than calling log(), which Vulkan's GLSL.std.450 defines only for 16/32-bit floats.
fn log1p_small(u: T) -> T {
    let z = u / (2.0 + u);
    let z2 = z * z;
    var term = z;
    var sum = z;
    for (var j = 1u; j < 20u; j = j + 1u) {
        term = term * z2;
        sum = sum + term / T(2u * j + 1u);
    }
    return 2.0 * sum;
}

// e^x for x ≤ 0 by range reduction: e^x = 2^m · e^r with |r| ≤ ln2/2, Taylor to degree 16.
fn exp_nonpositive(x: T) -> T {
    if (x < -700.0) {
        return 0.0;
    }
    let m = floor(x * 1.4426950408889634 + 0.5);
    let r = x - m * 0.6931471805599453;
    var term: T = 1.0;
    var sum: T = 1.0;
    for (var j = 1u; j < 17u; j = j + 1u) {
        term = term * r / T(j);
        sum = sum + term;
    }
    return ldexp(sum, i32(m));
}

// torch's softplus (threshold 20): x above it, else log(1 + eˣ) = max(x, 0) + log1p(e^−|x|).
fn softplus(x: T) -> T {
    if (x > 20.0) {
        return x;
    }
    return max(x, 0.0) + log1p_small(exp_nonpositive(-abs(x)));
}

// mode 0: hard clamp (negatives → 0; NaN stays NaN, like the oracle), mode 1: softplus.
@compute @workgroup_size(256)
fn nonneg_in_place(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    enter_lane(wid.z);
    let i = linear_id(wid, lid);
    if (i >= params.n) {
        return;
    }
    let x = out[lane_b4 + i];
    if (params.mode == 0u) {
        out[lane_b4 + i] = select(x, 0.0, x < 0.0);
    } else {
        out[lane_b4 + i] = softplus(x);
    }
}

// The backward of nonneg_in_place at pre = a: out ← out ∘ J(a). Mode 0 the clamp (0 where
// a < 0, torch's clamp rule), mode 1 softplus: σ(a) from e^{−|a|}, the identity above 20.
@compute @workgroup_size(256)
fn nonneg_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    enter_lane(wid.z);
    let i = linear_id(wid, lid);
    if (i >= params.n) {
        return;
    }
    let x = a[lane_b1 + i];
    if (params.mode == 0u) {
        if (x < 0.0) {
            out[lane_b4 + i] = 0.0;
        }
    } else if (x <= 20.0) {
        let z = exp_nonpositive(-abs(x));
        let sig = select(z / (1.0 + z), 1.0 / (1.0 + z), x >= 0.0);
        out[lane_b4 + i] = out[lane_b4 + i] * sig;
    }
}
