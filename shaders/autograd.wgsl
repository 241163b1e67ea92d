// The k×k work of the retraction's backward on the small buffer: the scalar coefficients of the
// renormalisation, the corrected blend's trace terms, and the Sylvester equation
// S½·X + X·S½ = G for the derivative of (YᵀY)^{-1/2}, solved by the Newton–Schulz sign
// iteration on [[P, Q], [0, −P]] (P → I, Q → −2X), which is made of k×k products only.
// Single-workgroup kernels loop ⌈k²/256⌉ (or ⌈k/256⌉·k) times; the product kernels give one
// entry to each invocation (k trips), so no invocation approaches the 65 535-trip cap.

// After prelude.wgsl (T, Params, Lane, bindings 0/5/6/7, enter_lane, coef, reduce2, …).

// small[off2] = c0·small[off0] + (c1 + c3·small[src.x]/k)·small[off1] + c2·I (off1 = LITERAL:
// no second term; src.x = LITERAL: no device part, which adds a shift relative to a trace).
@compute @workgroup_size(256)
fn kk_affine(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) lane_wid: vec3<u32>) {
    enter_lane(lane_wid.z);
    let k = params.k;
    let e = gid.x;
    if (e >= k * k) {
        return;
    }
    var v = lanes[lane].c[0].x * small[lane_b5 + params.off0 + e];
    if (params.off1 != LITERAL) {
        var c1 = lanes[lane].c[0].y;
        if (params.src.x != LITERAL) {
            c1 = c1 + lanes[lane].c[0].w * small[lane_b5 + params.src.x] / T(k);
        }
        v = v + c1 * small[lane_b5 + params.off1 + e];
    }
    if (e % k == e / k) {
        v = v + lanes[lane].c[0].z;
    }
    small[lane_b5 + params.off2 + e] = v;
}

// The reference renormalisation's coefficients from n² = tr S (small[src.x]), ⟨g, M⟩
// (small[src.y]) and ‖M‖² (small[src.z]), M = Y·T_w, out = M·n/m: writes at slot
//   [c_g, c_M, c_Y] with gM = c_g·g + c_M·M and gY ⊇ c_Y·Y; (1, 0, 0) when m ≤ 1e-12 or
// n < 1e-12 (the retraction is the identity there).
@compute @workgroup_size(1)
fn ref_coefs(@builtin(workgroup_id) lane_wid: vec3<u32>) {
    enter_lane(lane_wid.z);
    let n2 = small[lane_b5 + params.src.x];
    let gm = small[lane_b5 + params.src.y];
    let m2 = small[lane_b5 + params.src.z];
    let n = sqrt(max(n2, 0.0));
    let m = sqrt(max(m2, 0.0));
    var cg: T = 1.0;
    var cm: T = 0.0;
    var cy: T = 0.0;
    if (n >= 1e-12 && m > 1e-12) {
        cg = n / m;
        cm = -n * gm / (m * m * m);
        cy = gm / (m * n);
    }
    small[lane_b5 + params.slot] = cg;
    small[lane_b5 + params.slot + 1u] = cm;
    small[lane_b5 + params.slot + 2u] = cy;
}

// Corrected blend: from S (off0), T (off1), TS (off2) and gT_w = Yᵀg (off3, rewritten in
// place into gT), with c = tr(TS)/tr(TST):
//   gc = w·⟨gT_w, T⟩, ga = gc/b, gb = −gc·a/b²,
//   gT = w·c·gT_w + ga·S + gb·(TS + ST)  (ST = (TS)ᵀ: S and T are symmetric);
// ga, gb to small[slot], small[slot+1]. Literal c0 = w. Single workgroup.
@compute @workgroup_size(256)
fn corrected_coefs(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) lane_wid: vec3<u32>) {
    enter_lane(lane_wid.z);
    let lid = lid3.x;
    let k = params.k;
    let w = lanes[lane].c[0].x;
    var num: T = 0.0;
    var den: T = 0.0;
    var gtw: T = 0.0;
    for (var i = lid; i < k; i = i + 256u) {
        num = num + small[lane_b5 + params.off2 + i + i * k];
        var row: T = 0.0;
        for (var l = 0u; l < k; l = l + 1u) {
            row = row + small[lane_b5 + params.off2 + i + l * k] * small[lane_b5 + params.off1 + l + i * k];
        }
        den = den + row;
    }
    for (var e = lid; e < k * k; e = e + 256u) {
        gtw = gtw + small[lane_b5 + params.off3 + e] * small[lane_b5 + params.off1 + e];
    }
    let s1 = reduce2(lid, num, den);
    let s2 = reduce2(lid, gtw, 0.0);
    let at = s1.x;
    let bt = s1.y;
    var c: T = 0.0;
    var ga: T = 0.0;
    var gb: T = 0.0;
    if (bt > 0.0) {
        c = at / bt;
        let gc = w * s2.x;
        ga = gc / bt;
        gb = -gc * at / (bt * bt);
    }
    for (var e = lid; e < k * k; e = e + 256u) {
        let i = e % k;
        let j = e / k;
        let ts = small[lane_b5 + params.off2 + e];
        let st = small[lane_b5 + params.off2 + j + i * k];
        small[lane_b5 + params.off3 + e] = w * c * small[lane_b5 + params.off3 + e] + ga * small[lane_b5 + params.off0 + e] + gb * (ts + st);
    }
    if (lid == 0u) {
        small[lane_b5 + params.slot] = ga;
        small[lane_b5 + params.slot + 1u] = gb;
    }
}

// Sylvester by the sign iteration. Layout: blocks at off0 (P), off1 (Q), off2 (P²),
// off3 (PQ), and the next P, Q at src.x, src.y; state at slot: [done, residual, previous
// residual, steps taken, steps recorded].

// P₀ = S½/c, Q₀ = −f·G/c with c = ‖S½‖_F ≥ λ_max(S½), S½ at src.z, G at src.w (symmetrised),
// f = literal c0. Single workgroup.
@compute @workgroup_size(256)
fn syl_init(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) lane_wid: vec3<u32>) {
    enter_lane(lane_wid.z);
    let lid = lid3.x;
    let k = params.k;
    var fro: T = 0.0;
    for (var e = lid; e < k * k; e = e + 256u) {
        let v = small[lane_b5 + params.src.z + e];
        fro = fro + v * v;
    }
    let s = reduce2(lid, fro, 0.0);
    let c = sqrt(s.x);
    let inv = select(T(0.0), 1.0 / c, c > 0.0);
    let f = lanes[lane].c[0].x;
    for (var e = lid; e < k * k; e = e + 256u) {
        let i = e % k;
        let j = e / k;
        small[lane_b5 + params.off0 + e] = small[lane_b5 + params.src.z + e] * inv;
        let g = 0.5 * (small[lane_b5 + params.src.w + e] + small[lane_b5 + params.src.w + j + i * k]);
        small[lane_b5 + params.off1 + e] = -f * g * inv;
    }
    if (lid == 0u) {
        small[lane_b5 + params.slot] = select(T(1.0), T(0.0), c > 0.0);
        small[lane_b5 + params.slot + 1u] = 1e30;
        small[lane_b5 + params.slot + 2u] = 1e30;
        small[lane_b5 + params.slot + 3u] = 0.0;
        small[lane_b5 + params.slot + 4u] = 0.0;
    }
}

// Entry e of P² and P·Q (into off2, off3) from P at cp and Q at cq.
fn syl_product_entry(e: u32, cp: u32, cq: u32) {
    let k = params.k;
    let i = e % k;
    let j = e / k;
    var pp: T = 0.0;
    var pq: T = 0.0;
    for (var l = 0u; l < k; l = l + 1u) {
        let pil = small[lane_b5 + cp + i + l * k];
        pp = pp + pil * small[lane_b5 + cp + l + j * k];
        pq = pq + pil * small[lane_b5 + cq + l + j * k];
    }
    small[lane_b5 + params.off2 + e] = pp;
    small[lane_b5 + params.off3 + e] = pq;
}

// Entry e of P' = ½(3P − P·P²) and Q' = ½(3Q − P²·Q + PQ·P − Q·P²) into np, nq; returns
// P'_e − I_e (for the residual).
fn syl_update_entry(e: u32, cp: u32, cq: u32, np: u32, nq: u32) -> T {
    let k = params.k;
    let i = e % k;
    let j = e / k;
    var pp2: T = 0.0;
    var p2q: T = 0.0;
    var pqp: T = 0.0;
    var qp2: T = 0.0;
    for (var l = 0u; l < k; l = l + 1u) {
        let p_lj = small[lane_b5 + cp + l + j * k];
        let p2_lj = small[lane_b5 + params.off2 + l + j * k];
        pp2 = pp2 + small[lane_b5 + cp + i + l * k] * p2_lj;
        p2q = p2q + small[lane_b5 + params.off2 + i + l * k] * small[lane_b5 + cq + l + j * k];
        pqp = pqp + small[lane_b5 + params.off3 + i + l * k] * p_lj;
        qp2 = qp2 + small[lane_b5 + cq + i + l * k] * p2_lj;
    }
    let pn = 0.5 * (3.0 * small[lane_b5 + cp + e] - pp2);
    small[lane_b5 + np + e] = pn;
    small[lane_b5 + nq + e] = 0.5 * (3.0 * small[lane_b5 + cq + e] - p2q + pqp - qp2);
    return select(pn, pn - 1.0, i == j);
}

// P² and P·Q, one entry each per invocation; nothing once converged.
@compute @workgroup_size(256)
fn syl_products(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) lane_wid: vec3<u32>) {
    enter_lane(lane_wid.z);
    let e = gid.x;
    if (e >= params.k * params.k || small[lane_b5 + params.slot] != 0.0) {
        return;
    }
    syl_product_entry(e, params.off0, params.off1);
}

// P', Q' one entry each per invocation, or a copy once converged (so where the result lies
// does not depend on when the iteration stopped).
@compute @workgroup_size(256)
fn syl_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) lane_wid: vec3<u32>) {
    enter_lane(lane_wid.z);
    let e = gid.x;
    if (e >= params.k * params.k) {
        return;
    }
    if (small[lane_b5 + params.slot] != 0.0) {
        small[lane_b5 + params.src.x + e] = small[lane_b5 + params.off0 + e];
        small[lane_b5 + params.src.y + e] = small[lane_b5 + params.off1 + e];
        return;
    }
    syl_update_entry(e, params.off0, params.off1, params.src.x, params.src.y);
}

// Residual ‖I − P'‖_F/√k of the new P (at src.x); converged when it reaches the tolerance
// (literal c0) or stops shrinking once small (the working-precision floor), or after the cap
// (literal c1) steps. Single workgroup.
fn syl_decide(r: T) {
    let prev = small[lane_b5 + params.slot + 1u];
    let steps = small[lane_b5 + params.slot + 3u] + 1.0;
    small[lane_b5 + params.slot + 3u] = steps;
    small[lane_b5 + params.slot + 2u] = prev;
    small[lane_b5 + params.slot + 1u] = r;
    let finite = r == r && r < 1e30;
    if (!finite || r <= lanes[lane].c[0].x || (prev < 0.01 && r >= prev) || steps >= lanes[lane].c[0].y) {
        small[lane_b5 + params.slot] = 1.0;
    }
}

@compute @workgroup_size(256)
fn syl_check(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) lane_wid: vec3<u32>) {
    enter_lane(lane_wid.z);
    let lid = lid3.x;
    let k = params.k;
    if (small[lane_b5 + params.slot] != 0.0) {
        return;
    }
    var acc: T = 0.0;
    for (var e = lid; e < k * k; e = e + 256u) {
        var d = small[lane_b5 + params.src.x + e];
        if (e % k == e / k) {
            d = d - 1.0;
        }
        acc = acc + d * d;
    }
    let s = reduce2(lid, acc, 0.0);
    if (lid == 0u) {
        syl_decide(sqrt(s.x / T(k)));
    }
}

// `chunk` whole steps of the sign iteration in one workgroup (k ≤ 64: the host sizes chunk to
// the loop-trip budget), the phases separated by storage barriers: the same arithmetic,
// layout and stopping rule as syl_products / syl_update / syl_check, in a few dispatches
// instead of three per step. The pair a step reads alternates with the count of steps
// recorded (slot + 4), converged steps included, so the result lies where the unfused
// kernels leave it.
@compute @workgroup_size(256)
fn syl_fused(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) lane_wid: vec3<u32>) {
    enter_lane(lane_wid.z);
    let lid = lid3.x;
    let k = params.k;
    let kk = k * k;
    for (var it = 0u; it < params.chunk; it = it + 1u) {
        let even = (u32(small[lane_b5 + params.slot + 4u]) % 2u) == 0u;
        let done = small[lane_b5 + params.slot] != 0.0;
        let cp = select(params.src.x, params.off0, even);
        let cq = select(params.src.y, params.off1, even);
        let np = select(params.off0, params.src.x, even);
        let nq = select(params.off1, params.src.y, even);
        if (!done) {
            for (var e = lid; e < kk; e = e + 256u) {
                syl_product_entry(e, cp, cq);
            }
        }
        storageBarrier();
        var acc: T = 0.0;
        for (var e = lid; e < kk; e = e + 256u) {
            if (done) {
                small[lane_b5 + np + e] = small[lane_b5 + cp + e];
                small[lane_b5 + nq + e] = small[lane_b5 + cq + e];
            } else {
                let d = syl_update_entry(e, cp, cq, np, nq);
                acc = acc + d * d;
            }
        }
        let s = reduce2(lid, acc, 0.0);
        if (lid == 0u) {
            if (!done) {
                syl_decide(sqrt(s.x / T(k)));
            }
            small[lane_b5 + params.slot + 4u] = small[lane_b5 + params.slot + 4u] + 1.0;
        }
        storageBarrier();
    }
}

// gS2 (off2) = gA + gAᵀ + 2·(ga·T + gb·T² + shift·tr(gA)·I), with gA = −½·Q (Q at off0),
// ga, gb at src.x, src.x + 1 and T, T² at off1, off3 (mode 1: corrected; mode 0 without those
// terms); zero when the retraction is the identity (small[src.y] < literal c1: tr S below the
// threshold). Literal c0 = shift (16·ε/k). Mode 2: the diagonal method, gA = Diag(c0·gT_jj·
// (−½)·d_j^{-3/2}) with gT at off0 and d_j = small[off3 + j(k+1)] + c2 (at or below c3 it was
// clamped: no gradient). Single workgroup.
@compute @workgroup_size(256)
fn backward_finish(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) lane_wid: vec3<u32>) {
    enter_lane(lane_wid.z);
    let lid = lid3.x;
    let k = params.k;
    let identity = small[lane_b5 + params.src.y] < lanes[lane].c[0].y;
    var tr: T = 0.0;
    for (var j = lid; j < k; j = j + 256u) {
        tr = tr + small[lane_b5 + params.off0 + j + j * k];
    }
    let s = reduce2(lid, tr, 0.0);
    let tr_ga = -0.5 * s.x;
    for (var e = lid; e < k * k; e = e + 256u) {
        let i = e % k;
        let j = e / k;
        var v: T = 0.0;
        if (!identity) {
            if (params.mode == 2u) {
                if (i == j) {
                    let d = small[lane_b5 + params.off3 + e] + lanes[lane].c[0].z;
                    if (d > lanes[lane].c[0].w) {
                        v = -lanes[lane].c[0].x * small[lane_b5 + params.off0 + e] / (d * sqrt(d));
                    }
                }
            } else {
                v = -0.5 * (small[lane_b5 + params.off0 + e] + small[lane_b5 + params.off0 + j + i * k]);
                if (params.mode == 1u) {
                    v = v + 2.0 * (small[lane_b5 + params.src.x] * small[lane_b5 + params.off1 + e] + small[lane_b5 + params.src.x + 1u] * small[lane_b5 + params.off3 + e]);
                    if (i == j) {
                        v = v + 2.0 * lanes[lane].c[0].x * tr_ga;
                    }
                }
            }
        }
        small[lane_b5 + params.off2 + e] = v;
    }
}
