// p×k times k×k products (Y·S, Y·T_w, the gradient's Y·M) with a fused epilogue:
//   out = c0·(A·M) + c1·A [+ c4·out, mode bit 0] + c2·B [or c2·(A − B), mode bit 1] + c3·C,
// where M lives in the small buffer at off0 (column-major k×k) and c0..c3 may be device
// scalars. Each invocation owns one row and a block of 16 output columns, so A is read
// ⌈k/16⌉ times; the column blocks of a row block are adjacent workgroups (x fastest), which
// keeps those re-reads in cache. An invocation loops k times.

alias T = f32;

struct Params {
    p: u32, k: u32, n: u32, mode: u32,
    k2: u32, off0: u32, off1: u32, off2: u32,
    off3: u32, slot: u32, groups_x: u32, chunk: u32,
    src: vec4<u32>,
    c: array<vec4<T>, 2>,
}

const LITERAL: u32 = 0xffffffffu;
const CB: u32 = 16u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<T>;
@group(0) @binding(2) var<storage, read> b: array<T>;
@group(0) @binding(3) var<storage, read> cm: array<T>;
@group(0) @binding(4) var<storage, read_write> out: array<T>;
@group(0) @binding(5) var<storage, read_write> small: array<T>;

fn coef(i: u32) -> T {
    var v = params.c[i / 4u][i % 4u];
    if (i < 4u && params.src[i] != LITERAL) {
        v = v + small[params.src[i]];
    }
    return v;
}

// dispatch: (⌈k/16⌉, ⌈p/256⌉) — column block fastest.
@compute @workgroup_size(256)
fn mul_small(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = params.p;
    let k = params.k;
    let r = wid.y * 256u + lid.x;
    if (r >= p) {
        return;
    }
    let j0 = wid.x * CB;
    var acc: array<T, 16>;
    for (var c = 0u; c < CB; c = c + 1u) {
        acc[c] = 0.0;
    }
    let jn = min(CB, k - j0);
    for (var l = 0u; l < k; l = l + 1u) {
        let y = a[r + l * p];
        let mrow = params.off0 + l + j0 * k;
        for (var c = 0u; c < CB; c = c + 1u) {
            if (c < jn) {
                acc[c] = acc[c] + y * small[mrow + c * k];
            }
        }
    }
    let c0 = coef(0u);
    let c1 = coef(1u);
    let c2 = coef(2u);
    let c3 = coef(3u);
    let c4 = params.c[1].x;
    for (var c = 0u; c < jn; c = c + 1u) {
        let i = r + (j0 + c) * p;
        // the oracle's order: the product, the radial term, the accumulated output, then the
        // fidelity term
        var v = c0 * acc[c];
        if (c1 != 0.0) {
            v = v + c1 * a[i];
        }
        if ((params.mode & 1u) != 0u) {
            v = v + c4 * out[i];
        }
        if (c2 != 0.0) {
            if ((params.mode & 2u) != 0u) {
                v = v + c2 * (a[i] - b[i]);
            } else {
                v = v + c2 * b[i];
            }
        }
        if (c3 != 0.0) {
            v = v + c3 * cm[i];
        }
        out[i] = v;
    }
}
