// Region redaction on the GPU: pixelate, blur and fill with rectangle/ellipse masks and
// a soft edge. This is the WGSL twin of `src/redact/cpu.rs` and `src/redact/math.rs`;
// every formula here must stay in step with them (the parity tests compare the two).
//
// Data (see `src/redact/gpu/pack.rs`, which writes it):
// - `pixels`: packed RGBA8 (red in the low byte) of every patch of the batch, one u32
//   per pixel. A patch is a rectangle of one image that holds everything its steps read.
// - `scratch`: f32 intermediates, 3 per value: row sums then block means (pixelate), or
//   the horizontal blur pass (blur).
// - `words`: u32 words: step records (STEP_WORDS each), Gaussian kernels (f32 bits) and
//   work items (4 words each: step, x0, y0, unused), each item an 8×8 tile of a domain.
// - `dispatch`: which slice of the items this dispatch runs (dynamic uniform offset).
//
// Each layer of steps runs `gather` (row sums inside blocks / horizontal blur into
// `scratch`), `reduce` (block means, pixelate only) and then `apply` (mask, blend, write). Steps of one layer never write what another step of
// the same layer reads, so their order inside a layer does not matter.

struct Dispatch {
    item_offset: u32, // word offset of the first item in `words`
    item_count: u32,
    groups_x: u32,    // workgroups along x; the item index is y * groups_x + x
    pad: u32,
}

@group(0) @binding(0) var<storage, read_write> pixels: array<u32>;
@group(0) @binding(1) var<storage, read_write> scratch: array<f32>;
@group(0) @binding(2) var<storage, read> words: array<u32>;
@group(0) @binding(3) var<uniform> dispatch: Dispatch;

const STYLE_PIXELATE: u32 = 0u;
const STYLE_BLUR: u32 = 1u;
const STYLE_FILL: u32 = 2u;

// Word offsets inside a step record.
const S_PATCH_OFF: u32 = 0u;  // index in `pixels` of the patch's top-left pixel
const S_PATCH_X: u32 = 1u;    // patch origin and width, image coordinates
const S_PATCH_Y: u32 = 2u;
const S_PATCH_W: u32 = 3u;
const S_IMG_W: u32 = 4u;
const S_IMG_H: u32 = 5u;
const S_RX: u32 = 6u;         // the whole region (mask, noise and blocks are relative to it)
const S_RY: u32 = 7u;
const S_RW: u32 = 8u;
const S_RH: u32 = 9u;
const S_WX: u32 = 10u;        // the part of the region this step writes
const S_WY: u32 = 11u;
const S_WW: u32 = 12u;
const S_WH: u32 = 13u;
const S_STYLE: u32 = 14u;
const S_FLAGS: u32 = 15u;     // bit 0: ellipse; bit 1: the image has alpha
const S_PARAM: u32 = 16u;     // pixelate: block side; blur: kernel radius; fill: 0xBBGGRR
const S_KERNEL: u32 = 17u;    // blur: word offset of the kernel in `words`
const S_SCRATCH: u32 = 18u;   // offset in `scratch`
const S_INDEX: u32 = 19u;     // region index within its image (noise input)
const S_SEED: u32 = 20u;
const S_NOISE: u32 = 21u;     // f32 bits: noise amplitude in 8-bit levels
const S_FEATHER: u32 = 22u;   // f32 bits
const S_TY0: u32 = 23u;       // blur: first image row of the horizontal pass
const STEP_WORDS: u32 = 24u;

fn st(step: u32, field: u32) -> u32 {
    return words[step * STEP_WORDS + field];
}

// --- math.rs ---------------------------------------------------------------------

fn mask(ellipse: bool, feather: f32, px: u32, py: u32, w: u32, h: u32) -> f32 {
    let hw = f32(w) * 0.5;
    let hh = f32(h) * 0.5;
    let u = (f32(px) + 0.5 - hw) / hw;
    let v = (f32(py) + 0.5 - hh) / hh;
    var d: f32;
    if ellipse {
        d = sqrt(u * u + v * v);
    } else {
        d = max(abs(u), abs(v));
    }
    if feather <= 0.0 {
        return select(0.0, 1.0, d <= 1.0);
    }
    return clamp((1.0 - d) / feather, 0.0, 1.0);
}

fn hash(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

fn noise(seed: u32, region: u32, a: u32, b: u32, c: u32) -> f32 {
    let h = hash(seed ^ hash(region ^ hash(a ^ hash(b ^ hash(c)))));
    return f32(h >> 8u) / 16777215.0 * 2.0 - 1.0;
}

fn blend(orig: u32, value: f32, m: f32) -> u32 {
    let o = f32(orig);
    // floor(x + 0.5), clamped: the CPU backend's math::blend.
    return u32(clamp(floor(o + (value - o) * m + 0.5), 0.0, 255.0));
}

// --- pixels ----------------------------------------------------------------------

fn pixel_index(step: u32, x: u32, y: u32) -> u32 {
    return st(step, S_PATCH_OFF) + (y - st(step, S_PATCH_Y)) * st(step, S_PATCH_W) + (x - st(step, S_PATCH_X));
}

fn channel(p: u32, c: u32) -> u32 {
    return (p >> (8u * c)) & 0xffu;
}

fn rgb(p: u32) -> vec3<u32> {
    return vec3<u32>(channel(p, 0u), channel(p, 1u), channel(p, 2u));
}

fn store3(i: u32, v: vec3<f32>) {
    scratch[i] = v.x;
    scratch[i + 1u] = v.y;
    scratch[i + 2u] = v.z;
}

fn load3(i: u32) -> vec3<f32> {
    return vec3<f32>(scratch[i], scratch[i + 1u], scratch[i + 2u]);
}

// --- items -----------------------------------------------------------------------

struct Item {
    step: u32,
    x: u32, // local coordinates of this thread inside the step's domain
    y: u32,
    valid: bool,
}

fn item(wg: vec3<u32>, lid: vec3<u32>) -> Item {
    let index = wg.y * dispatch.groups_x + wg.x;
    if index >= dispatch.item_count {
        return Item(0u, 0u, 0u, false);
    }
    let base = dispatch.item_offset + index * 4u;
    return Item(words[base], words[base + 1u] + lid.x, words[base + 2u] + lid.y, true);
}

// --- gather: row sums inside blocks (pixelate) or the horizontal blur pass ------------
//
// Loops stay short (at most one block side or one kernel per thread): long loops idle a
// real GPU, and Mesa's llvmpipe/lavapipe stops a loop after 65,535 iterations.

@compute @workgroup_size(8, 8, 1)
fn gather(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let it = item(wg, lid);
    if !it.valid {
        return;
    }
    let s = it.step;
    let style = st(s, S_STYLE);
    let wx = st(s, S_WX);
    let wy = st(s, S_WY);
    let ww = st(s, S_WW);
    if style == STYLE_PIXELATE {
        // One thread per (block column, row): the row's sum inside the block. A row sum
        // is at most 16384 × 255 < 2^24, so it is exact in an f32.
        let b = st(s, S_PARAM);
        let nbw = (ww + b - 1u) / b;
        if it.x >= nbw || it.y >= st(s, S_WH) {
            return;
        }
        let x0 = wx + it.x * b;
        let x1 = min(x0 + b, st(s, S_RX) + st(s, S_RW));
        var row = vec3<u32>(0u);
        let start = pixel_index(s, x0, wy + it.y);
        for (var i = 0u; i < x1 - x0; i++) {
            row += rgb(pixels[start + i]);
        }
        store3(st(s, S_SCRATCH) + (it.y * nbw + it.x) * 3u, vec3<f32>(row));
    } else if style == STYLE_BLUR {
        let ty0 = st(s, S_TY0);
        let img_w = st(s, S_IMG_W);
        let ty1 = min(wy + st(s, S_WH) + st(s, S_PARAM), st(s, S_IMG_H));
        if it.x >= ww || ty0 + it.y >= ty1 {
            return;
        }
        let r = i32(st(s, S_PARAM));
        let kernel = st(s, S_KERNEL);
        let sx = i32(wx + it.x);
        let sy = ty0 + it.y;
        var acc = vec3<f32>(0.0);
        for (var k = 0; k <= 2 * r; k++) {
            let xx = u32(clamp(sx + k - r, 0, i32(img_w) - 1));
            let wk = bitcast<f32>(words[kernel + u32(k)]);
            acc += wk * vec3<f32>(rgb(pixels[pixel_index(s, xx, sy)]));
        }
        store3(st(s, S_SCRATCH) + (it.y * ww + it.x) * 3u, acc);
    }
}

// --- reduce: block means (pixelate) from the row sums ---------------------------------

@compute @workgroup_size(8, 8, 1)
fn reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let it = item(wg, lid);
    if !it.valid {
        return;
    }
    let s = it.step;
    let b = st(s, S_PARAM);
    let ww = st(s, S_WW);
    let wh = st(s, S_WH);
    let nbw = (ww + b - 1u) / b;
    let nbh = (wh + b - 1u) / b;
    if it.x >= nbw || it.y >= nbh {
        return;
    }
    let rx = st(s, S_RX);
    let ry = st(s, S_RY);
    let x0 = st(s, S_WX) + it.x * b;
    let y0 = st(s, S_WY) + it.y * b;
    let x1 = min(x0 + b, rx + st(s, S_RW));
    let y1 = min(y0 + b, ry + st(s, S_RH));
    // Exact integer sums as on the CPU, in a 64-bit (lo, hi) pair.
    var lo = vec3<u32>(0u);
    var hi = vec3<u32>(0u);
    let rows = st(s, S_SCRATCH);
    for (var y = it.y * b; y < y1 - st(s, S_WY); y++) {
        let sum = lo + vec3<u32>(load3(rows + (y * nbw + it.x) * 3u));
        hi += select(vec3<u32>(0u), vec3<u32>(1u), sum < lo);
        lo = sum;
    }
    let n = f32((x1 - x0) * (y1 - y0));
    let bx = (x0 - rx) / b;
    let by = (y0 - ry) / b;
    let seed = st(s, S_SEED);
    let index = st(s, S_INDEX);
    let amp = bitcast<f32>(st(s, S_NOISE));
    let out = rows + nbw * wh * 3u + (it.y * nbw + it.x) * 3u;
    for (var c = 0u; c < 3u; c++) {
        let total = f32(hi[c]) * 4294967296.0 + f32(lo[c]);
        scratch[out + c] = clamp(total / n + amp * noise(seed, index, bx, by, c), 0.0, 255.0);
    }
}

// --- apply: the target value through the soft mask, alpha made opaque ----------------

@compute @workgroup_size(8, 8, 1)
fn apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let it = item(wg, lid);
    if !it.valid {
        return;
    }
    let s = it.step;
    let ww = st(s, S_WW);
    let wh = st(s, S_WH);
    if it.x >= ww || it.y >= wh {
        return;
    }
    let px = st(s, S_WX) + it.x;
    let py = st(s, S_WY) + it.y;
    let qx = px - st(s, S_RX);
    let qy = py - st(s, S_RY);
    let flags = st(s, S_FLAGS);
    let m = mask((flags & 1u) != 0u, bitcast<f32>(st(s, S_FEATHER)), qx, qy, st(s, S_RW), st(s, S_RH));
    if m <= 0.0 {
        return;
    }
    let style = st(s, S_STYLE);
    var t: vec3<f32>;
    if style == STYLE_PIXELATE {
        let b = st(s, S_PARAM);
        let nbw = (ww + b - 1u) / b;
        t = load3(st(s, S_SCRATCH) + nbw * wh * 3u + ((it.y / b) * nbw + it.x / b) * 3u);
    } else if style == STYLE_BLUR {
        let r = i32(st(s, S_PARAM));
        let kernel = st(s, S_KERNEL);
        let ty0 = i32(st(s, S_TY0));
        let img_h = i32(st(s, S_IMG_H));
        let base = st(s, S_SCRATCH);
        var acc = vec3<f32>(0.0);
        for (var k = 0; k <= 2 * r; k++) {
            let sy = clamp(i32(py) + k - r, 0, img_h - 1);
            let wk = bitcast<f32>(words[kernel + u32(k)]);
            acc += wk * load3(base + (u32(sy - ty0) * ww + it.x) * 3u);
        }
        let seed = st(s, S_SEED);
        let index = st(s, S_INDEX);
        let amp = bitcast<f32>(st(s, S_NOISE));
        t = acc + amp * vec3<f32>(noise(seed, index, qx, qy, 0u), noise(seed, index, qx, qy, 1u), noise(seed, index, qx, qy, 2u));
    } else {
        let c = st(s, S_PARAM);
        t = vec3<f32>(f32(c & 0xffu), f32((c >> 8u) & 0xffu), f32((c >> 16u) & 0xffu));
    }
    let i = pixel_index(s, px, py);
    let p = pixels[i];
    var a = channel(p, 3u);
    if (flags & 2u) != 0u {
        a = blend(a, 255.0, m);
    }
    pixels[i] = blend(channel(p, 0u), t.x, m) | (blend(channel(p, 1u), t.y, m) << 8u)
        | (blend(channel(p, 2u), t.z, m) << 16u) | (a << 24u);
}
