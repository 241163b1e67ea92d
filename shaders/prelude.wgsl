// The prelude of every kernel family (every file under shaders/ but bandwidth.wgsl):
// `assemble` in src/gpu/shaders.rs puts this file in front of the family's own source, and
// `specialize` then rewrites the element type, so the assembled text is what naga and the
// driver compile. A family file is therefore not valid WGSL on its own; it declares only its
// bindings 1–4 (their names and types differ between families) and its own constants,
// workgroup memory and functions, and must not redeclare a name declared here. What a family
// does not use is harmless: an entry point's interface holds only the globals it reaches.

alias T = f32;

// The uniform shared by every kernel family (`ParamsHeader` in src/gpu/params.rs).
struct Params {
    p: u32, k: u32, n: u32, mode: u32,
    k2: u32, off0: u32, off1: u32, off2: u32,
    off3: u32, slot: u32, groups_x: u32, chunk: u32,
    src: vec4<u32>,
    fold: vec4<u32>,
}

// What differs between the problems of a batched dispatch (one entry per problem, indexed by
// workgroup_id.z): where each binding's data starts, in elements, and the coefficients.
struct Lane {
    base: array<vec4<u32>, 2>,
    c: array<vec4<T>, 2>,
}

// A coefficient source naming no device scalar (`LITERAL` in src/gpu/params.rs).
const LITERAL: u32 = 0xffffffffu;

// The workspace bindings, the same in every family (the layout is `bind_group_layout_entries`
// in src/gpu/kernels.rs): the uniform, the small k×k buffer, the aux partials buffer and the
// per-problem entries.
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(5) var<storage, read_write> small: array<T>;
@group(0) @binding(6) var<storage, read_write> aux: array<T>;
@group(0) @binding(7) var<storage, read> lanes: array<Lane>;

// The problem of this workgroup and, for binding N, where its data starts (`lane_bN`).
var<private> lane: u32;
var<private> lane_b1: u32;
var<private> lane_b2: u32;
var<private> lane_b3: u32;
var<private> lane_b4: u32;
var<private> lane_b5: u32;
var<private> lane_b6: u32;

// Selects the problem of this workgroup: its coefficients and the start of its data.
fn enter_lane(z: u32) {
    lane = z;
    lane_b1 = lanes[z].base[0].x;
    lane_b2 = lanes[z].base[0].y;
    lane_b3 = lanes[z].base[0].z;
    lane_b4 = lanes[z].base[0].w;
    lane_b5 = lanes[z].base[1].x;
    lane_b6 = lanes[z].base[1].y;
}

// Coefficient i: the literal from the uniform plus, when a device slot is named, that scalar.
fn coef(i: u32) -> T {
    var v = lanes[lane].c[i / 4u][i % 4u];
    if (i < 4u && params.src[i] != LITERAL) {
        v = v + small[lane_b5 + params.src[i]];
    }
    return v;
}

// combine's two-operand modes, shared with gram_partial's fused variant so that a candidate
// and its Gram see the same entries: mode 0 `c0·x + c1·y` (lincomb), mode 1 `x + c0·(y − x)`
// (lerp, written like the CPU oracle).
fn combine_value(mode: u32, x: T, y: T) -> T {
    let c0 = coef(0u);
    if (mode == 0u) {
        return c0 * x + coef(1u) * y;
    }
    return x + c0 * (y - x);
}

// NaN and ±Inf have an all-ones exponent; tested on the bits because shader compilers may
// assume comparisons never see NaN.
fn is_finite(x: T) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u; // @f64 return abs(x) <= 1.7976931348623157e308;
}

// Workgroup trees of 256 entries (one per invocation of a 256-wide workgroup).
var<workgroup> tree: array<T, 256>;
var<workgroup> tree2: array<T, 256>;

// The sums of x and of y over a 256-wide workgroup, by a fixed tree (same input, same bits);
// every invocation gets both.
fn reduce2(lid: u32, x: T, y: T) -> vec2<T> {
    tree[lid] = x;
    tree2[lid] = y;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            tree[lid] = tree[lid] + tree[lid + s];
            tree2[lid] = tree2[lid] + tree2[lid + s];
        }
        workgroupBarrier();
    }
    let r = vec2<T>(tree[0], tree2[0]);
    workgroupBarrier();
    return r;
}

// The soft-polar blend matrix T_w into small[out_at] from T (t_at), S (s_at) and, in corrected
// style, TS (ts_at), by one whole workgroup of 256 (in uniform control flow):
//   reference style: T_w = w·T + (1−w)·I;
//   corrected style: T_w = (w·c)·T + (1−w)·I with c = tr(TS)/tr(TS·T) (0 if that is ≤ 0);
// T_w = I (the retraction leaves Y unchanged) when tr S < keep_below (reference: ‖Y‖ <
// 1e-12, so 1e-24; corrected: tr S = 0, so the smallest positive value). Writes tr S to
// small[trace_at]. with_ts: first compute TS = T·S into ts_at, as kk_matmul's mode 0 does
// entry by entry (the same sums in the same order), saving its launch; for k ≤ 64, which
// keeps each invocation's loop trips far below Mesa 22.3's 65,535 cap. blend_matrix
// (small.wgsl) and ns_shared's last dispatch (inv_sqrt.wgsl) call it.
fn blend_tw(lid: u32, t_at: u32, s_at: u32, ts_at: u32, out_at: u32, trace_at: u32, w: T,
            keep_below: T, corrected: bool, with_ts: bool) {
    let k = params.k;
    if (with_ts) {
        for (var e = lid; e < k * k; e = e + 256u) {
            let i = e % k;
            let j = e / k;
            var acc: T = 0.0;
            for (var l = 0u; l < k; l = l + 1u) {
                acc = acc + small[lane_b5 + t_at + i + l * k] * small[lane_b5 + s_at + l + j * k];
            }
            small[lane_b5 + ts_at + e] = acc;
        }
        storageBarrier();
    }
    var tr: T = 0.0;
    var num: T = 0.0;
    var den: T = 0.0;
    for (var i = lid; i < k; i = i + 256u) {
        tr = tr + small[lane_b5 + s_at + i + i * k];
    }
    if (corrected) {
        // tr(TS) = Σ_i (TS)_ii; tr(TS·T) = Σ_i Σ_l (TS)_il T_li, accumulated per row i
        for (var i = lid; i < k; i = i + 256u) {
            num = num + small[lane_b5 + ts_at + i + i * k];
            var row: T = 0.0;
            for (var l = 0u; l < k; l = l + 1u) {
                row = row + small[lane_b5 + ts_at + i + l * k] * small[lane_b5 + t_at + l + i * k];
            }
            den = den + row;
        }
    }
    let s = reduce2(lid, tr, num);
    let d = reduce2(lid, den, 0.0);
    let trace_s = s.x;
    var scale = w;
    if (corrected) {
        scale = w * select(T(0.0), s.y / d.x, d.x > 0.0);
    }
    let keep = trace_s < keep_below;
    for (var e = lid; e < k * k; e = e + 256u) {
        let i = e % k;
        let j = e / k;
        var v: T = 0.0;
        if (keep) {
            v = select(T(0.0), T(1.0), i == j);
        } else {
            v = scale * small[lane_b5 + t_at + e];
            if (i == j) {
                v = v + (1.0 - w);
            }
        }
        small[lane_b5 + out_at + e] = v;
    }
    if (lid == 0u) {
        small[lane_b5 + trace_at] = trace_s;
    }
}

// small[dest ..] = the sum of a k×k Gram's `chunks` partials at aux[first + c·k² ..] in
// gram_reduce's order (gram.wgsl, mode 0), by one workgroup of 256 invocations: for an entry,
// thread l adds the partials c ≡ l (mod 64) in increasing c, then its tree adds
// acc[l] + acc[l + s] for s = 32, 16, …, 1; the same additions on the same values give the
// same bits. Each invocation does this for the entries lid + 256·t it owns (k ≤ 32). The
// caller follows it with storageBarrier and workgroupBarrier before the sum is read.
fn reduce_gram_partials(lid: u32, k: u32, chunks: u32, first: u32, dest: u32) {
    let kk = k * k;
    for (var t = 0u; t < 4u; t = t + 1u) {
        let e = lid + 256u * t;
        if (e < kk) {
            var acc: array<T, 64>;
            for (var l = 0u; l < 64u; l = l + 1u) {
                var a: T = 0.0;
                for (var c = l; c < chunks; c = c + 64u) {
                    a = a + aux[lane_b6 + first + c * kk + e];
                }
                acc[l] = a;
            }
            for (var s = 32u; s > 0u; s = s >> 1u) {
                for (var l = 0u; l < s; l = l + 1u) {
                    acc[l] = acc[l] + acc[l + s];
                }
            }
            small[lane_b5 + dest + e] = acc[0];
        }
    }
}
