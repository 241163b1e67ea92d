// A plain copy of n 32-bit words, one vec4 per invocation on a 2-D grid: the reference point
// for the memory-bandwidth bound the benchmark reports (an iteration can move its bytes no
// faster than this).

struct Params {
    n4: u32, groups_x: u32, pad0: u32, pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> src: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> dst: array<vec4<u32>>;

@compute @workgroup_size(256)
fn copy_words(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.x + wid.y * params.groups_x) * 256u + lid.x;
    if (i < params.n4) {
        dst[i] = src[i];
    }
}
