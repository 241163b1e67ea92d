// The optimizer steps that run on the device. "fast" (plain SGD) is a linear combination
// (elementwise.wgsl), the other registry optimizers are torch_optim.wgsl; this file is the
// radial projection of torch_optimizer 0.3.0's SGDP and AdamP. SGDP:
//   buf ← μ·buf + (1−dampening)·g;  d = buf (or g + μ·buf, Nesterov);
//   the radial part of d is removed per row when every row's cosine |⟨g,p⟩|/(‖g‖+ε)/(‖p‖+ε)
//   is below δ/√k, else for the whole matrix when its cosine is below δ/√(pk), and then the
//   weight decay is scaled by wd_ratio;  out = p·(1 − lr·wd·ratio/(1−μ)) − lr·d.
// Three passes: per-row statistics with per-workgroup partials (one row per invocation, k
// trips), a single-workgroup decision summing the partials in a fixed order, and the update.
// Literals: c0 = μ, c1 = dampening, c2 = ε, c3 = weight decay, c4 = δ, c5 = wd_ratio,
// c6 = lr; mode bit 0 = Nesterov.

// After prelude.wgsl (T, Params, Lane, bindings 0/5/6/7, enter_lane, coef, reduce2, …).
@group(0) @binding(1) var<storage, read_write> param: array<T>;
@group(0) @binding(2) var<storage, read_write> grad: array<T>;
@group(0) @binding(3) var<storage, read_write> buf_in: array<T>;
@group(0) @binding(4) var<storage, read_write> out: array<T>;

var<workgroup> t_max: array<T, 256>;
var<workgroup> t_gg: array<T, 256>;
var<workgroup> t_pp: array<T, 256>;
var<workgroup> t_gp: array<T, 256>;
var<workgroup> t_pd: array<T, 256>;

fn direction(g: T, b: T) -> T {
    if ((params.mode & 1u) != 0u) {
        return g + lanes[lane].c[0].x * b;
    }
    return b;
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

// The workgroup's row statistics (max row cosine, Σg², Σp², Σg·p, Σp·d) at
// aux[off0 + 5·wid ..], where `sgdp_decide` reads them (SGDP and AdamP).
fn row_stats(lid: u32, wid: u32, row_cos: T, gg: T, pp: T, gp: T, pd: T) {
    t_max[lid] = row_cos;
    t_gg[lid] = gg;
    t_pp[lid] = pp;
    t_gp[lid] = gp;
    t_pd[lid] = pd;
    tree5(lid);
    if (lid == 0u) {
        let o = params.off0 + 5u * wid;
        aux[lane_b6 + o] = t_max[0];
        aux[lane_b6 + o + 1u] = t_gg[0];
        aux[lane_b6 + o + 2u] = t_pp[0];
        aux[lane_b6 + o + 3u] = t_gp[0];
        aux[lane_b6 + o + 4u] = t_pd[0];
    }
}

// Pass 1: `out` is the momentum buffer (updated in place); one row per invocation; writes
// (max row cosine, Σg², Σp², Σg·p, Σp·d) of each workgroup at aux[off0 + 5·wid ..].
@compute @workgroup_size(256)
fn sgdp_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    enter_lane(wid.z);
    let lid = lid3.x;
    let p = params.p;
    let k = params.k;
    let r = wid.x * 256u + lid;
    let mu = lanes[lane].c[0].x;
    let damp = 1.0 - lanes[lane].c[0].y;
    let eps = lanes[lane].c[0].z;
    var row_cos: T = 0.0;
    var gg: T = 0.0;
    var pp: T = 0.0;
    var gp: T = 0.0;
    var pd: T = 0.0;
    if (r < p) {
        for (var j = 0u; j < k; j = j + 1u) {
            let i = r + j * p;
            let g = grad[lane_b2 + i];
            let pv = param[lane_b1 + i];
            let b = out[lane_b4 + i] * mu + g * damp;
            out[lane_b4 + i] = b;
            gg = gg + g * g;
            pp = pp + pv * pv;
            gp = gp + g * pv;
            pd = pd + pv * direction(g, b);
        }
        row_cos = abs(gp) / (sqrt(gg) + eps) / (sqrt(pp) + eps);
    }
    row_stats(lid, wid.x, row_cos, gg, pp, gp, pd);
}

// Pass 2 (single workgroup, groups_x partials): small[slot] = projection kind (0 none,
// 1 per row, 2 whole matrix), small[slot+1] = decay factor, small[slot+2] = ‖p‖ + ε,
// small[slot+3] = Σp·d / (‖p‖ + ε).
@compute @workgroup_size(256)
fn sgdp_decide(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) lane_wid: vec3<u32>) {
    enter_lane(lane_wid.z);
    let lid = lid3.x;
    var m: T = 0.0;
    var gg: T = 0.0;
    var pp: T = 0.0;
    var gp: T = 0.0;
    var pd: T = 0.0;
    for (var w = lid; w < params.groups_x; w = w + 256u) {
        let o = params.off0 + 5u * w;
        m = max(m, aux[lane_b6 + o]);
        gg = gg + aux[lane_b6 + o + 1u];
        pp = pp + aux[lane_b6 + o + 2u];
        gp = gp + aux[lane_b6 + o + 3u];
        pd = pd + aux[lane_b6 + o + 4u];
    }
    t_max[lid] = m;
    t_gg[lid] = gg;
    t_pp[lid] = pp;
    t_gp[lid] = gp;
    t_pd[lid] = pd;
    tree5(lid);
    if (lid == 0u) {
        let eps = lanes[lane].c[0].z;
        let delta = lanes[lane].c[1].x;
        var kind: T = 0.0;
        var ratio: T = 1.0;
        if (t_max[0] < delta / sqrt(T(params.k))) {
            kind = 1.0;
            ratio = lanes[lane].c[1].y;
        } else {
            let gn = sqrt(t_gg[0]) + eps;
            let pn = sqrt(t_pp[0]) + eps;
            let c = abs(t_gp[0]) / gn / pn;
            if (c < delta / sqrt(T(params.p) * T(params.k))) {
                kind = 2.0;
                ratio = lanes[lane].c[1].y;
            }
        }
        let wd = lanes[lane].c[0].w;
        var decay: T = 1.0;
        if (wd != 0.0) {
            decay = 1.0 - lanes[lane].c[1].z * wd * ratio / (1.0 - lanes[lane].c[0].x);
        }
        let pn = sqrt(t_pp[0]) + eps;
        small[lane_b5 + params.slot] = kind;
        small[lane_b5 + params.slot + 1u] = decay;
        small[lane_b5 + params.slot + 2u] = pn;
        small[lane_b5 + params.slot + 3u] = t_pd[0] / pn;
    }
}

// Pass 3: out = p·decay − lr·d(projected), one row per invocation.
@compute @workgroup_size(256)
fn sgdp_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    enter_lane(wid.z);
    let p = params.p;
    let k = params.k;
    let r = wid.x * 256u + lid3.x;
    if (r >= p) {
        return;
    }
    let eps = lanes[lane].c[0].z;
    let lr = lanes[lane].c[1].z;
    let kind = small[lane_b5 + params.slot];
    let decay = small[lane_b5 + params.slot + 1u];
    var pn = small[lane_b5 + params.slot + 2u];
    var s = small[lane_b5 + params.slot + 3u];
    if (kind == 1.0) {
        var pp: T = 0.0;
        for (var j = 0u; j < k; j = j + 1u) {
            let pv = param[lane_b1 + r + j * p];
            pp = pp + pv * pv;
        }
        pn = sqrt(pp) + eps;
        s = 0.0;
        for (var j = 0u; j < k; j = j + 1u) {
            let i = r + j * p;
            s = s + param[lane_b1 + i] / pn * direction(grad[lane_b2 + i], buf_in[lane_b3 + i]);
        }
    }
    for (var j = 0u; j < k; j = j + 1u) {
        let i = r + j * p;
        let pv = param[lane_b1 + i];
        var d = direction(grad[lane_b2 + i], buf_in[lane_b3 + i]);
        if (kind != 0.0) {
            d = d - pv / pn * s;
        }
        out[lane_b4 + i] = pv * decay - lr * d;
    }
}

// AdamP pass 1: param, grad, and buf_in = the direction d; one row per invocation; writes
// (max row cosine, Σg², Σp², Σg·p, Σp·d) of each workgroup at aux[off0 + 5·wid ..], the
// layout `sgdp_decide` (optimizer.wgsl) reads.
@compute @workgroup_size(256)
fn adamp_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    enter_lane(wid.z);
    let lid = lid3.x;
    let p = params.p;
    let k = params.k;
    let r = wid.x * 256u + lid;
    let eps = lanes[lane].c[0].z;
    var row_cos: T = 0.0;
    var gg: T = 0.0;
    var pp: T = 0.0;
    var gp: T = 0.0;
    var pd: T = 0.0;
    if (r < p) {
        for (var j = 0u; j < k; j = j + 1u) {
            let i = r + j * p;
            let g = grad[lane_b2 + i];
            let pv = param[lane_b1 + i];
            gg = gg + g * g;
            pp = pp + pv * pv;
            gp = gp + g * pv;
            pd = pd + pv * buf_in[lane_b3 + i];
        }
        row_cos = abs(gp) / (sqrt(gg) + eps) / (sqrt(pp) + eps);
    }
    row_stats(lid, wid.x, row_cos, gg, pp, gp, pd);
}

// AdamP pass 3 (after `sgdp_decide`): out holds d; out ← p − step·d(projected), in place, one
// row per invocation (a row is read whole before it is written). a = param; c6 = step.
@compute @workgroup_size(256)
fn adamp_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    enter_lane(wid.z);
    let p = params.p;
    let k = params.k;
    let r = wid.x * 256u + lid3.x;
    if (r >= p) {
        return;
    }
    let eps = lanes[lane].c[0].z;
    let step = lanes[lane].c[1].z;
    let kind = small[lane_b5 + params.slot];
    var pn = small[lane_b5 + params.slot + 2u];
    var s = small[lane_b5 + params.slot + 3u];
    if (kind == 1.0) {
        var pp: T = 0.0;
        for (var j = 0u; j < k; j = j + 1u) {
            let pv = param[lane_b1 + r + j * p];
            pp = pp + pv * pv;
        }
        pn = sqrt(pp) + eps;
        s = 0.0;
        for (var j = 0u; j < k; j = j + 1u) {
            let i = r + j * p;
            s = s + param[lane_b1 + i] / pn * out[lane_b4 + i];
        }
    }
    for (var j = 0u; j < k; j = j + 1u) {
        let i = r + j * p;
        let pv = param[lane_b1 + i];
        var d = out[lane_b4 + i];
        if (kind != 0.0) {
            d = d - pv / pn * s;
        }
        out[lane_b4 + i] = pv - step * d;
    }
}
