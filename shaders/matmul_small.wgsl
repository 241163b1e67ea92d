// p×k times k×k products (Y·S, Y·T_w, the gradient's Y·M) with a fused epilogue:
//   out = c0·(A·M) + c1·A [+ c4·out, mode bit 0] + c2·B [or c2·(A − B), mode bit 1] + c3·C,
// where M lives in the small buffer at off0 (column-major k×k) and c0..c3 may be device
// scalars. Each invocation owns one row and a block of 16 output columns, so A is read
// ⌈k/16⌉ times; the column blocks of a row block are adjacent workgroups (x fastest), which
// keeps those re-reads in cache. An invocation loops k times.

// After prelude.wgsl (T, Params, Lane, bindings 0/5/6/7, enter_lane, coef, reduce2, …).
@group(0) @binding(1) var<storage, read_write> a: array<T>;
@group(0) @binding(2) var<storage, read_write> b: array<T>;
@group(0) @binding(3) var<storage, read_write> cm: array<T>;
@group(0) @binding(4) var<storage, read_write> out: array<T>;

const CB: u32 = 16u;

// The fused epilogue for entry i with product value `prod`, in the oracle's order: the
// product, the radial term, the accumulated output, then the fidelity term.
fn epilogue(i: u32, prod: T) {
    let c1 = coef(1u);
    let c2 = coef(2u);
    let c3 = coef(3u);
    let c4 = lanes[lane].c[1].x;
    var v = coef(0u) * prod;
    if (c1 != 0.0) {
        v = v + c1 * a[lane_b1 + i];
    }
    if ((params.mode & 1u) != 0u) {
        v = v + c4 * out[lane_b4 + i];
    }
    if (c2 != 0.0) {
        if ((params.mode & 2u) != 0u) {
            v = v + c2 * (a[lane_b1 + i] - b[lane_b2 + i]);
        } else {
            v = v + c2 * b[lane_b2 + i];
        }
    }
    if (c3 != 0.0) {
        v = v + c3 * cm[lane_b3 + i];
    }
    // mode bit 2 (4): clamped at zero as nonneg_in_place mode 0 would clamp it afterwards
    if ((params.mode & 4u) != 0u) {
        v = select(v, 0.0, v < 0.0);
    }
    out[lane_b4 + i] = v;
}

// M[l, j] for a column that may lie past k (then 0; the index is clamped to stay in bounds)
fn m_at(l: u32, j: u32) -> T {
    let k = params.k;
    let v = small[lane_b5 + params.off0 + l + min(j, k - 1u) * k];
    return select(T(0.0), v, j < k);
}

// The workgroup's k×16 block of M, staged once (k ≤ MS_K); every invocation then reads the
// same entry at the same time, a broadcast.
const MS_K: u32 = 128u;
var<workgroup> ms: array<T, 2048>;

fn m_block(l: u32, c: u32, j0: u32, staged: bool) -> T {
    if (staged) {
        return ms[l + c * params.k];
    }
    return m_at(l, j0 + c);
}

// dispatch: (⌈k/16⌉, ⌈p/256⌉) — column block fastest. Four vec4 accumulators keep the 16
// partial sums in registers (a dynamically indexed array would spill to local memory).
@compute @workgroup_size(256)
fn mul_small(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    enter_lane(wid.z);
    let p = params.p;
    let k = params.k;
    let r = wid.y * 256u + lid.x;
    let j0 = wid.x * CB;
    let staged = k <= MS_K;
    if (staged) {
        for (var idx = lid.x; idx < k * CB; idx = idx + 256u) {
            ms[idx] = m_at(idx % k, j0 + idx / k);
        }
    }
    workgroupBarrier();
    if (r >= p) {
        return;
    }
    var acc0 = vec4<T>(0.0);
    var acc1 = vec4<T>(0.0);
    var acc2 = vec4<T>(0.0);
    var acc3 = vec4<T>(0.0);
    for (var l = 0u; l < k; l = l + 1u) {
        let y = a[lane_b1 + r + l * p];
        acc0 = acc0 + y * vec4<T>(m_block(l, 0u, j0, staged), m_block(l, 1u, j0, staged), m_block(l, 2u, j0, staged), m_block(l, 3u, j0, staged));
        acc1 = acc1 + y * vec4<T>(m_block(l, 4u, j0, staged), m_block(l, 5u, j0, staged), m_block(l, 6u, j0, staged), m_block(l, 7u, j0, staged));
        acc2 = acc2 + y * vec4<T>(m_block(l, 8u, j0, staged), m_block(l, 9u, j0, staged), m_block(l, 10u, j0, staged), m_block(l, 11u, j0, staged));
        acc3 = acc3 + y * vec4<T>(m_block(l, 12u, j0, staged), m_block(l, 13u, j0, staged), m_block(l, 14u, j0, staged), m_block(l, 15u, j0, staged));
    }
    let jn = min(CB, k - j0);
    for (var c = 0u; c < jn; c = c + 1u) {
        var prod: T;
        switch (c / 4u) {
            case 0u: { prod = acc0[c % 4u]; }
            case 1u: { prod = acc1[c % 4u]; }
            case 2u: { prod = acc2[c % 4u]; }
            default: { prod = acc3[c % 4u]; }
        }
        epilogue(r + (j0 + c) * p, prod);
    }
}

