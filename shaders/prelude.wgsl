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
