// Products A·B of a dense column-major A (m×c: S = XᵀX, or X and Xᵀ for the matrix-free
// Gram operator) by a skinny B (c×kb: the basis), the one large operation of a data fit.
// One invocation owns one row of the result, so adjacent invocations read adjacent entries of
// A's columns (coalesced) while B's entry is the same for the whole workgroup. The inner
// dimension is cut into chunks of `chunk` entries (grid y); each chunk's partial row goes to
// aux and `skinny_reduce` adds the chunks in chunk order. Every entry is a sum in a fixed
// order (inner index increasing within a chunk, then chunks increasing): same input, same
// bits, no atomics. An invocation loops ⌈kb/8⌉·chunk times in pass 1 (the host keeps that
// ≤ 4096) and ⌈c/chunk⌉ times in pass 2, far below Mesa 22.3's 65 535 cap.

// After prelude.wgsl (T, Params, Lane, bindings 0/5/6/7, enter_lane, coef, reduce2, …).
@group(0) @binding(1) var<storage, read_write> a: array<T>;
@group(0) @binding(2) var<storage, read_write> b: array<T>;
@group(0) @binding(4) var<storage, read_write> out: array<T>;

// The fit's products are never batched: no kernel here calls enter_lane.

// Columns of B per pass over a chunk, unrolled by hand: a loop over them would count toward
// the per-invocation loop cap of Mesa 22.3.
const KB: u32 = 8u;

// mode 0 writes the result, mode 1 a chunk's partial.
fn put(at: u32, v: T) {
    if (params.mode == 1u) {
        aux[at] = v;
    } else {
        out[at] = v;
    }
}

// dispatch: (⌈m/256⌉, chunks). p = m (rows of A), k = c (inner), k2 = kb, chunk = inner
// entries per chunk. mode 0 (one chunk): out[i + j·m]; mode 1: the partial of chunk y at
// aux[y·m·kb + i + j·m].
@compute @workgroup_size(256)
fn skinny_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = params.p;
    let inner = params.k;
    let kb = params.k2;
    let i = wid.x * 256u + lid.x;
    if (i >= m) {
        return;
    }
    let c0 = wid.y * params.chunk;
    let c1 = min(c0 + params.chunk, inner);
    var dst = i;
    if (params.mode == 1u) {
        dst = wid.y * m * kb + i;
    }
    for (var j0 = 0u; j0 < kb; j0 = j0 + KB) {
        // columns past kb read column kb − 1 and are not written
        let last = kb - 1u;
        let o0 = min(j0, last) * inner;
        let o1 = min(j0 + 1u, last) * inner;
        let o2 = min(j0 + 2u, last) * inner;
        let o3 = min(j0 + 3u, last) * inner;
        let o4 = min(j0 + 4u, last) * inner;
        let o5 = min(j0 + 5u, last) * inner;
        let o6 = min(j0 + 6u, last) * inner;
        let o7 = min(j0 + 7u, last) * inner;
        var s0: T = 0.0;
        var s1: T = 0.0;
        var s2: T = 0.0;
        var s3: T = 0.0;
        var s4: T = 0.0;
        var s5: T = 0.0;
        var s6: T = 0.0;
        var s7: T = 0.0;
        for (var c = c0; c < c1; c = c + 1u) {
            let x = a[i + c * m];
            s0 = s0 + x * b[o0 + c];
            s1 = s1 + x * b[o1 + c];
            s2 = s2 + x * b[o2 + c];
            s3 = s3 + x * b[o3 + c];
            s4 = s4 + x * b[o4 + c];
            s5 = s5 + x * b[o5 + c];
            s6 = s6 + x * b[o6 + c];
            s7 = s7 + x * b[o7 + c];
        }
        let n = min(KB, kb - j0);
        let base = dst + j0 * m;
        put(base, s0);
        if (n > 1u) { put(base + m, s1); }
        if (n > 2u) { put(base + 2u * m, s2); }
        if (n > 3u) { put(base + 3u * m, s3); }
        if (n > 4u) { put(base + 4u * m, s4); }
        if (n > 5u) { put(base + 5u * m, s5); }
        if (n > 6u) { put(base + 6u * m, s6); }
        if (n > 7u) { put(base + 7u * m, s7); }
    }
}

// dispatch: a 2-D grid of ⌈n/256⌉ workgroups, groups_x along x. n = m·kb entries, chunk =
// the number of chunks: out[e] = Σ_y aux[y·n + e], y increasing.
@compute @workgroup_size(256)
fn skinny_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = (wid.x + wid.y * params.groups_x) * 256u + lid.x;
    let n = params.n;
    if (e >= n) {
        return;
    }
    var s: T = 0.0;
    for (var y = 0u; y < params.chunk; y = y + 1u) {
        s = s + aux[y * n + e];
    }
    out[e] = s;
}
