// The elementwise passes of the torch / torch_optimizer 0.3.0 optimizers (the host splits each
// optimizer step into passes, `UpdateRule::passes` in src/backend/mod.rs), and AdamP's
// projection, which follows SGDP's (optimizer.wgsl) three-pass pattern.
//
// `torch_elem`: out[i] ← f(d, a[i], b[i], c[i]) with d = out[i] (or c7 when mode bit 8 is
// set: a state's first step); the formula is `mode & 0xff` (ElemOp in src/backend/mod.rs,
// in the same operation order); literals c0…c7. The destination is never bound as a source.

alias T = f32;

struct Params {
    p: u32, k: u32, n: u32, mode: u32,
    k2: u32, off0: u32, off1: u32, off2: u32,
    off3: u32, slot: u32, groups_x: u32, chunk: u32,
    src: vec4<u32>,
    c: array<vec4<T>, 2>,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<T>;
@group(0) @binding(2) var<storage, read> b: array<T>;
@group(0) @binding(3) var<storage, read> c: array<T>;
@group(0) @binding(4) var<storage, read_write> out: array<T>;
@group(0) @binding(5) var<storage, read_write> small: array<T>;
@group(0) @binding(6) var<storage, read_write> aux: array<T>;

var<workgroup> t_max: array<T, 256>;
var<workgroup> t_gg: array<T, 256>;
var<workgroup> t_pp: array<T, 256>;
var<workgroup> t_gp: array<T, 256>;
var<workgroup> t_pd: array<T, 256>;

// torch's sign: 0 at 0
fn sgn(x: T) -> T {
    if (x > 0.0) {
        return 1.0;
    }
    if (x < 0.0) {
        return -1.0;
    }
    return 0.0;
}

fn elem(op: u32, d: T, x: T, y: T, z: T) -> T {
    let c0 = params.c[0].x;
    let c1 = params.c[0].y;
    let c2 = params.c[0].z;
    let c3 = params.c[0].w;
    let c4 = params.c[1].x;
    switch (op) {
        case 0u: { return d + (x - d) * c0; }
        case 1u: { return d * c0 + x * c1; }
        case 2u: { return d * c0 + (c1 * x) * x; }
        case 3u: { return d * c0 + (x * x) * c1; }
        case 4u: { return max(d * c0, abs(x) + c1); }
        case 5u: {
            let g2 = x * x;
            return d + sgn(d - g2) * g2 * c0;
        }
        case 6u: {
            let s = sgn(x * y);
            var f: T = 1.0;
            if (s > 0.0) {
                f = c0;
            } else if (s < 0.0) {
                f = c1;
            }
            return min(max(d * f, c2), c3);
        }
        case 7u: { return select(x, T(0.0), sgn(x * d) < 0.0); }
        case 8u: { return x * c3 + c0 * (y / (sqrt(z) / c1 + c2)); }
        case 9u: { return x + c0 * (y / z); }
        case 10u: { return x + c0 * (y / (sqrt(z) + c1)); }
        case 11u: { return x + c0 * (y / (sqrt(z / c1) + c2)); }
        case 12u: { return d + c0 * (x / (sqrt(y / c1) + c2)); }
        case 13u: { return x - (((y / c0) * c1) * (c2 / (sqrt(z) + c3))) * c4; }
        case 14u: { return x - (y / c0) * c1; }
        case 15u: { return x + -(sgn(y) * z); }
        case 16u: { return (x + y * c0) + z * c1; }
        case 17u: { return x + -(min(max(c0 / (sqrt(z) + c1), c2), c3) * y); }
        case 18u: { return x + c0 * y; }
        case 19u: { return x + c0 * (y + c1 * z); }
        case 20u: { return x * c0 + y * c1; }
        default: { return y / (sqrt(z) / c1 + c2); }
    }
}

// mode bits 9, 10, 11: whether a, b, c are bound (unbound sources read as 0 and are not
// indexed: the placeholder buffer is smaller than the matrix)
@compute @workgroup_size(256)
fn torch_elem(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * params.groups_x + wid.x) * 256u + lid.x;
    if (i >= params.n) {
        return;
    }
    let m = params.mode;
    var d = out[i];
    if ((m & 256u) != 0u) {
        d = params.c[1].w;
    }
    var x: T = 0.0;
    var y: T = 0.0;
    var z: T = 0.0;
    if ((m & 512u) != 0u) {
        x = a[i];
    }
    if ((m & 1024u) != 0u) {
        y = b[i];
    }
    if ((m & 2048u) != 0u) {
        z = c[i];
    }
    out[i] = elem(m & 255u, d, x, y, z);
}

fn tree5(lid: u32) {
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            t_max[lid] = max(t_max[lid], t_max[lid + s]);
            t_gg[lid] = t_gg[lid] + t_gg[lid + s];
            t_pp[lid] = t_pp[lid] + t_pp[lid + s];
            t_gp[lid] = t_gp[lid] + t_gp[lid + s];
            t_pd[lid] = t_pd[lid] + t_pd[lid + s];
        }
        workgroupBarrier();
    }
}

// AdamP pass 1: a = param, b = grad, c = the direction d; one row per invocation; writes
// (max row cosine, Σg², Σp², Σg·p, Σp·d) of each workgroup at aux[off0 + 5·wid ..], the
// layout `sgdp_decide` (optimizer.wgsl) reads.
@compute @workgroup_size(256)
fn adamp_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let p = params.p;
    let k = params.k;
    let r = wid.x * 256u + lid;
    let eps = params.c[0].z;
    var row_cos: T = 0.0;
    var gg: T = 0.0;
    var pp: T = 0.0;
    var gp: T = 0.0;
    var pd: T = 0.0;
    if (r < p) {
        for (var j = 0u; j < k; j = j + 1u) {
            let i = r + j * p;
            let g = b[i];
            let pv = a[i];
            gg = gg + g * g;
            pp = pp + pv * pv;
            gp = gp + g * pv;
            pd = pd + pv * c[i];
        }
        row_cos = abs(gp) / (sqrt(gg) + eps) / (sqrt(pp) + eps);
    }
    t_max[lid] = row_cos;
    t_gg[lid] = gg;
    t_pp[lid] = pp;
    t_gp[lid] = gp;
    t_pd[lid] = pd;
    tree5(lid);
    if (lid == 0u) {
        let o = params.off0 + 5u * wid.x;
        aux[o] = t_max[0];
        aux[o + 1u] = t_gg[0];
        aux[o + 2u] = t_pp[0];
        aux[o + 3u] = t_gp[0];
        aux[o + 4u] = t_pd[0];
    }
}

// AdamP pass 3 (after `sgdp_decide`): out holds d; out ← p − step·d(projected), in place, one
// row per invocation (a row is read whole before it is written). a = param; c6 = step.
@compute @workgroup_size(256)
fn adamp_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let p = params.p;
    let k = params.k;
    let r = wid.x * 256u + lid3.x;
    if (r >= p) {
        return;
    }
    let eps = params.c[0].z;
    let step = params.c[1].z;
    let kind = small[params.slot];
    var pn = small[params.slot + 2u];
    var s = small[params.slot + 3u];
    if (kind == 1.0) {
        var pp: T = 0.0;
        for (var j = 0u; j < k; j = j + 1u) {
            let pv = a[r + j * p];
            pp = pp + pv * pv;
        }
        pn = sqrt(pp) + eps;
        s = 0.0;
        for (var j = 0u; j < k; j = j + 1u) {
            let i = r + j * p;
            s = s + a[i] / pn * out[i];
        }
    }
    for (var j = 0u; j < k; j = j + 1u) {
        let i = r + j * p;
        let pv = a[i];
        var d = out[i];
        if (kind != 0.0) {
            d = d - pv / pn * s;
        }
        out[i] = pv - step * d;
    }
}
