// The elementwise passes of the torch / torch_optimizer 0.3.0 optimizers (the host splits each
// optimizer step into passes, `UpdateRule::passes` in src/backend/mod.rs); AdamP's
// projection lives with SGDP's in optimizer.wgsl.
//
// `torch_elem`: out[i] ← f(d, a[i], b[i], c[i]) with d = out[i] (or c7 when mode bit 8 is
// set: a state's first step); the formula is `mode & 0xff` (ElemOp in src/backend/mod.rs,
// in the same operation order); literals c0…c7. The destination is never bound as a source.

// After prelude.wgsl (T, Params, Lane, bindings 0/5/6/7, enter_lane, coef, reduce2, …).
@group(0) @binding(1) var<storage, read_write> a: array<T>;
@group(0) @binding(2) var<storage, read_write> b: array<T>;
@group(0) @binding(3) var<storage, read_write> c: array<T>;
@group(0) @binding(4) var<storage, read_write> out: array<T>;

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
    let c0 = lanes[lane].c[0].x;
    let c1 = lanes[lane].c[0].y;
    let c2 = lanes[lane].c[0].z;
    let c3 = lanes[lane].c[0].w;
    let c4 = lanes[lane].c[1].x;
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
    enter_lane(wid.z);
    let i = (wid.y * params.groups_x + wid.x) * 256u + lid.x;
    if (i >= params.n) {
        return;
    }
    let m = params.mode;
    var d = out[lane_b4 + i];
    if ((m & 256u) != 0u) {
        d = lanes[lane].c[1].w;
    }
    var x: T = 0.0;
    var y: T = 0.0;
    var z: T = 0.0;
    if ((m & 512u) != 0u) {
        x = a[lane_b1 + i];
    }
    if ((m & 1024u) != 0u) {
        y = b[lane_b2 + i];
    }
    if ((m & 2048u) != 0u) {
        z = c[lane_b3 + i];
    }
    out[lane_b4 + i] = elem(m & 255u, d, x, y, z);
}
