// Gram products AᵀB of tall column-major matrices (A p×ka, B p×kb; p up to millions), split
// over the rows: pass 1 (`gram_partial`) gives each workgroup a chunk of `chunk` rows and a
// 32×32 tile of the output and writes that chunk's partial product; pass 2 (`gram_reduce`)
// adds the partials of every entry in chunk order. Fixed order, no atomics: same input, same
// bits. Rows are staged through workgroup memory 32 at a time, loaded along the columns'
// contiguous direction. An invocation loops about `chunk` times in pass 1 (the host keeps
// chunk ≤ 4096; ⌈chunk/32⌉·4k times more when it forms a product, which the host checks
// against the trip budget) and ⌈p/chunk⌉/64 times in pass 2, far below Mesa 22.3's 65 535 cap.

// After prelude.wgsl (T, Params, Lane, bindings 0/5/6/7, enter_lane, coef, reduce2, …).
@group(0) @binding(1) var<storage, read_write> a: array<T>;
@group(0) @binding(2) var<storage, read_write> b: array<T>;
@group(0) @binding(4) var<storage, read_write> out: array<T>;

// mode bits of gram_partial
const GRAM_DIRECT: u32 = 1u;
// the operand is combine_value(off2, a, b), written to `out` as it is staged (k ≤ 32: one
// tile, so each entry is staged by one invocation of one workgroup); AᵀA of it
const GRAM_COMBINE: u32 = 2u;
// that operand clamped at zero first, as nonneg_in_place mode 0 would clamp it afterwards
const GRAM_CLAMP: u32 = 4u;
// the operand is c0·(A·small[off3]) (k×k, column-major), each entry summed over l in order
// as mul_small sums it, written to `out` as it is staged; AᵀA of it
const GRAM_PRODUCT: u32 = 8u;

const TILE: u32 = 32u;
const SLAB: u32 = 32u;
// one padding entry per column keeps the columns a warp reads in different banks
const STRIDE: u32 = 33u;

var<workgroup> sa: array<T, 1056>;
var<workgroup> sb: array<T, 1056>;

// dispatch: (chunks, tiles_a · tiles_b), 32×32 output tiles; 16×16 invocations each own a
// 2×2 block (one shared-memory load per multiply-add). k = ka, k2 = kb; the partial of chunk
// c goes to aux[off0 + c·ka·kb], column-major ka×kb. With GRAM_COMBINE the operand is formed
// from a and b on the fly (and written to out) and its own Gram taken.
@compute @workgroup_size(16, 16)
fn gram_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    enter_lane(wid.z);
    let p = params.p;
    let ka = params.k;
    let kb = params.k2;
    let tiles_a = (ka + TILE - 1u) / TILE;
    let ta = wid.y % tiles_a;
    let tb = wid.y / tiles_a;
    let row0 = wid.x * params.chunk;
    let row_end = min(row0 + params.chunk, p);
    let lin = lid.x + lid.y * 16u;
    var acc00: T = 0.0;
    var acc01: T = 0.0;
    var acc10: T = 0.0;
    var acc11: T = 0.0;
    let a0 = (2u * lid.x) * STRIDE;
    let a1 = a0 + STRIDE;
    let b0 = (2u * lid.y) * STRIDE;
    let b1 = b0 + STRIDE;
    for (var r0 = row0; r0 < row_end; r0 = r0 + SLAB) {
        for (var t = 0u; t < 4u; t = t + 1u) {
            let e = lin + t * 256u;
            let rr = e % SLAB;
            let cc = e / SLAB;
            let row = r0 + rr;
            let ca = ta * TILE + cc;
            let cb = tb * TILE + cc;
            var va: T = 0.0;
            var vb: T = 0.0;
            if ((params.mode & (GRAM_COMBINE | GRAM_PRODUCT)) != 0u) {
                if (row < row_end && ca < ka) {
                    let at = row + ca * p;
                    if ((params.mode & GRAM_COMBINE) != 0u) {
                        va = combine_value(params.off2, a[lane_b1 + at], b[lane_b2 + at]);
                    } else {
                        var acc: T = 0.0;
                        for (var l = 0u; l < ka; l = l + 1u) {
                            acc = acc + a[lane_b1 + row + l * p] * small[lane_b5 + params.off3 + l + ca * ka];
                        }
                        va = coef(0u) * acc;
                    }
                    if ((params.mode & GRAM_CLAMP) != 0u) {
                        va = select(va, 0.0, va < 0.0);
                    }
                    out[lane_b4 + at] = va;
                }
                vb = va;
            } else {
                if (row < row_end && ca < ka) {
                    va = a[lane_b1 + row + ca * p];
                }
                if (row < row_end && cb < kb) {
                    vb = b[lane_b2 + row + cb * p];
                }
            }
            sa[cc * STRIDE + rr] = va;
            sb[cc * STRIDE + rr] = vb;
        }
        workgroupBarrier();
        for (var rr = 0u; rr < SLAB; rr = rr + 1u) {
            let x0 = sa[a0 + rr];
            let x1 = sa[a1 + rr];
            let y0 = sb[b0 + rr];
            let y1 = sb[b1 + rr];
            acc00 = acc00 + x0 * y0;
            acc01 = acc01 + x0 * y1;
            acc10 = acc10 + x1 * y0;
            acc11 = acc11 + x1 * y1;
        }
        workgroupBarrier();
    }
    let ia = ta * TILE + 2u * lid.x;
    let ib = tb * TILE + 2u * lid.y;
    if (ia < ka && ib < kb) {
        put_gram(wid.x, ia + ib * ka, acc00);
    }
    if (ia < ka && ib + 1u < kb) {
        put_gram(wid.x, ia + (ib + 1u) * ka, acc01);
    }
    if (ia + 1u < ka && ib < kb) {
        put_gram(wid.x, ia + 1u + ib * ka, acc10);
    }
    if (ia + 1u < ka && ib + 1u < kb) {
        put_gram(wid.x, ia + 1u + (ib + 1u) * ka, acc11);
    }
}

// Entry e of this workgroup's chunk partial: to aux[off0 + chunk·ka·kb + e], or with GRAM_DIRECT
// (one chunk, ka×kb not symmetrised) to small[off1 + e], the value gram_reduce would have
// written: it adds the partial to zeros, which changes only a −0 (to +0).
fn put_gram(chunk: u32, e: u32, v: T) {
    if ((params.mode & GRAM_DIRECT) != 0u) {
        small[lane_b5 + params.off1 + e] = select(v, T(0.0), v == 0.0);
    } else {
        aux[lane_b6 + params.off0 + chunk * params.k * params.k2 + e] = v;
    }
}

var<workgroup> tree64: array<T, 64>;
var<workgroup> tree64_t: array<T, 64>;

// One workgroup of 64 per output entry (a 2-D grid of ka·kb workgroups whose row length is
// `chunk`); chunks = groups_x. Each thread adds every 64th partial, then a fixed tree adds
// the 64 sums: the same order every time. mode 0: small[off1 + e] = Σ_c partial_c[e];
// mode 1 (ka = kb): the symmetric part ½(P + Pᵀ), each half summed in the same order.
@compute @workgroup_size(64)
fn gram_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    enter_lane(wid.z);
    let ka = params.k;
    let kb = params.k2;
    let size = ka * kb;
    let e = wid.x + wid.y * params.chunk;
    let lid = lid3.x;
    let valid = e < size;
    let ee = min(e, size - 1u);
    let i = ee % ka;
    let j = ee / ka;
    let et = j + i * ka;
    var acc: T = 0.0;
    var acc_t: T = 0.0;
    for (var c = lid; c < params.groups_x; c = c + 64u) {
        acc = acc + aux[lane_b6 + params.off0 + c * size + ee];
        if (params.mode == 1u) {
            acc_t = acc_t + aux[lane_b6 + params.off0 + c * size + et];
        }
    }
    tree64[lid] = acc;
    tree64_t[lid] = acc_t;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            tree64[lid] = tree64[lid] + tree64[lid + s];
            tree64_t[lid] = tree64_t[lid] + tree64_t[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u && valid) {
        var v = tree64[0];
        if (params.mode == 1u) {
            v = 0.5 * (v + tree64_t[0]);
        }
        small[lane_b5 + params.off1 + e] = v;
    }
}
