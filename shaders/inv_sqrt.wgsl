// The k×k inverse square root A^{-1/2} by the symmetric coupled Newton–Schulz iteration
//   R₀ = A/s, Q₀ = I;  Z = (3I − R)/2,  Q ← Q·Z,  R ← sym(Z·R·Z);  A^{-1/2} ≈ Q/√s,
// with A = S + shift·I built from the Gram S. Scaling: Frobenius (mode bit 1 clear, the
// reference's) or the guaranteed spectral bound min(Gershgorin, Frobenius) (bit 1 set).
// Stopping: a fixed number of steps (bit 0 clear, the reference's `ns_iter`) or on the
// residual ‖I − R‖_F/√k ≤ tol, when it stalls past 1e-3 (the precision floor), or at the cap
// (bit 0 set). The state (s, done, steps, residual, best) lives in the small buffer, so
// the host encodes a bounded number of dispatches and reads nothing back: dispatches after
// convergence return at once.
//
// k ≤ 32: `ns_shared` keeps R and Q in workgroup memory and runs many steps per dispatch;
// k ≤ 64: `ns_fused` runs several steps in one workgroup. Larger k: `ns_step_a`,
// `ns_step_b` spread each step's products over many workgroups and `ns_check` updates the
// state. Every invocation's loop trips per dispatch stay far below 65 535.
//
// Layout at off0: S (input); at off1: the workspace R, Q, W, Rn, Qn (5 k×k blocks);
// off2: the output T; slot: the state scalars
//   [slot] s, [slot+1] done, [slot+2] steps, [slot+3] residual (−1: A unusable, T = I),
//   [slot+4] best.

// After prelude.wgsl (T, Params, Lane, bindings 0/5/6/7, enter_lane, coef, reduce2, …).
@group(0) @binding(4) var<storage, read_write> step_args: array<u32>;

// u32 words per element: the step counts are u32s, their start is given in elements of T.
const T_WORDS: u32 = 1u; // @f64 const T_WORDS: u32 = 2u;

var<workgroup> flag: u32;

fn reduce_max(lid: u32, x: T) -> T {
    tree[lid] = x;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            tree[lid] = max(tree[lid], tree[lid + s]);
        }
        workgroupBarrier();
    }
    let r = tree[0];
    workgroupBarrier();
    return r;
}

fn r_at(e: u32) -> u32 { return params.off1 + e; }
fn q_at(e: u32) -> u32 { return params.off1 + params.k * params.k + e; }
fn w_at(e: u32) -> u32 { return params.off1 + 2u * params.k * params.k + e; }
fn rn_at(e: u32) -> u32 { return params.off1 + 3u * params.k * params.k + e; }
fn qn_at(e: u32) -> u32 { return params.off1 + 4u * params.k * params.k + e; }

// Z = (3I − R)/2 entry (i, j)
fn z_of(i: u32, j: u32) -> T {
    let r = small[lane_b5 + r_at(i + j * params.k)];
    return select(T(-0.5) * r, T(0.5) * (3.0 - r), i == j);
}

// A = S + shift·I, shift = c0 + c1 (two absolute shifts, added one after the other as the
// reference does) + c2·tr(S)/k (relative). R₀ = A/s, Q₀ = I and the state. Literals:
// c3 = tol, c4 = cap or step count (as a number). Single workgroup.
@compute @workgroup_size(256)
fn ns_init(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) lane_wid: vec3<u32>) {
    enter_lane(lane_wid.z);
    init_state(lid3.x);
}

// ns_init's work, by one whole workgroup (in uniform control flow).
fn init_state(lid: u32) {
    let k = params.k;
    var tr: T = 0.0;
    for (var i = lid; i < k; i = i + 256u) {
        tr = tr + small[lane_b5 + params.off0 + i + i * k];
    }
    let t = reduce2(lid, tr, 0.0);
    let rel = lanes[lane].c[0].z * t.x / T(k);
    // Frobenius norm and Gershgorin bound of A
    var fro: T = 0.0;
    var gersh: T = 0.0;
    for (var i = lid; i < k; i = i + 256u) {
        var row: T = 0.0;
        for (var j = 0u; j < k; j = j + 1u) {
            var v = small[lane_b5 + params.off0 + i + j * k];
            if (i == j) {
                v = ((v + lanes[lane].c[0].x) + lanes[lane].c[0].y) + rel;
            }
            fro = fro + v * v;
            row = row + abs(v);
        }
        gersh = max(gersh, row);
    }
    let f = reduce2(lid, fro, 0.0);
    let g = reduce_max(lid, gersh);
    var s = sqrt(f.x);
    if ((params.mode & 2u) != 0u) {
        s = min(s, g);
    }
    let usable = s > 0.0 && is_finite(s);
    var res: T = 0.0;
    for (var e = lid; e < k * k; e = e + 256u) {
        let i = e % k;
        let j = e / k;
        var v = small[lane_b5 + params.off0 + e];
        if (i == j) {
            v = ((v + lanes[lane].c[0].x) + lanes[lane].c[0].y) + rel;
        }
        var r = v / s;
        if (!usable) {
            r = select(T(0.0), T(1.0), i == j);
        }
        small[lane_b5 + r_at(e)] = r;
        small[lane_b5 + q_at(e)] = select(T(0.0), T(1.0), i == j);
        let d = r - select(T(0.0), T(1.0), i == j);
        res = res + d * d;
    }
    let rr = reduce2(lid, res, 0.0);
    if (lid == 0u) {
        let residual = sqrt(rr.x) / sqrt(T(k));
        let cap = lanes[lane].c[1].x;
        var done = cap <= 0.0;
        if ((params.mode & 1u) != 0u) {
            done = done || residual <= lanes[lane].c[0].w;
        }
        if (!usable) {
            done = true;
        }
        small[lane_b5 + params.slot] = select(T(1.0), s, usable);
        small[lane_b5 + params.slot + 1u] = select(T(0.0), T(1.0), done);
        small[lane_b5 + params.slot + 2u] = 0.0;
        small[lane_b5 + params.slot + 3u] = select(residual, T(-1.0), !usable);
        small[lane_b5 + params.slot + 4u] = residual;
        write_step_args();
    }
}

// After a step's products: R = sym(Rn), Q = Qn, the residual and the stopping rule.
// Called by one whole workgroup.
// In exact arithmetic every eigenvalue of R moves monotonically toward 1, so the residual
// never grows; when it does (or turns non-finite) rounding has taken over, typically on
// eigenvalues below the precision's resolution: the residual-stopped iteration then keeps
// the previous R and Q and stops, rather than diverging.
fn finish_step(lid: u32) {
    let k = params.k;
    let prev = small[lane_b5 + params.slot + 3u];
    let best = small[lane_b5 + params.slot + 4u];
    let steps = small[lane_b5 + params.slot + 2u] + 1.0;
    var res: T = 0.0;
    for (var e = lid; e < k * k; e = e + 256u) {
        let i = e % k;
        let j = e / k;
        let v = 0.5 * (small[lane_b5 + rn_at(e)] + small[lane_b5 + rn_at(j + i * k)]);
        let d = v - select(T(0.0), T(1.0), i == j);
        res = res + d * d;
        small[lane_b5 + w_at(e)] = v;
    }
    let rr = reduce2(lid, res, 0.0);
    let residual = sqrt(rr.x) / sqrt(T(k));
    let by_residual = (params.mode & 1u) != 0u;
    let diverged = by_residual && (!is_finite(residual) || residual > prev);
    storageBarrier();
    workgroupBarrier();
    if (!diverged) {
        for (var e = lid; e < k * k; e = e + 256u) {
            small[lane_b5 + r_at(e)] = small[lane_b5 + w_at(e)];
            small[lane_b5 + q_at(e)] = small[lane_b5 + qn_at(e)];
        }
    }
    if (lid == 0u) {
        let cap = lanes[lane].c[1].x;
        var done = steps >= cap || diverged;
        if (by_residual) {
            done = done || residual <= lanes[lane].c[0].w || (residual > 0.5 * best && best < 1e-3);
        }
        small[lane_b5 + params.slot + 1u] = select(T(0.0), T(1.0), done);
        if (!diverged) {
            small[lane_b5 + params.slot + 2u] = steps;
            small[lane_b5 + params.slot + 3u] = residual;
            small[lane_b5 + params.slot + 4u] = min(best, residual);
        }
    }
    storageBarrier();
    workgroupBarrier();
}

// W = Z·R and Qn = Q·Z for entry e
fn products_a(e: u32) {
    let k = params.k;
    let i = e % k;
    let j = e / k;
    var w: T = 0.0;
    var q: T = 0.0;
    for (var l = 0u; l < k; l = l + 1u) {
        w = w + z_of(i, l) * small[lane_b5 + r_at(l + j * k)];
        q = q + small[lane_b5 + q_at(i + l * k)] * z_of(l, j);
    }
    small[lane_b5 + w_at(e)] = w;
    small[lane_b5 + qn_at(e)] = q;
}

// Rn = W·Z for entry e
fn products_b(e: u32) {
    let k = params.k;
    let i = e % k;
    let j = e / k;
    var acc: T = 0.0;
    for (var l = 0u; l < k; l = l + 1u) {
        acc = acc + small[lane_b5 + w_at(i + l * k)] * z_of(l, j);
    }
    small[lane_b5 + rn_at(e)] = acc;
}

// The workgroup counts of the next multi-workgroup step (k > 64): none once converged, so
// the remaining indirect dispatches launch nothing.
fn write_step_args() {
    let groups = (params.k * params.k + 255u) / 256u;
    step_args[lane_b4 * T_WORDS + 0] = select(groups, 0u, small[lane_b5 + params.slot + 1u] != 0.0);
    step_args[lane_b4 * T_WORDS + 1] = 1u;
    step_args[lane_b4 * T_WORDS + 2] = 1u;
}

// Up to `chunk` steps in one workgroup (k ≤ 64).
@compute @workgroup_size(256)
fn ns_fused(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) lane_wid: vec3<u32>) {
    enter_lane(lane_wid.z);
    let lid = lid3.x;
    let k = params.k;
    for (var step = 0u; step < params.chunk; step = step + 1u) {
        if (lid == 0u) {
            flag = select(0u, 1u, small[lane_b5 + params.slot + 1u] != 0.0);
        }
        if (workgroupUniformLoad(&flag) != 0u) {
            break;
        }
        for (var e = lid; e < k * k; e = e + 256u) {
            products_a(e);
        }
        storageBarrier();
        workgroupBarrier();
        for (var e = lid; e < k * k; e = e + 256u) {
            products_b(e);
        }
        storageBarrier();
        workgroupBarrier();
        finish_step(lid);
    }
}

// One step's first products over many workgroups (k > 64).
@compute @workgroup_size(256)
fn ns_step_a(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) lane_wid: vec3<u32>) {
    enter_lane(lane_wid.z);
    if (small[lane_b5 + params.slot + 1u] != 0.0 || gid.x >= params.k * params.k) {
        return;
    }
    products_a(gid.x);
}

@compute @workgroup_size(256)
fn ns_step_b(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) lane_wid: vec3<u32>) {
    enter_lane(lane_wid.z);
    if (small[lane_b5 + params.slot + 1u] != 0.0 || gid.x >= params.k * params.k) {
        return;
    }
    products_b(gid.x);
}

@compute @workgroup_size(256)
fn ns_check(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) lane_wid: vec3<u32>) {
    enter_lane(lane_wid.z);
    if (lid3.x == 0u) {
        flag = select(0u, 1u, small[lane_b5 + params.slot + 1u] != 0.0);
    }
    if (workgroupUniformLoad(&flag) != 0u) {
        return;
    }
    finish_step(lid3.x);
    if (lid3.x == 0u) {
        write_step_args();
    }
}

// T (off2) = Q/√s (ns_shared does the same in its epilogue when mode bit 8 is set).
@compute @workgroup_size(256)
fn ns_finish(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) lane_wid: vec3<u32>) {
    enter_lane(lane_wid.z);
    let e = gid.x;
    if (e >= params.k * params.k) {
        return;
    }
    small[lane_b5 + params.off2 + e] = small[lane_b5 + q_at(e)] / sqrt(small[lane_b5 + params.slot]);
}

// k ≤ 32: R, Q and a scratch matrix live in workgroup memory for the whole dispatch, which
// runs up to `chunk` steps; only the state scalars and the final R, Q go back to the small
// buffer. Each invocation owns the entries lid + 256·t, t < 4.
var<workgroup> wr: array<T, 1024>;
var<workgroup> wq: array<T, 1024>;
var<workgroup> ww: array<T, 1024>;
var<workgroup> st_prev: T;
var<workgroup> st_best: T;
var<workgroup> st_steps: T;
var<workgroup> st_done: u32;

fn zs(i: u32, j: u32) -> T {
    let r = wr[i + j * params.k];
    return select(T(-0.5) * r, T(0.5) * (3.0 - r), i == j);
}

// Mode bit 32: first add a Gram's chunk partials (p of them at aux[n..]) into small[off0], as
// gram_reduce (gram.wgsl, mode 0) adds them; bit 4: then run ns_init's work (the chain's
// first dispatch); bit 8: end with ns_finish's (its last); bit 16: then the corrected blend
// (blend_tw). Same operations on the same values as the separate launches.
@compute @workgroup_size(256)
fn ns_shared(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) lane_wid: vec3<u32>) {
    enter_lane(lane_wid.z);
    let lid = lid3.x;
    let k = params.k;
    let kk = k * k;
    let by_residual = (params.mode & 1u) != 0u;
    let cap = lanes[lane].c[1].x;
    if ((params.mode & 32u) != 0u) {
        reduce_gram_partials(lid, k, params.p, params.n, params.off0);
        storageBarrier();
        workgroupBarrier();
    }
    if ((params.mode & 4u) != 0u) {
        init_state(lid);
        storageBarrier();
        workgroupBarrier();
    }
    for (var e = lid; e < kk; e = e + 256u) {
        wr[e] = small[lane_b5 + r_at(e)];
        wq[e] = small[lane_b5 + q_at(e)];
    }
    if (lid == 0u) {
        st_done = select(0u, 1u, small[lane_b5 + params.slot + 1u] != 0.0);
        st_steps = small[lane_b5 + params.slot + 2u];
        st_prev = small[lane_b5 + params.slot + 3u];
        st_best = small[lane_b5 + params.slot + 4u];
    }
    workgroupBarrier();
    for (var step = 0u; step < params.chunk; step = step + 1u) {
        if (workgroupUniformLoad(&st_done) != 0u) {
            break;
        }
        var q_new: array<T, 4>;
        var r_new: array<T, 4>;
        // W = Z·R, Qn = Q·Z
        for (var t = 0u; t < 4u; t = t + 1u) {
            let e = lid + 256u * t;
            if (e < kk) {
                let i = e % k;
                let j = e / k;
                var w: T = 0.0;
                var q: T = 0.0;
                for (var l = 0u; l < k; l = l + 1u) {
                    w = w + zs(i, l) * wr[l + j * k];
                    q = q + wq[i + l * k] * zs(l, j);
                }
                ww[e] = w;
                q_new[t] = q;
            }
        }
        workgroupBarrier();
        // Rn = W·Z
        for (var t = 0u; t < 4u; t = t + 1u) {
            let e = lid + 256u * t;
            if (e < kk) {
                let i = e % k;
                let j = e / k;
                var acc: T = 0.0;
                for (var l = 0u; l < k; l = l + 1u) {
                    acc = acc + ww[i + l * k] * zs(l, j);
                }
                r_new[t] = acc;
            }
        }
        workgroupBarrier();
        for (var t = 0u; t < 4u; t = t + 1u) {
            let e = lid + 256u * t;
            if (e < kk) {
                ww[e] = r_new[t];
            }
        }
        workgroupBarrier();
        // R = sym(Rn) and the residual
        var res: T = 0.0;
        for (var t = 0u; t < 4u; t = t + 1u) {
            let e = lid + 256u * t;
            if (e < kk) {
                let i = e % k;
                let j = e / k;
                let v = 0.5 * (ww[e] + ww[j + i * k]);
                let d = v - select(T(0.0), T(1.0), i == j);
                res = res + d * d;
                r_new[t] = v;
            }
        }
        let rr = reduce2(lid, res, 0.0);
        let residual = sqrt(rr.x) / sqrt(T(k));
        let prev = st_prev;
        let best = st_best;
        let steps = st_steps + 1.0;
        let diverged = by_residual && (!is_finite(residual) || residual > prev);
        if (!diverged) {
            for (var t = 0u; t < 4u; t = t + 1u) {
                let e = lid + 256u * t;
                if (e < kk) {
                    wr[e] = r_new[t];
                    wq[e] = q_new[t];
                }
            }
        }
        workgroupBarrier();
        if (lid == 0u) {
            var done = steps >= cap || diverged;
            if (by_residual) {
                done = done || residual <= lanes[lane].c[0].w || (residual > 0.5 * best && best < 1e-3);
            }
            st_done = select(0u, 1u, done);
            if (!diverged) {
                st_steps = steps;
                st_prev = residual;
                st_best = min(best, residual);
            }
        }
        workgroupBarrier();
    }
    let finish = (params.mode & 8u) != 0u;
    for (var e = lid; e < kk; e = e + 256u) {
        small[lane_b5 + r_at(e)] = wr[e];
        small[lane_b5 + q_at(e)] = wq[e];
        if (finish) {
            small[lane_b5 + params.off2 + e] = wq[e] / sqrt(small[lane_b5 + params.slot]);
        }
    }
    if (lid == 0u) {
        small[lane_b5 + params.slot + 1u] = select(T(0.0), T(1.0), st_done != 0u);
        small[lane_b5 + params.slot + 2u] = st_steps;
        small[lane_b5 + params.slot + 3u] = st_prev;
        small[lane_b5 + params.slot + 4u] = st_best;
    }
    if ((params.mode & 16u) != 0u) {
        // (with bit 8) the corrected blend of this T, as blend_matrix with TS: T_w to small[k2],
        // TS to off3, tr S to small[groups_x]; w = c1.y, the threshold c1.z
        storageBarrier();
        blend_tw(lid, params.off2, params.off0, params.off3, params.k2, params.groups_x,
            lanes[lane].c[1].y, lanes[lane].c[1].z, true, true);
    }
}
