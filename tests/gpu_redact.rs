//! GPU redaction (wgpu, `shaders/redact.wgsl`) against the CPU reference.
//!
//! Runs on whatever adapter wgpu finds, Mesa's lavapipe in CI. Without an adapter these
//! tests print why and pass, unless `OBSCURA_REQUIRE_GPU=1` (set by `.ci/run`), where
//! they fail.

use obscura::detect::Class;
use obscura::geometry::PixelRect;
use obscura::image_io::Frame;
use obscura::redact::backend::BatchImage;
use obscura::redact::gpu::GpuRedactor;
use obscura::redact::{Params, Region, Shape, Style, cpu};

mod common;

use std::sync::OnceLock;

use common::*;
use obscura::redact::backend::{RedactOn, Redactor};

use proptest::prelude::*;

/// Device limits as they are.
static FULL: OnceLock<Option<GpuRedactor>> = OnceLock::new();
/// Tiny chunks and dispatches, so every splitting path runs on small images.
static TINY: OnceLock<Option<GpuRedactor>> = OnceLock::new();

fn full() -> Option<&'static GpuRedactor> {
    FULL.get_or_init(gpu).as_ref()
}

fn tiny() -> Option<&'static GpuRedactor> {
    TINY.get_or_init(|| {
        gpu().map(|mut g| {
            g.set_chunk_limits(16 << 10, 3);
            g
        })
    })
    .as_ref()
}

fn gpu() -> Option<GpuRedactor> {
    match GpuRedactor::new() {
        Ok(g) => {
            eprintln!("adapter: {} ({:?}, {:?})", g.adapter_info().name, g.adapter_info().device_type, g.adapter_info().backend);
            Some(g)
        }
        Err(e) if require_gpu() => panic!("OBSCURA_REQUIRE_GPU=1 but {e}"),
        Err(e) => {
            eprintln!("skipped: {e} (set OBSCURA_REQUIRE_GPU=1 to make this a failure)");
            None
        }
    }
}

fn noise_frame(w: u32, h: u32, channels: u8, seed: u32) -> Frame {
    let data = (0..w * h * channels as u32).map(|i| (obscura::redact::math::hash(i ^ seed.wrapping_mul(0x9e37_79b9)) >> 24) as u8).collect();
    Frame::new(w, h, channels, data)
}

fn max_diff(a: &Frame, b: &Frame) -> (u8, usize) {
    let mut worst = (0u8, 0usize);
    for (i, (x, y)) in a.data().iter().zip(b.data()).enumerate() {
        let d = x.abs_diff(*y);
        if d > worst.0 {
            worst = (d, i);
        }
    }
    worst
}

/// `orig` redacted by the CPU reference and by `gpu`: (cpu, gpu).
fn both(gpu: &GpuRedactor, orig: &Frame, regions: &[Region], params: &Params) -> (Frame, Frame) {
    let mut want = orig.clone();
    cpu::redact(&mut want, regions, params);
    let mut got = orig.clone();
    gpu.redact(&mut got, regions, params).unwrap();
    (want, got)
}

fn region(x: u32, y: u32, w: u32, h: u32, style: Style, shape: Shape) -> Region {
    Region { rect: PixelRect { x, y, w, h }, class: Class::Face, style, shape }
}

#[test]
fn every_style_and_shape_matches_the_cpu() {
    let Some(gpu) = full() else { return };
    for channels in [3u8, 4] {
        for shape in [Shape::Rect, Shape::Ellipse] {
            for style in [Style::DEFAULT_PIXELATE, Style::DEFAULT_BLUR, Style::DEFAULT_FILL, Style::Fill { color: [10, 200, 30] }] {
                let orig = noise_frame(160, 120, channels, 7);
                let text = Region { class: Class::Text, ..region(100, 70, 60, 50, style, shape) };
                let regions = [region(10, 20, 64, 48, style, shape), region(0, 0, 17, 9, style, shape), text];
                let params = Params { feather: 0.1, noise: 16.0, seed: 42 };
                let (want, got) = both(gpu, &orig, &regions, &params);
                let (d, at) = max_diff(&want, &got);
                assert!(d <= 1, "{channels} channels, {shape:?}, {style:?}: differs by {d} at byte {at}");
                assert_ne!(got, orig);
            }
        }
    }
}

fn style() -> impl Strategy<Value = Style> {
    prop_oneof![
        (1u32..12).prop_map(|cells| Style::Pixelate { cells }),
        (0.02f32..0.3).prop_map(|sigma| Style::Blur { sigma }),
        any::<[u8; 3]>().prop_map(|color| Style::Fill { color }),
    ]
}

fn image() -> impl Strategy<Value = (Frame, Vec<Region>, Params)> {
    (1u32..160, 1u32..120, prop_oneof![Just(3u8), Just(4u8)], any::<u32>())
        .prop_flat_map(|(w, h, channels, seed)| {
            // Text regions have hard edges whatever the feather (Region::feather).
            let class = prop_oneof![Just(Class::Face), Just(Class::Person), Just(Class::Text)];
            let region = (0..w, 0..h, 1u32..=w, 1u32..=h, style(), prop_oneof![Just(Shape::Rect), Just(Shape::Ellipse)], class).prop_map(
                move |(x, y, rw, rh, style, shape, class)| {
                    // Clip to the image: many regions touch the right and bottom borders.
                    Region { class, ..region(x, y, rw.min(w - x), rh.min(h - y), style, shape) }
                },
            );
            let params = (0.0f32..0.3, 0.0f32..32.0, any::<u32>()).prop_map(|(feather, noise, seed)| Params { feather, noise, seed });
            (Just(noise_frame(w, h, channels, seed)), prop::collection::vec(region, 0..8), params)
        })
}

fn check_batch(gpu: &GpuRedactor, images: &[(Frame, Vec<Region>, Params)]) -> Result<(), TestCaseError> {
    let mut got: Vec<Frame> = images.iter().map(|(f, _, _)| f.clone()).collect();
    let mut batch: Vec<BatchImage> =
        got.iter_mut().zip(images).map(|(frame, (_, regions, params))| BatchImage { frame, regions, params: *params }).collect();
    gpu.redact_batch(&mut batch).map_err(|e| TestCaseError::fail(e.to_string()))?;
    for (i, ((orig, regions, params), got)) in images.iter().zip(&got).enumerate() {
        let mut want = orig.clone();
        cpu::redact(&mut want, regions, params);
        let (d, at) = max_diff(&want, got);
        prop_assert!(d <= 1, "image {i} ({}x{}x{}) differs by {d} at byte {at}; regions {regions:?}", orig.width(), orig.height(), orig.channels());
    }
    Ok(())
}

proptest! {
    // 48 cases by default (lavapipe is slow); PROPTEST_CASES=N for a longer search.
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48), ..ProptestConfig::default() })]

    /// Random region sets over a batch of images: borders, overlaps (applied in order,
    /// each seeing the previous), 1-pixel regions, every style and shape.
    #[test]
    fn random_batches_match_the_cpu(images in prop::collection::vec(image(), 1..5)) {
        let Some(gpu) = full() else { return Ok(()) };
        check_batch(gpu, &images)?;
    }

    /// The same with chunks of 16 KiB and 3×3 workgroups per dispatch: clusters are cut
    /// into rounds, regions into tiles, dispatches into many; the largest blurs go to the
    /// CPU. The pixels must not change.
    #[test]
    fn split_work_matches_the_cpu(images in prop::collection::vec(image(), 1..4)) {
        let Some(gpu) = tiny() else { return Ok(()) };
        check_batch(gpu, &images)?;
    }
}

#[test]
fn one_pixel_regions_at_every_corner() {
    let Some(gpu) = full() else { return };
    let orig = noise_frame(9, 7, 4, 3);
    let regions: Vec<Region> = [(0, 0), (8, 0), (0, 6), (8, 6), (4, 3)]
        .iter()
        .zip([Style::DEFAULT_PIXELATE, Style::DEFAULT_BLUR, Style::DEFAULT_FILL, Style::Blur { sigma: 2.0 }, Style::Pixelate { cells: 1 }])
        .map(|(&(x, y), style)| region(x, y, 1, 1, style, Shape::Ellipse))
        .collect();
    let params = Params { feather: 0.1, noise: 16.0, seed: 5 };
    let (want, got) = both(gpu, &orig, &regions, &params);
    assert!(max_diff(&want, &got).0 <= 1);
    assert_ne!(got, orig);
}

/// A region of 2100×2100 pixels is 69,000 work items of 8×8, more than one dispatch
/// dimension allows (65,535): the dispatch is laid out in two dimensions.
#[test]
fn regions_beyond_one_dispatch_dimension() {
    let Some(gpu) = full() else { return };
    let orig = noise_frame(2200, 2150, 3, 11);
    let regions = [
        region(40, 20, 2100, 2100, Style::DEFAULT_PIXELATE, Shape::Ellipse),
        region(0, 0, 2200, 2150, Style::Fill { color: [1, 2, 3] }, Shape::Ellipse),
        region(500, 600, 300, 200, Style::DEFAULT_BLUR, Shape::Rect),
    ];
    let params = Params { feather: 0.1, noise: 16.0, seed: 1 };
    let (want, got) = both(gpu, &orig, &regions, &params);
    let (d, at) = max_diff(&want, &got);
    assert!(d <= 1, "differs by {d} at byte {at}");
}

fn require_gpu() -> bool {
    std::env::var("OBSCURA_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// `auto` takes the CPU path on a software adapter (lavapipe/llvmpipe: no faster than the
/// CPU code) and the GPU on a real one; `gpu` forces the shader on either.
#[test]
fn auto_prefers_the_cpu_on_a_software_adapter_and_gpu_forces_the_shader() {
    let auto = Redactor::new(RedactOn::Auto).expect("auto never fails");
    match GpuRedactor::find_adapter() {
        Err(e) => {
            assert!(!require_gpu(), "OBSCURA_REQUIRE_GPU=1 but {e}");
            assert!(matches!(auto, Redactor::Cpu));
            assert!(Redactor::new(RedactOn::Gpu).is_err(), "gpu without an adapter is an error");
            eprintln!("skipped the forced-GPU half: {e}");
        }
        Ok(adapter) => {
            let software = adapter.get_info().device_type == wgpu::DeviceType::Cpu;
            assert_eq!(matches!(auto, Redactor::Cpu), software, "auto on {:?}", adapter.get_info());
            let forced = Redactor::new(RedactOn::Gpu).unwrap();
            assert!(matches!(forced, Redactor::Gpu(_)));
            assert!(forced.name().starts_with("gpu: "));
            let orig = noise_frame(50, 40, 3, 2);
            let regions = [region(5, 5, 30, 30, Style::DEFAULT_PIXELATE, Shape::Ellipse)];
            let params = Params { feather: 0.1, noise: 16.0, seed: 9 };
            let (mut a, mut b) = (orig.clone(), orig.clone());
            forced.redact(&mut a, &regions, &params).unwrap();
            Redactor::Cpu.redact(&mut b, &regions, &params).unwrap();
            assert!(max_diff(&a, &b).0 <= 1);
            assert_ne!(a, orig);
        }
    }
    assert!(matches!(Redactor::new(RedactOn::Cpu).unwrap(), Redactor::Cpu));
}

/// The CLI on a real photo: `--redact-on gpu` writes the same pixels as `--redact-on cpu`.
#[test]
fn cli_gives_the_same_photo_on_either_backend() {
    if full().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("photo.png");
    load_rgb(&eval_image(ONE_FACE)).save(&input).unwrap();
    let mut outputs = Vec::new();
    for (on, style) in [("cpu", "pixelate"), ("gpu", "pixelate"), ("cpu", "blur"), ("gpu", "blur")] {
        let out = tmp.path().join(format!("{on}-{style}.png"));
        let result = run(obscura().args(["anonymise", "--seed", "3", "--shape", "ellipse", "--redact-on", on, "--style", style, "-o"]).arg(&out).arg(&input));
        assert!(result.status.success());
        outputs.push(load_rgb(&out));
    }
    let original = load_rgb(&input);
    for pair in outputs.chunks(2) {
        let worst = pair[0].as_raw().iter().zip(pair[1].as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        assert!(worst <= 1, "cpu and gpu differ by {worst}");
        assert!(mean_abs_diff(&original, &pair[1], ONE_FACE_BOX) > 10.0, "the face was redacted");
    }
}

/// Asking for the GPU where there is none is a one-line set-up error and writes nothing;
/// `auto` quietly uses the CPU.
#[test]
fn cli_without_an_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("photo.jpg");
    std::fs::copy(eval_image(ONE_FACE), &input).unwrap();
    // A backend this build does not include: wgpu finds no adapter.
    let out = run(obscura().env("WGPU_BACKEND", "dx12").args(["anonymise", "--redact-on", "gpu"]).arg(&input));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("no GPU adapter found") && err.contains("CPU"), "{err}");
    assert_eq!(files_in(tmp.path()), ["photo.jpg"]);
    let out = run(obscura().env("WGPU_BACKEND", "dx12").args(["anonymise", "--redact-on", "auto"]).arg(&input));
    assert!(out.status.success());
    assert_eq!(files_in(tmp.path()), ["photo.anonymized.jpg", "photo.jpg"]);
}
