// Reductions of p×k matrices to scalars, in a fixed order and without atomics: pass 1
// (`partial_sums`) has each of G workgroups reduce a strided share of the entries through a
// workgroup tree and write one partial; the host adds the G partials of a readback in f64,
// or `finalize` adds them on the device when the scalar is consumed there.
// Each invocation loops ⌈n / (256·G)⌉ times, which the host keeps far below 65 535.

// After prelude.wgsl (T, Params, Lane, bindings 0/5/6/7, enter_lane, coef, reduce2, …).
@group(0) @binding(1) var<storage, read_write> a: array<T>;
@group(0) @binding(2) var<storage, read_write> b: array<T>;
@group(0) @binding(3) var<storage, read_write> c: array<T>;

fn term(i: u32) -> T {
    switch (params.mode) {
        case 0u: {
            let x = a[lane_b1 + i];
            return x * x;
        }
        case 1u: {
            return a[lane_b1 + i] * b[lane_b2 + i];
        }
        case 2u: {
            let d = a[lane_b1 + i] - b[lane_b2 + i];
            return d * d;
        }
        case 3u: {
            // squared gradient mapping: ‖P(y − t·g) − y‖², P the clamp to ≥ 0 when mode flag set
            let y = a[lane_b1 + i];
            var z = y - lanes[lane].c[0].x * b[lane_b2 + i];
            if (params.k2 == 1u && z < 0.0) {
                z = 0.0;
            }
            let d = z - y;
            return d * d;
        }
        case 5u: {
            return abs(a[lane_b1 + i]);
        }
        case 6u: {
            return select(T(0.0), T(1.0), abs(a[lane_b1 + i] * lanes[lane].c[0].x) > lanes[lane].c[0].y);
        }
        case 7u: {
            return select(T(0.0), T(1.0), a[lane_b1 + i] != b[lane_b2 + i]);
        }
        case 8u: {
            let g = b[lane_b2 + i];
            return select(T(0.0), g * g, a[lane_b1 + i] > 0.0 || g < 0.0);
        }
        default: {
            return select(T(1.0), T(0.0), is_finite(a[lane_b1 + i]));
        }
    }
}

// mode: 0 ‖a‖², 1 ⟨a,b⟩, 2 ‖a−b‖², 3 gradient mapping, 4 count of non-finite entries,
// 5 Σ|a|, 6 count of |c0·a| > c1, 7 count of a ≠ b, 8 Σ b² over a > 0 or b < 0 (the
// gradient b where Y = a ≥ 0 leaves it free).
// Writes aux[off0 + wid] for wid < G = groups_x.
@compute @workgroup_size(256)
fn partial_sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    enter_lane(wid.z);
    let stride = params.groups_x * 256u;
    var acc: T = 0.0;
    for (var i = wid.x * 256u + lid.x; i < params.n; i = i + stride) {
        acc = acc + term(i);
    }
    tree_sum_into(acc, lid.x, params.off0 + wid.x);
}

// Operand `which` of partial_sums_multi: 0 a, 1 b, 2 c.
fn operand(which: u32, i: u32) -> T {
    switch (which) {
        case 1u: {
            return b[lane_b2 + i];
        }
        case 2u: {
            return c[lane_b3 + i];
        }
        default: {
            return a[lane_b1 + i];
        }
    }
}

// term(i) of partial_sums with x = its first operand's entry and y = its second's: the same
// expressions, so a fused sum has the bits of the separate one.
fn term_of(mode: u32, x: T, y: T) -> T {
    switch (mode) {
        case 0u: {
            return x * x;
        }
        case 1u: {
            return x * y;
        }
        case 2u: {
            let d = x - y;
            return d * d;
        }
        case 3u: {
            var z = x - lanes[lane].c[0].x * y;
            if (params.k2 == 1u && z < 0.0) {
                z = 0.0;
            }
            let d = z - x;
            return d * d;
        }
        case 5u: {
            return abs(x);
        }
        case 6u: {
            return select(T(0.0), T(1.0), abs(x * lanes[lane].c[0].x) > lanes[lane].c[0].y);
        }
        case 7u: {
            return select(T(0.0), T(1.0), x != y);
        }
        case 8u: {
            return select(T(0.0), y * y, x > 0.0 || y < 0.0);
        }
        default: {
            return select(T(1.0), T(0.0), is_finite(x));
        }
    }
}

fn slot_term(spec: u32, i: u32) -> T {
    return term_of(spec & 0xffu, operand((spec >> 8u) & 0xffu, i), operand((spec >> 16u) & 0xffu, i));
}

// The workgroup's sum of acc by a fixed tree, written to aux[at] by invocation 0 (every
// partial sum ends here, fused or not, so fusing changes no bit). Called in uniform control
// flow.
fn tree_sum_into(acc: T, lid: u32, at: u32) {
    tree[lid] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            tree[lid] = tree[lid] + tree[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        aux[lane_b6 + at] = tree[0];
    }
    workgroupBarrier();
}

// One to four partial_sums over one index space in one pass (each operand read once):
// sum s < slot has spec p, k, chunk, mode (s = 0, 1, 2, 3) = mode | first << 8 | second << 16
// (operands 0 a, 1 b, 2 c) and writes aux[off_s + wid] for wid < G = groups_x. Each sum is
// accumulated and reduced exactly as partial_sums does it alone.
// Then up to two energy evaluations' Gram statistics, each what gram_stats (small.wgsl)
// writes, computed as it does them by workgroup 0 (the others write their zero partials):
// pair m is (Gram slot src[2m] in small, readback slot src[2m + 1] in aux), LITERAL when
// absent, and k is the top byte of p; a pair's Gram may first be reduced from its chunk
// partials (fold).
@compute @workgroup_size(256)
fn partial_sums_multi(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    enter_lane(wid.z);
    let stride = params.groups_x * 256u;
    var acc0: T = 0.0;
    var acc1: T = 0.0;
    var acc2: T = 0.0;
    var acc3: T = 0.0;
    for (var i = wid.x * 256u + lid.x; i < params.n; i = i + stride) {
        acc0 = acc0 + slot_term(params.p, i);
        if (params.slot > 1u) {
            acc1 = acc1 + slot_term(params.k, i);
        }
        if (params.slot > 2u) {
            acc2 = acc2 + slot_term(params.chunk, i);
        }
        if (params.slot > 3u) {
            acc3 = acc3 + slot_term(params.mode, i);
        }
    }
    tree_sum_into(acc0, lid.x, params.off0 + wid.x);
    if (params.slot > 1u) {
        tree_sum_into(acc1, lid.x, params.off1 + wid.x);
    }
    if (params.slot > 2u) {
        tree_sum_into(acc2, lid.x, params.off2 + wid.x);
    }
    if (params.slot > 3u) {
        tree_sum_into(acc3, lid.x, params.off3 + wid.x);
    }
    let k = params.p >> 24u;
    // a Gram whose chunk partials wait for their reduce (fold[m]: where pair m's partials
    // start in aux, LITERAL when its Gram is complete; fold[2]: their count): workgroup 0
    // adds them first, as gram_reduce would
    for (var m = 0u; m < 2u; m = m + 1u) {
        if (params.fold[m] != LITERAL) {
            if (wid.x == 0u) {
                reduce_gram_partials(lid.x, k, params.fold[2], params.fold[m], params.src[2u * m]);
            }
            storageBarrier();
            workgroupBarrier();
        }
    }
    // workgroup 0 reads the Gram; the others' loops run no trip (the barriers in reduce2
    // stay in uniform control flow)
    let entries = select(0u, k * k, wid.x == 0u);
    let diag = select(0u, k, wid.x == 0u);
    for (var m = 0u; m < 2u; m = m + 1u) {
        let gram = params.src[2u * m];
        if (gram != LITERAL) {
            var fro: T = 0.0;
            var dsq: T = 0.0;
            for (var e = lid.x; e < entries; e = e + 256u) {
                let v = small[lane_b5 + gram + e];
                fro = fro + v * v;
            }
            for (var j = lid.x; j < diag; j = j + 256u) {
                let d = small[lane_b5 + gram + j + j * k];
                dsq = dsq + d * d;
            }
            let s = reduce2(lid.x, fro, dsq);
            if (lid.x == 0u) {
                let dest = params.src[2u * m + 1u];
                aux[lane_b6 + dest + wid.x] = select(T(0.0), s.x, wid.x == 0u);
                aux[lane_b6 + dest + params.groups_x + wid.x] = select(T(0.0), s.y, wid.x == 0u);
            }
        }
    }
}

// Adds the `chunk` partials at aux[off0 ..] in a fixed order into small[off1]; then, as mode
// asks, turns the sum into a device coefficient:
//   0: the sum itself;
//   1: the reference retraction's renormalisation: with n = √sum and ‖Y‖ = √small[off2],
//      small[off1] = ‖Y‖/n when n > 1e-12 and ‖Y‖ ≥ 1e-12, else 1.
@compute @workgroup_size(256)
fn finalize(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) lane_wid: vec3<u32>) {
    enter_lane(lane_wid.z);
    var acc: T = 0.0;
    for (var i = lid.x; i < params.chunk; i = i + 256u) {
        acc = acc + aux[lane_b6 + params.off0 + i];
    }
    tree[lid.x] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid.x < s) {
            tree[lid.x] = tree[lid.x] + tree[lid.x + s];
        }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        let total = tree[0];
        if (params.mode == 0u) {
            small[lane_b5 + params.off1] = total;
        } else {
            let n = sqrt(total);
            let norm_y = sqrt(max(small[lane_b5 + params.off2], 0.0));
            small[lane_b5 + params.off1] = select(T(1.0), norm_y / n, n > 1e-12 && norm_y >= 1e-12);
        }
    }
}
