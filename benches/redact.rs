//! Redaction backends compared: the CPU path (rayon) and the wgpu shader on whatever
//! adapter wgpu finds (its name is printed; Mesa's lavapipe on a machine without a GPU).
//!
//! (a) one 1080p photo with 5 faces; (b) a batch of 64 720p images × 10 regions each,
//! submitted to the GPU as one batch. Throughput is in regions/s; the bytes of region
//! pixels per iteration are printed, so MB/s = regions/s × MB/region.
//! Run: `cargo bench --bench redact` (`OBSCURA_BENCH_GPU=0` for the CPU only).

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use obscura::detect::Class;
use obscura::geometry::PixelRect;
use obscura::image_io::Frame;
use obscura::redact::backend::Redactor;
use obscura::redact::backend::BatchImage;
use obscura::redact::gpu::GpuRedactor;
use obscura::redact::math::hash;
use obscura::redact::{Params, Region, Shape, Style};

const PHOTO: &str = "wider_0_Parade_marchingband_1_139.jpg";
const PARAMS: Params = Params { feather: 0.1, noise: 16.0, seed: 1 };

fn photo(w: u32, h: u32) -> Frame {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/eval/images").join(PHOTO);
    let img = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Frame::new(w, h, 3, img.resize_to_fill(w, h, image::imageops::FilterType::Triangle).to_rgb8().into_raw())
}

/// `n` face-sized regions (60–260 px, padded as the planner would) spread over the frame.
fn regions(n: usize, w: u32, h: u32, salt: u32, style: Style) -> Vec<Region> {
    (0..n as u32)
        .map(|i| {
            let r = |k: u32| hash(salt.wrapping_mul(7919) ^ (i * 4 + k));
            let side = 60 + r(0) % 200;
            let (rw, rh) = (side, side * 5 / 4);
            let rect = PixelRect { x: r(1) % (w - rw), y: r(2) % (h - rh), w: rw, h: rh };
            Region { rect, class: Class::Face, style, shape: Shape::Rect }
        })
        .collect()
}

fn region_bytes(regions: &[Region]) -> u64 {
    regions.iter().map(|r| r.rect.w as u64 * r.rect.h as u64 * 3).sum()
}

fn backends() -> Vec<(String, Redactor)> {
    let mut out = vec![("cpu".to_string(), Redactor::Cpu)];
    if std::env::var("OBSCURA_BENCH_GPU").as_deref() != Ok("0") {
        match GpuRedactor::new() {
            Ok(gpu) => {
                let info = gpu.adapter_info();
                eprintln!("GPU adapter: {} ({:?}, {:?}, driver {})", info.name, info.device_type, info.backend, info.driver_info);
                out.push(("gpu".to_string(), Redactor::Gpu(std::sync::Arc::new(gpu))));
            }
            Err(e) => eprintln!("GPU skipped: {e}"),
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let backends = backends();

    // (a) One 1080p photo, 5 faces.
    let frame = photo(1920, 1080);
    let mut g = c.benchmark_group("redact_1080p_5_faces");
    g.sample_size(20).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    for (style_name, style) in [("pixelate", Style::DEFAULT_PIXELATE), ("blur", Style::DEFAULT_BLUR), ("fill", Style::DEFAULT_FILL)] {
        let regions = regions(5, 1920, 1080, 1, style);
        eprintln!("(a) {style_name}: {:.3} MB of region pixels per image", region_bytes(&regions) as f64 / 1e6);
        g.throughput(Throughput::Elements(regions.len() as u64));
        for (name, backend) in &backends {
            g.bench_function(format!("{name}/{style_name}"), |b| {
                b.iter_batched_ref(|| frame.clone(), |f| backend.redact(f, &regions, &PARAMS).unwrap(), BatchSize::LargeInput)
            });
        }
    }
    g.finish();

    // (b) 64 images of 1280×720, 10 regions each, as one batch.
    let base = photo(1280, 720);
    let mut g = c.benchmark_group("redact_batch_64x10");
    g.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_secs(1));
    // Blur is left out here: at sigma = region/8 its kernels are long (a 64×10 batch
    // takes ~20 s on this 2-core machine's CPU path); (a) measures it.
    for (style_name, style) in [("pixelate", Style::DEFAULT_PIXELATE), ("fill", Style::DEFAULT_FILL)] {
        let sets: Vec<Vec<Region>> = (0..64).map(|i| regions(10, 1280, 720, 100 + i, style)).collect();
        let bytes: u64 = sets.iter().map(|s| region_bytes(s)).sum();
        eprintln!("(b) {style_name}: {:.2} MB of region pixels per batch", bytes as f64 / 1e6);
        g.throughput(Throughput::Elements(640));
        for (name, backend) in &backends {
            g.bench_function(format!("{name}/{style_name}"), |b| {
                b.iter_batched_ref(
                    || vec![base.clone(); 64],
                    |frames| {
                        let mut batch: Vec<BatchImage> =
                            frames.iter_mut().zip(&sets).map(|(frame, regions)| BatchImage { frame, regions, params: PARAMS }).collect();
                        backend.redact_batch(&mut batch).unwrap()
                    },
                    BatchSize::LargeInput,
                )
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
