// k×k work on the small buffer (Gram matrices, inverse square roots, blend matrices and the
// scalars derived from them), so the host never reads a matrix back. Single-workgroup kernels
// reduce k² entries with per-thread strided loops (⌈k²/256⌉ trips) and a fixed tree; the
// product kernel gives one entry to each invocation (k trips).

// After prelude.wgsl (T, Params, Lane, bindings 0/5/6/7, enter_lane, coef, reduce2, …).

// The gradient's k×k data. S at off0; writes M = S − Diag(S) at off1 and, at off2, the
// coefficients alpha (of Y·M) and radial (of Y):
//   invariant defect: n = tr S, alpha = orth/n², radial = −orth·((‖S‖² − ‖diag S‖²)/n²)/n;
//   simplified (mode 1): alpha = c, radial = 0;
// both zero when n ≤ 1e-12 or the orthogonality weight is zero.
// Literals: c0 = orth, c1 = simplified coefficient. Single workgroup.
@compute @workgroup_size(256)
fn grad_coef(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) lane_wid: vec3<u32>) {
    enter_lane(lane_wid.z);
    let lid = lid3.x;
    let k = params.k;
    var fro: T = 0.0;
    var dsq: T = 0.0;
    for (var e = lid; e < k * k; e = e + 256u) {
        let v = small[lane_b5 + params.off0 + e];
        let i = e % k;
        let j = e / k;
        fro = fro + v * v;
        if (i == j) {
            small[lane_b5 + params.off1 + e] = 0.0;
        } else {
            small[lane_b5 + params.off1 + e] = v;
        }
    }
    var tr: T = 0.0;
    for (var j = lid; j < k; j = j + 256u) {
        let d = small[lane_b5 + params.off0 + j + j * k];
        tr = tr + d;
        dsq = dsq + d * d;
    }
    let s1 = reduce2(lid, fro, dsq);
    let s2 = reduce2(lid, tr, 0.0);
    if (lid == 0u) {
        let n = s2.x;
        let orth = lanes[lane].c[0].x;
        let simplified = params.mode == 1u;
        let weight = select(orth, lanes[lane].c[0].y, simplified);
        var alpha: T = 0.0;
        var radial: T = 0.0;
        if (n > 1e-12 && weight != 0.0) {
            if (simplified) {
                alpha = weight;
            } else {
                let defect = (s1.x - s1.y) / (n * n);
                alpha = orth / (n * n);
                radial = -orth * defect / n;
            }
        }
        small[lane_b5 + params.off2] = alpha;
        small[lane_b5 + params.off2 + 1u] = radial;
    }
}

// ‖S‖² and ‖diag S‖² of S at off1 as two readback slots of `chunk` partials each at
// aux[off0] and aux[off0 + chunk] (the rest of each slot zeroed). Single workgroup.
@compute @workgroup_size(256)
fn gram_stats(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) lane_wid: vec3<u32>) {
    enter_lane(lane_wid.z);
    let lid = lid3.x;
    let k = params.k;
    var fro: T = 0.0;
    var dsq: T = 0.0;
    for (var e = lid; e < k * k; e = e + 256u) {
        let v = small[lane_b5 + params.off1 + e];
        fro = fro + v * v;
    }
    for (var j = lid; j < k; j = j + 256u) {
        let d = small[lane_b5 + params.off1 + j + j * k];
        dsq = dsq + d * d;
    }
    let s = reduce2(lid, fro, dsq);
    for (var i = lid; i < params.chunk; i = i + 256u) {
        aux[lane_b6 + params.off0 + i] = select(T(0.0), s.x, i == 0u);
        aux[lane_b6 + params.off0 + params.chunk + i] = select(T(0.0), s.y, i == 0u);
    }
}

// C (off2) = A (off0) · B (off1), k×k column-major; mode 1 writes the symmetric part
// ½(AB + (AB)ᵀ) instead. One entry per invocation.
@compute @workgroup_size(256)
fn kk_matmul(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) lane_wid: vec3<u32>) {
    enter_lane(lane_wid.z);
    let k = params.k;
    let e = gid.x;
    if (e >= k * k) {
        return;
    }
    let i = e % k;
    let j = e / k;
    var acc: T = 0.0;
    for (var l = 0u; l < k; l = l + 1u) {
        acc = acc + small[lane_b5 + params.off0 + i + l * k] * small[lane_b5 + params.off1 + l + j * k];
    }
    if (params.mode == 1u) {
        var acc_t: T = 0.0;
        for (var l = 0u; l < k; l = l + 1u) {
            acc_t = acc_t + small[lane_b5 + params.off0 + j + l * k] * small[lane_b5 + params.off1 + l + i * k];
        }
        acc = 0.5 * (acc + acc_t);
    }
    small[lane_b5 + params.off2 + e] = acc;
}

// The blend matrix T_w (off2) from T (off0), S (off1) and, in corrected style, TS (off3):
// blend_tw in prelude.wgsl, with mode bit 1 the corrected style and bit 2 TS computed first;
// literals c0 = w, c1 = the threshold; tr S goes to small[slot]. Single workgroup.
@compute @workgroup_size(256)
fn blend_matrix(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) lane_wid: vec3<u32>) {
    enter_lane(lane_wid.z);
    blend_tw(lid3.x, params.off0, params.off1, params.off3, params.off2, params.slot,
        lanes[lane].c[0].x, lanes[lane].c[0].y, (params.mode & 1u) == 1u, (params.mode & 2u) != 0u);
}

// The diagonal inverse square root: T (off1) = Diag(1/√max(S_jj + shift, floor)), with
// literals c0 = shift (absolute), c1 = relative shift (× tr S / k), c2 = floor (absolute),
// c3 = relative floor. Single workgroup.
@compute @workgroup_size(256)
fn inv_sqrt_diag(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) lane_wid: vec3<u32>) {
    enter_lane(lane_wid.z);
    let lid = lid3.x;
    let k = params.k;
    var tr: T = 0.0;
    for (var i = lid; i < k; i = i + 256u) {
        tr = tr + small[lane_b5 + params.off0 + i + i * k];
    }
    let s = reduce2(lid, tr, 0.0);
    let rel = lanes[lane].c[0].y * s.x / T(k);
    let shift = lanes[lane].c[0].x + rel;
    let floor_v = lanes[lane].c[0].z + lanes[lane].c[0].w * s.x / T(k);
    for (var e = lid; e < k * k; e = e + 256u) {
        let i = e % k;
        let j = e / k;
        var v: T = 0.0;
        if (i == j) {
            let d = small[lane_b5 + params.off0 + e] + shift;
            v = 1.0 / sqrt(select(floor_v, d, d > floor_v));
        }
        small[lane_b5 + params.off1 + e] = v;
    }
}
