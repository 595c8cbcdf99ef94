//! Turns the regions of many images into GPU work that gives the CPU reference's pixels.
//!
//! The CPU applies an image's regions one after another, each reading the image as the
//! previous ones left it. To batch that without changing the result:
//! - Regions whose *read areas* (the region, plus the halo a blur reads) touch form a
//!   **cluster**; a cluster's pixels travel together as one **patch** (the bounding box of
//!   its read areas), and clusters never see each other's writes.
//! - Inside a cluster each region gets a **layer**: one more than the latest earlier
//!   region it depends on (it reads what that one writes, or writes what it reads). One
//!   layer of all clusters of all images runs as three dispatches (`gather`, `reduce`,
//!   `apply`).
//! - A cluster too large for one buffer is done region by region in **rounds**, each
//!   region cut into tiles that fit (with their halo). The rare region whose smallest
//!   tile still does not fit (a single pixelation block or blur halo beyond the device's
//!   buffer limit) is done by the CPU backend at its place in the order.
//! - The independent jobs of a round are packed into **chunks** that fit the device's
//!   buffer and dispatch limits; chunks are what the executor uploads and reads back.

use super::super::math::{block_size, gaussian_kernel, gaussian_radius};
use super::super::{Params, Region, Style};
use crate::geometry::PixelRect;
use crate::image_io::Frame;

/// Words per step record; must match `STEP_WORDS` in `shaders/redact.wgsl`.
pub const STEP_WORDS: usize = 24;
/// Words per work item (step, x0, y0, unused).
pub const ITEM_WORDS: usize = 4;
/// Side of the square of threads (and of pixels, blocks or rows) one work item covers.
pub const TILE: u32 = 8;

/// How much one chunk may hold; from the device limits (smaller in tests, to exercise
/// the splitting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Largest buffer binding in bytes (pixels, scratch and words each).
    pub max_binding_bytes: u64,
    /// Workgroups per dispatch dimension.
    pub max_groups_per_dim: u32,
}

/// One image of a batch, as the packer sees it.
pub struct ImageRef<'a> {
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    pub regions: &'a [Region],
    pub params: Params,
}

impl<'a> ImageRef<'a> {
    pub fn new(frame: &Frame, regions: &'a [Region], params: Params) -> Self {
        Self { width: frame.width, height: frame.height, channels: frame.channels, regions, params }
    }
}

/// One region, or a tile of one, applied to one patch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub image: usize,
    /// Index of the region in its image's list (the noise input).
    pub region: usize,
    /// The part of the region this step writes.
    pub write: PixelRect,
    pub layer: u32,
}

/// Steps sharing one patch of one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub image: usize,
    pub patch: PixelRect,
    pub steps: Vec<Step>,
}

/// Work of one round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Task {
    Gpu(Job),
    /// Too large for the device even as a single tile: the CPU backend does it.
    Cpu { image: usize, region: usize },
}

/// Which entry point a dispatch runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Gather,
    Reduce,
    Apply,
}

/// One dispatch: `count` items starting at word `item_offset` of the words buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dispatch {
    pub pass: Pass,
    pub item_offset: u32,
    pub count: u32,
    pub groups: (u32, u32),
}

/// What one submission uploads, runs and reads back.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    pub jobs: Vec<Job>,
    /// Offset (in pixels) of each job's patch in the pixels buffer.
    pub patch_offsets: Vec<u32>,
    pub pixel_count: u64,
    pub scratch_floats: u64,
    /// Step records, kernels and items.
    pub words: Vec<u32>,
    pub dispatches: Vec<Dispatch>,
}

/// Padding a region's reads need around it (the blur radius; 0 otherwise).
pub fn halo(region: &Region) -> u32 {
    match region.style {
        Style::Blur { sigma } => gaussian_radius(blur_sigma(region, sigma)),
        _ => 0,
    }
}

/// The blur sigma in pixels for a region (the style gives it relative to the region).
fn blur_sigma(region: &Region, fraction: f32) -> f32 {
    fraction * region.rect.w.max(region.rect.h) as f32
}

/// Image rows `ty0..ty1` the horizontal blur pass covers for a step writing `write`.
fn blur_rows(write: PixelRect, radius: u32, height: u32) -> (u32, u32) {
    (write.y.saturating_sub(radius), (write.y + write.h).saturating_add(radius).min(height))
}

/// The dispatch domains (pass, width, height) of one step, in run order. Sizing
/// ([`job_bytes`]) and packing ([`build_chunk`]) both read a step's work from here.
/// Every pass but `Apply` writes 3 scratch floats per domain cell.
fn domains(region: &Region, write: PixelRect, height: u32) -> Vec<(Pass, u32, u32)> {
    let apply = (Pass::Apply, write.w, write.h);
    match region.style {
        Style::Pixelate { cells } => {
            let b = block_size(region.rect.w, region.rect.h, cells);
            let nbw = write.w.div_ceil(b);
            vec![(Pass::Gather, nbw, write.h), (Pass::Reduce, nbw, write.h.div_ceil(b)), apply]
        }
        Style::Blur { .. } => {
            let (ty0, ty1) = blur_rows(write, halo(region), height);
            vec![(Pass::Gather, write.w, ty1 - ty0), apply]
        }
        Style::Fill { .. } => vec![apply],
    }
}

fn scratch_floats(domains: &[(Pass, u32, u32)]) -> u64 {
    domains.iter().filter(|d| d.0 != Pass::Apply).map(|&(_, w, h)| w as u64 * h as u64 * 3).sum()
}

fn grow(r: PixelRect, by: u32, width: u32, height: u32) -> PixelRect {
    let x0 = r.x.saturating_sub(by);
    let y0 = r.y.saturating_sub(by);
    let x1 = (r.x + r.w).saturating_add(by).min(width);
    let y1 = (r.y + r.h).saturating_add(by).min(height);
    PixelRect { x: x0, y: y0, w: x1 - x0, h: y1 - y0 }
}

fn intersects(a: PixelRect, b: PixelRect) -> bool {
    a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h
}

fn union(a: PixelRect, b: PixelRect) -> PixelRect {
    let x0 = a.x.min(b.x);
    let y0 = a.y.min(b.y);
    let x1 = (a.x + a.w).max(b.x + b.w);
    let y1 = (a.y + a.h).max(b.y + b.h);
    PixelRect { x: x0, y: y0, w: x1 - x0, h: y1 - y0 }
}

fn tiles(w: u32, h: u32) -> u64 {
    w.div_ceil(TILE) as u64 * h.div_ceil(TILE) as u64
}

/// Bytes of each buffer a job needs: (pixels, scratch, words).
fn job_bytes(job: &Job, image: &ImageRef) -> (u64, u64, u64) {
    let (mut scratch, mut words) = (0u64, 0u64);
    for s in &job.steps {
        let region = &image.regions[s.region];
        let d = domains(region, s.write, image.height);
        let items: u64 = d.iter().map(|&(_, w, h)| tiles(w, h)).sum();
        let kernel_words = if matches!(region.style, Style::Blur { .. }) { 2 * halo(region) as u64 + 1 } else { 0 };
        scratch += scratch_floats(&d) * 4;
        words += (STEP_WORDS as u64 + kernel_words + items * ITEM_WORDS as u64) * 4;
    }
    (job.patch.w as u64 * job.patch.h as u64 * 4, scratch, words)
}

fn fits(bytes: (u64, u64, u64), limits: &ChunkLimits) -> bool {
    let m = limits.max_binding_bytes;
    bytes.0 <= m && bytes.1 <= m && bytes.2 <= m
}

/// Splits the batch into rounds of independent tasks (see the module docs).
pub fn rounds(images: &[ImageRef], limits: &ChunkLimits) -> Vec<Vec<Task>> {
    let mut rounds: Vec<Vec<Task>> = vec![Vec::new()];
    for (image_index, image) in images.iter().enumerate() {
        let reads: Vec<PixelRect> = image.regions.iter().map(|r| grow(r.rect, halo(r), image.width, image.height)).collect();
        for cluster in clusters(&reads) {
            let mut steps: Vec<Step> = Vec::with_capacity(cluster.len());
            for (k, &i) in cluster.iter().enumerate() {
                let layer = cluster[..k]
                    .iter()
                    .zip(&steps)
                    .filter(|&(&j, _)| intersects(reads[i], image.regions[j].rect) || intersects(image.regions[i].rect, reads[j]))
                    .map(|(_, s)| s.layer + 1)
                    .max()
                    .unwrap_or(0);
                steps.push(Step { image: image_index, region: i, write: image.regions[i].rect, layer });
            }
            let patch = cluster.iter().map(|&i| reads[i]).reduce(union).expect("clusters are not empty");
            let job = Job { image: image_index, patch, steps };
            if fits(job_bytes(&job, image), limits) {
                rounds[0].push(Task::Gpu(job));
                continue;
            }
            // Too large together: region by region, each in tiles.
            for (k, &i) in cluster.iter().enumerate() {
                if rounds.len() <= k {
                    rounds.push(Vec::new());
                }
                rounds[k].extend(split(image_index, i, image, limits));
            }
        }
    }
    rounds.retain(|r| !r.is_empty());
    rounds
}

/// Connected components of intersecting read areas, each in the regions' order.
fn clusters(reads: &[PixelRect]) -> Vec<Vec<usize>> {
    let mut parent: Vec<usize> = (0..reads.len()).collect();
    fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for i in 0..reads.len() {
        for j in 0..i {
            if intersects(reads[i], reads[j]) {
                let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut slot = vec![usize::MAX; reads.len()];
    for i in 0..reads.len() {
        let root = find(&mut parent, i);
        if slot[root] == usize::MAX {
            slot[root] = groups.len();
            groups.push(Vec::new());
        }
        groups[slot[root]].push(i);
    }
    groups
}

/// Cuts one region into tiles that each fit a chunk, or hands it to the CPU.
fn split(image_index: usize, region_index: usize, image: &ImageRef, limits: &ChunkLimits) -> Vec<Task> {
    let region = &image.regions[region_index];
    let rect = region.rect;
    let r = halo(region);
    // Pixelation tiles hold whole blocks, so every block mean is computed once, whole.
    let unit = match region.style {
        Style::Pixelate { cells } => block_size(rect.w, rect.h, cells),
        _ => TILE,
    };
    let mut side = rect.w.max(rect.h).div_ceil(unit) * unit;
    loop {
        let tasks: Option<Vec<Task>> = (0..rect.h)
            .step_by(side as usize)
            .flat_map(|ty| (0..rect.w).step_by(side as usize).map(move |tx| (tx, ty)))
            .map(|(tx, ty)| {
                let write = PixelRect { x: rect.x + tx, y: rect.y + ty, w: side.min(rect.w - tx), h: side.min(rect.h - ty) };
                let patch = grow(write, r, image.width, image.height);
                let job = Job { image: image_index, patch, steps: vec![Step { image: image_index, region: region_index, write, layer: 0 }] };
                fits(job_bytes(&job, image), limits).then_some(Task::Gpu(job))
            })
            .collect();
        match tasks {
            Some(tasks) => return tasks,
            None if side <= unit => return vec![Task::Cpu { image: image_index, region: region_index }],
            None => side = (side / 2).div_ceil(unit) * unit,
        }
    }
}

/// Packs the GPU jobs of one round into chunks that fit `limits`, in order.
pub fn chunks(jobs: Vec<Job>, images: &[ImageRef], limits: &ChunkLimits) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut current: Vec<Job> = Vec::new();
    let mut total = (0u64, 0u64, 0u64);
    for job in jobs {
        let b = job_bytes(&job, &images[job.image]);
        let next = (total.0 + b.0, total.1 + b.1, total.2 + b.2);
        if !current.is_empty() && !fits(next, limits) {
            out.push(build_chunk(std::mem::take(&mut current), images, limits));
            total = b;
        } else {
            total = next;
        }
        current.push(job);
    }
    if !current.is_empty() {
        out.push(build_chunk(current, images, limits));
    }
    out
}

fn f(v: f32) -> u32 {
    v.to_bits()
}

fn build_chunk(jobs: Vec<Job>, images: &[ImageRef], limits: &ChunkLimits) -> Chunk {
    let nsteps: usize = jobs.iter().map(|j| j.steps.len()).sum();
    let mut records: Vec<u32> = Vec::with_capacity(nsteps * STEP_WORDS);
    let mut kernels: Vec<u32> = Vec::new();
    // (layer, pass, step, domain w, domain h) for every dispatchable domain.
    let mut work: Vec<(u32, Pass, u32, u32, u32)> = Vec::new();
    let mut patch_offsets = Vec::with_capacity(jobs.len());
    let (mut pixels, mut scratch) = (0u64, 0u64);
    let kernel_base = (nsteps * STEP_WORDS) as u32;
    for job in &jobs {
        let image = &images[job.image];
        patch_offsets.push(pixels as u32);
        for s in &job.steps {
            let region = &image.regions[s.region];
            let step_index = (records.len() / STEP_WORDS) as u32;
            let (w, rr) = (s.write, region.rect);
            let flags = (region.shape == super::super::Shape::Ellipse) as u32 | (((image.channels == 4) as u32) << 1);
            let (style, param, kernel, ty0) = match region.style {
                Style::Pixelate { cells } => (0, block_size(rr.w, rr.h, cells), 0, 0),
                Style::Blur { sigma } => {
                    let k = gaussian_kernel(blur_sigma(region, sigma));
                    let r = (k.len() / 2) as u32;
                    let offset = kernel_base + kernels.len() as u32;
                    kernels.extend(k.iter().map(|&v| f(v)));
                    (1, r, offset, blur_rows(w, r, image.height).0)
                }
                Style::Fill { color } => (2, color[0] as u32 | (color[1] as u32) << 8 | (color[2] as u32) << 16, 0, 0),
            };
            let p = &image.params;
            records.extend_from_slice(&[
                pixels as u32,
                job.patch.x,
                job.patch.y,
                job.patch.w,
                image.width,
                image.height,
                rr.x,
                rr.y,
                rr.w,
                rr.h,
                w.x,
                w.y,
                w.w,
                w.h,
                style,
                flags,
                param,
                kernel,
                scratch as u32,
                s.region as u32,
                p.seed,
                f(p.noise),
                f(region.feather(p)),
                ty0,
            ]);
            let step_domains = domains(region, w, image.height);
            scratch += scratch_floats(&step_domains);
            work.extend(step_domains.into_iter().map(|(pass, dw, dh)| (s.layer, pass, step_index, dw, dh)));
        }
        pixels += job.patch.w as u64 * job.patch.h as u64;
    }
    debug_assert_eq!(records.len(), nsteps * STEP_WORDS);
    let mut words = records;
    words.extend(kernels);
    // Items grouped by (layer, pass): each group is one or more dispatches.
    work.sort_by_key(|&(layer, pass, ..)| (layer, pass as u8));
    let max_items = (limits.max_groups_per_dim as u64).pow(2).min(u32::MAX as u64) as u32;
    let mut dispatches: Vec<Dispatch> = Vec::new();
    let mut group_key = None;
    let mut start = words.len();
    let flush = |dispatches: &mut Vec<Dispatch>, key: Option<(u32, Pass)>, start: usize, end: usize| {
        let Some((_, pass)) = key else { return };
        let mut offset = start;
        while offset < end {
            let count = (((end - offset) / ITEM_WORDS) as u32).min(max_items);
            let gx = count.min(limits.max_groups_per_dim);
            dispatches.push(Dispatch { pass, item_offset: offset as u32, count, groups: (gx, count.div_ceil(gx)) });
            offset += count as usize * ITEM_WORDS;
        }
    };
    for &(layer, pass, step, dw, dh) in &work {
        if group_key != Some((layer, pass)) {
            flush(&mut dispatches, group_key, start, words.len());
            group_key = Some((layer, pass));
            start = words.len();
        }
        for ty in (0..dh).step_by(TILE as usize) {
            for tx in (0..dw).step_by(TILE as usize) {
                words.extend_from_slice(&[step, tx, ty, 0]);
            }
        }
    }
    flush(&mut dispatches, group_key, start, words.len());
    Chunk { jobs, patch_offsets, pixel_count: pixels, scratch_floats: scratch, words, dispatches }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Class;
    use crate::redact::Shape;

    const BIG: ChunkLimits = ChunkLimits { max_binding_bytes: 128 << 20, max_groups_per_dim: 65535 };
    const P: Params = Params { feather: 0.1, noise: 16.0, seed: 1 };

    fn region(x: u32, y: u32, w: u32, h: u32, style: Style) -> Region {
        Region { rect: PixelRect { x, y, w, h }, class: Class::Face, style, shape: Shape::Rect }
    }

    fn image(regions: &[Region]) -> ImageRef<'_> {
        ImageRef { width: 400, height: 300, channels: 3, regions, params: P }
    }

    fn jobs(round: &[Task]) -> Vec<&Job> {
        round.iter().filter_map(|t| if let Task::Gpu(j) = t { Some(j) } else { None }).collect()
    }

    #[test]
    fn apart_regions_are_separate_patches_in_one_round() {
        let regions = [region(0, 0, 10, 10, Style::DEFAULT_FILL), region(100, 100, 20, 20, Style::DEFAULT_PIXELATE)];
        let r = rounds(&[image(&regions)], &BIG);
        assert_eq!(r.len(), 1);
        let j = jobs(&r[0]);
        assert_eq!(j.len(), 2);
        assert_eq!(j[0].patch, regions[0].rect);
        assert!(j.iter().all(|j| j.steps.len() == 1 && j.steps[0].layer == 0));
    }

    #[test]
    fn overlapping_regions_share_a_patch_and_run_in_order() {
        // A person, a face inside it, and a second face that only touches the person.
        let regions = [
            region(50, 50, 100, 200, Style::DEFAULT_PIXELATE),
            region(80, 60, 30, 30, Style::DEFAULT_FILL),
            region(200, 60, 30, 30, Style::DEFAULT_FILL),
            region(140, 240, 30, 30, Style::DEFAULT_FILL),
        ];
        let r = rounds(&[image(&regions)], &BIG);
        let j = jobs(&r[0]);
        assert_eq!(j.len(), 2, "{j:?}");
        let layers: Vec<(usize, u32)> = j[0].steps.iter().map(|s| (s.region, s.layer)).collect();
        // The face inside and the one at the corner both follow the person; they do not
        // touch each other, so they share a layer.
        assert_eq!(layers, vec![(0, 0), (1, 1), (3, 1)]);
        assert_eq!(j[0].patch, PixelRect { x: 50, y: 50, w: 120, h: 220 });
    }

    #[test]
    fn a_blur_halo_joins_regions_that_do_not_touch() {
        let regions = [region(100, 100, 40, 40, Style::DEFAULT_BLUR), region(145, 100, 10, 10, Style::DEFAULT_FILL)];
        let r = halo(&regions[0]);
        assert_eq!(r, 15, "sigma 5 → radius 15");
        let rs = rounds(&[image(&regions)], &BIG);
        let j = jobs(&rs[0]);
        assert_eq!(j.len(), 1);
        assert_eq!(j[0].steps[1].layer, 1, "the fill writes what the blur reads");
        assert_eq!(j[0].patch, PixelRect { x: 85, y: 85, w: 70, h: 70 });
    }

    #[test]
    fn oversized_clusters_become_rounds_of_tiles() {
        let regions = [region(0, 0, 200, 200, Style::DEFAULT_PIXELATE), region(50, 50, 100, 100, Style::DEFAULT_BLUR)];
        let small = ChunkLimits { max_binding_bytes: 64 << 10, max_groups_per_dim: 4 };
        let r = rounds(&[image(&regions)], &small);
        assert_eq!(r.len(), 2, "one round per region of the cluster");
        // Pixelate tiles hold whole 25-px blocks.
        for t in jobs(&r[0]) {
            let w = t.steps[0].write;
            assert!(w.x % 25 == 0 && w.y % 25 == 0 && (w.w % 25 == 0) && (w.h % 25 == 0), "{w:?}");
        }
        let covered: u32 = jobs(&r[0]).iter().map(|j| j.steps[0].write.w * j.steps[0].write.h).sum();
        assert_eq!(covered, 200 * 200);
        // Every chunk fits the limits.
        let images = [image(&regions)];
        for round in r {
            let gpu: Vec<Job> = round.into_iter().filter_map(|t| if let Task::Gpu(j) = t { Some(j) } else { None }).collect();
            for c in chunks(gpu, &images, &small) {
                assert!(c.pixel_count * 4 <= small.max_binding_bytes && c.scratch_floats * 4 <= small.max_binding_bytes);
                assert!(c.words.len() as u64 * 4 <= small.max_binding_bytes);
                assert!(c.dispatches.iter().all(|d| d.groups.0 <= 4 && d.groups.1 <= 4 && d.count <= 16));
            }
        }
    }

    #[test]
    fn what_cannot_be_tiled_goes_to_the_cpu() {
        // One 200-px pixelation block is 160 KB, over a 64 KiB limit.
        let regions = [region(0, 0, 200, 200, Style::Pixelate { cells: 1 })];
        let small = ChunkLimits { max_binding_bytes: 64 << 10, max_groups_per_dim: 65535 };
        assert_eq!(rounds(&[image(&regions)], &small), vec![vec![Task::Cpu { image: 0, region: 0 }]]);
    }

    #[test]
    fn dispatches_run_gather_reduce_apply_per_layer() {
        let regions = [region(0, 0, 64, 64, Style::DEFAULT_PIXELATE), region(8, 8, 16, 16, Style::DEFAULT_BLUR)];
        let images = [image(&regions)];
        let r = rounds(&images, &BIG);
        let gpu: Vec<Job> = r.into_iter().flatten().filter_map(|t| if let Task::Gpu(j) = t { Some(j) } else { None }).collect();
        let c = chunks(gpu, &images, &BIG);
        assert_eq!(c.len(), 1);
        let passes: Vec<Pass> = c[0].dispatches.iter().map(|d| d.pass).collect();
        assert_eq!(passes, vec![Pass::Gather, Pass::Reduce, Pass::Apply, Pass::Gather, Pass::Apply]);
    }
}
