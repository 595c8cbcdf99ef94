//! Criterion benches per image format on a 12-megapixel photo (4000×3000, a WIDER photo
//! from `../shared/eval` scaled up): decode and encode of each format Obscura reads and
//! writes, and the stages of one HEIC end to end (decode, detect, redact, encode as JPEG),
//! plus a 30-frame animated GIF anonymised whole. HEIC and AVIF inputs are made with
//! libheif's `heif-enc` (Debian's libheif-examples) when it is installed, and skipped
//! with a printed reason when it is not. Run: `cargo bench --bench formats`.

use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use obscura::image_io::{self, Format, Frame, ImageConfig, KeptMetadata, Quality, Timing};
use obscura::redact::{self, Params};
use obscura::{Anonymizer, Config};

const PHOTO: &str = "wider_0_Parade_marchingband_1_139.jpg";

fn photo(width: u32, height: u32) -> Frame {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/eval/images").join(PHOTO);
    let img = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rgb = img.resize_to_fill(width, height, image::imageops::FilterType::Triangle).to_rgb8();
    Frame::new(width, height, 3, rgb.into_raw())
}

/// The photo as HEIC or AVIF, made by `heif-enc` from a PNG; `None` (said why) without it.
fn heif(frame: &Frame, avif: bool) -> Option<Vec<u8>> {
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("photo.png");
    std::fs::write(&png, image_io::encode(frame.clone(), Format::Png, &KeptMetadata::default(), 90).unwrap()).unwrap();
    let out = tmp.path().join(if avif { "photo.avif" } else { "photo.heic" });
    let mut cmd = std::process::Command::new("heif-enc");
    cmd.args(["-q", "80", "-o"]).arg(&out).arg(&png);
    if avif {
        cmd.arg("-A");
    }
    match cmd.output() {
        Ok(o) if o.status.success() => Some(std::fs::read(out).unwrap()),
        Ok(o) => {
            eprintln!("skipping {}: heif-enc failed: {}", if avif { "AVIF" } else { "HEIC" }, String::from_utf8_lossy(&o.stderr));
            None
        }
        Err(e) => {
            eprintln!("skipping HEIC and AVIF: heif-enc (Debian: libheif-examples) is not available: {e}");
            None
        }
    }
}

fn formats(c: &mut Criterion) {
    let frame = photo(4000, 3000);
    let lossy_webp = Quality { jpeg: 90, webp: Some(90) };
    let lossless = Quality::lossless_webp(90);
    let encoded: Vec<(&str, Format, Quality)> = vec![
        ("jpeg", Format::Jpeg, lossless),
        ("png", Format::Png, lossless),
        ("webp_lossless", Format::Webp, lossless),
        ("webp_lossy", Format::Webp, lossy_webp),
        ("gif", Format::Gif, lossless),
        ("tiff", Format::Tiff, lossless),
    ];
    let mut g = c.benchmark_group("12mp");
    g.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_secs(1));
    let mut inputs = Vec::new();
    for (name, format, quality) in &encoded {
        let bytes = image_io::encode_pictures(vec![frame.clone()], None, *format, &KeptMetadata::default(), *quality).unwrap();
        eprintln!("12 MP {name}: {} bytes", bytes.len());
        g.bench_function(format!("encode_{name}"), |b| {
            b.iter_batched(|| vec![frame.clone()], |f| image_io::encode_pictures(f, None, *format, &KeptMetadata::default(), *quality).unwrap(), BatchSize::LargeInput)
        });
        if *name != "webp_lossless" || !inputs.iter().any(|(n, _): &(String, Vec<u8>)| n == "webp") {
            inputs.push((name.to_string(), bytes));
        }
    }
    for (name, avif) in [("heic", false), ("avif", true)] {
        if let Some(bytes) = heif(&frame, avif) {
            eprintln!("12 MP {name}: {} bytes", bytes.len());
            inputs.push((name.to_string(), bytes));
        }
    }
    for (name, bytes) in &inputs {
        g.bench_function(format!("decode_{name}"), |b| b.iter(|| image_io::decode(bytes, &ImageConfig::default()).unwrap()));
    }

    // One HEIC end to end, stage by stage: decode (above), detect, redact, encode (JPEG,
    // above), and whole.
    let anonymizer = Anonymizer::new(Config::default()).expect("run scripts/setup first");
    g.bench_function("detect_default", |b| b.iter(|| anonymizer.plan(&frame).unwrap()));
    let (_, regions) = anonymizer.plan(&frame).unwrap();
    eprintln!("{} regions on the 12 MP photo", regions.len());
    let params = Params::for_image(&anonymizer.config().redact);
    g.bench_function("redact_default_plan", |b| {
        b.iter_batched_ref(|| frame.clone(), |f| redact::cpu::redact(f, &regions, &params), BatchSize::LargeInput)
    });
    if let Some((_, heic)) = inputs.iter().find(|(n, _)| n == "heic") {
        g.bench_function("anonymize_heic_to_jpeg", |b| b.iter(|| anonymizer.anonymize(heic).unwrap()));
    }
    g.finish();

    // An animation: 30 frames of 640×360, the photo panning, anonymised whole (every
    // frame detected and redacted, written back as a GIF).
    let wide = photo(1280, 360);
    let frames: Vec<Frame> = (0..30)
        .map(|i| {
            let x = i * 20;
            let data = (0..360).flat_map(|y| wide.data()[(y * 1280 + x) * 3..(y * 1280 + x + 640) * 3].to_vec()).collect();
            Frame::new(640, 360, 3, data)
        })
        .collect();
    let timing = Timing { delays_ms: vec![40; 30], loops: 0 };
    let gif = image_io::encode_pictures(frames, Some(&timing), Format::Gif, &KeptMetadata::default(), lossless).unwrap();
    let mut g = c.benchmark_group("animation");
    g.sample_size(10).measurement_time(Duration::from_secs(20)).warm_up_time(Duration::from_secs(1));
    g.bench_function("anonymize_gif_30_frames_640x360", |b| b.iter(|| anonymizer.anonymize(&gif).unwrap()));
    g.finish();
}

criterion_group!(benches, formats);
criterion_main!(benches);
