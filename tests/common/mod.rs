//! Helpers shared by the integration tests: where the evaluation photos and the binary
//! are, and small image comparisons.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use obscura::geometry::PixelRect;

/// A WIDER photo with one large, frontal face at (116, 124) 150×218.
pub const ONE_FACE: &str = "wider_8_Election_Campain_Election_Campaign_8_69.jpg";
pub const ONE_FACE_BOX: PixelRect = PixelRect { x: 116, y: 124, w: 150, h: 218 };

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/eval` (or `OBSCURA_EVAL_DIR`); panics with a clear message when absent.
pub fn eval_dir() -> PathBuf {
    let dir = std::env::var_os("OBSCURA_EVAL_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("../shared/eval"));
    assert!(dir.join("manifest.csv").is_file(), "evaluation set not found at {} (set OBSCURA_EVAL_DIR)", dir.display());
    dir
}

pub fn eval_image(name: &str) -> PathBuf {
    eval_dir().join("images").join(name)
}

/// True when running under CI, where skipping is not allowed.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
}

/// The `obscura` binary with logs quiet unless a test asks.
pub fn obscura() -> Command {
    let mut c = Command::new(option_env!("CARGO_BIN_EXE_obscura").expect("the obscura binary is built with the `cli` feature"));
    c.env_remove("OBSCURA_ORT_LIB").env_remove("ORT_DYLIB_PATH").env_remove("OBSCURA_LOG");
    c
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("running obscura");
    eprintln!("--- {:?}\nstatus {:?}\nstderr:\n{}", cmd, out.status.code(), String::from_utf8_lossy(&out.stderr));
    out
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Mean absolute difference per channel between two RGB images over `rect`.
pub fn mean_abs_diff(a: &image::RgbImage, b: &image::RgbImage, rect: PixelRect) -> f64 {
    let mut sum = 0u64;
    for y in rect.y..rect.y + rect.h {
        for x in rect.x..rect.x + rect.w {
            let (p, q) = (a.get_pixel(x, y).0, b.get_pixel(x, y).0);
            for c in 0..3 {
                sum += (p[c] as i32 - q[c] as i32).unsigned_abs() as u64;
            }
        }
    }
    sum as f64 / (rect.w as u64 * rect.h as u64 * 3) as f64
}

pub fn load_rgb(path: &Path) -> image::RgbImage {
    image::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display())).to_rgb8()
}

/// `img` written in `format` by the `image` crate's encoder.
pub fn encoded(img: &image::RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

/// The picture Obscura itself decodes from `bytes`, as RGB: the reference for formats
/// the `image` crate cannot open (HEIC, AVIF).
pub fn decoded_rgb(bytes: &[u8]) -> image::RgbImage {
    let frame = obscura::image_io::decode(bytes, &Default::default()).expect("decoding the reference").frame;
    frame.rgb_crop(PixelRect { x: 0, y: 0, w: frame.width(), h: frame.height() })
}

/// The files in a folder (names only), sorted.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// CRC-32 (IEEE), as PNG chunks carry it.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A PNG chunk: length, type, data, CRC.
pub fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend(kind);
    out.extend(data);
    out.extend(crc32(&[kind.as_slice(), data].concat()).to_be_bytes());
    out
}

/// A PNG whose header claims `w`×`h` pixels (valid CRCs, a token IDAT; the data is not
/// there): a decompression bomb as far as the header goes.
pub fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    [b"\x89PNG\r\n\x1a\n".to_vec(), png_chunk(b"IHDR", &ihdr), png_chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0, 0, 0, 0, 1]), png_chunk(b"IEND", &[])].concat()
}

/// A valid GIF whose screen is `w`×`h` and whose one image is a single pixel: a header
/// that claims far more pixels than the file holds.
pub fn gif_claiming(w: u16, h: u16) -> Vec<u8> {
    let mut gif = b"GIF89a".to_vec();
    gif.extend([w.to_le_bytes(), h.to_le_bytes()].concat());
    // No global palette; an image at (0, 0) of 1×1 with a 2-colour local palette, its
    // LZW stream (clear, index 0, end), and the trailer.
    gif.extend([0, 0, 0, 0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0x80, 0, 0, 0, 255, 255, 255, 2, 2, 0x44, 0x01, 0, 0x3B]);
    gif
}

/// A RIFF chunk (WebP): type, little-endian length, data, padding to even length.
pub fn riff_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = kind.to_vec();
    out.extend((data.len() as u32).to_le_bytes());
    out.extend(data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
    out
}


/// A new, empty database on the test PostgreSQL server (`OBSCURA_TEST_POSTGRES_URL`), named
/// `PREFIX_<random>`; `None` (skip, with the reason printed) outside CI when no server is set.
#[cfg(feature = "retention")]
pub async fn postgres_database(prefix: &str) -> Option<String> {
    use sqlx::Connection;
    let Some(base) = std::env::var("OBSCURA_TEST_POSTGRES_URL").ok().filter(|u| !u.is_empty()) else {
        assert!(!in_ci(), "CI must set OBSCURA_TEST_POSTGRES_URL (.ci/run starts scripts/test-postgres)");
        eprintln!("skipped: OBSCURA_TEST_POSTGRES_URL is not set (scripts/test-postgres start DIR prints one)");
        return None;
    };
    let mut raw = [0u8; 6];
    getrandom::fill(&mut raw).unwrap();
    let name = format!("{prefix}_{}", raw.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let mut conn = sqlx::PgConnection::connect(&base).await.expect("connecting to the test PostgreSQL server");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
    let (server, _) = base.rsplit_once('/').expect("a postgres URL has a path");
    Some(format!("{server}/{name}"))
}

/// A little-endian TIFF's first directory: where it is and how many entries it has.
pub fn first_ifd(tiff: &[u8]) -> (usize, usize) {
    assert_eq!(&tiff[..4], b"II*\0", "a little-endian TIFF");
    let at = u32::from_le_bytes(tiff[4..8].try_into().unwrap()) as usize;
    (at, usize::from(u16::from_le_bytes([tiff[at], tiff[at + 1]])))
}

/// A single-page little-endian TIFF made two pages long: a copy of its directory (the
/// same strips) is chained after the first.
pub fn with_second_page(mut tiff: Vec<u8>) -> Vec<u8> {
    let (at, n) = first_ifd(&tiff);
    if tiff.len() % 2 == 1 {
        tiff.push(0);
    }
    let second = u32::try_from(tiff.len()).unwrap();
    let ifd = tiff[at..at + 2 + 12 * n].to_vec();
    tiff.extend_from_slice(&ifd);
    tiff.extend_from_slice(&[0; 4]);
    tiff[at + 2 + 12 * n..at + 6 + 12 * n].copy_from_slice(&second.to_le_bytes());
    tiff
}

/// TIFF tags that describe the pixels and nothing else: size, samples, compression,
/// photometric, strips, resolution, predictor, extra samples, sample format.
pub const TIFF_PIXEL_TAGS: [u16; 16] = [256, 257, 258, 259, 262, 273, 277, 278, 279, 282, 283, 284, 296, 317, 338, 339];

/// The tags of each directory (page) of a little-endian TIFF, following the chain.
pub fn tiff_directories(tiff: &[u8]) -> Vec<Vec<u16>> {
    let mut at = first_ifd(tiff).0;
    let mut directories = Vec::new();
    while at != 0 {
        assert!(directories.len() < 1000, "a directory chain that loops");
        let n = usize::from(u16::from_le_bytes([tiff[at], tiff[at + 1]]));
        directories.push((0..n).map(|k| u16::from_le_bytes([tiff[at + 2 + 12 * k], tiff[at + 3 + 12 * k]])).collect());
        at = u32::from_le_bytes(tiff[at + 2 + 12 * n..at + 6 + 12 * n].try_into().unwrap()) as usize;
    }
    directories
}

/// A GIF's blocks after its header and global palette: `("image", 0x2C)` for each image,
/// `("extension", label)` for each extension block.
pub fn gif_blocks(gif: &[u8]) -> Vec<(&'static str, u8)> {
    let table = |flags: u8| if flags & 0x80 != 0 { 3 << ((flags & 7) + 1) } else { 0 };
    let skip = |mut i: usize| {
        while gif[i] != 0 {
            i += 1 + usize::from(gif[i]);
        }
        i + 1
    };
    let mut i = 13 + table(gif[10]);
    let mut blocks = Vec::new();
    loop {
        match gif[i] {
            0x3B => return blocks,
            0x21 => {
                blocks.push(("extension", gif[i + 1]));
                i = skip(i + 2);
            }
            0x2C => {
                blocks.push(("image", 0x2C));
                i = skip(i + 11 + table(gif[i + 9]));
            }
            other => panic!("unknown GIF block {other:#x}"),
        }
    }
}

/// The face in tests/fixtures/astronaut.{heic,avif} (384×384; tests/fixtures/make_heif.py),
/// marked by hand.
pub const ASTRONAUT_FACE: PixelRect = PixelRect { x: 140, y: 55, w: 62, h: 75 };

/// A committed fixture's path.
pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// Whether libheif (HEIC and AVIF input) can be loaded here. In CI it must be (the test
/// fails); elsewhere a test without it is skipped, and says why.
pub fn libheif_here(test: &str) -> bool {
    match obscura::image_io::libheif() {
        Ok(_) => true,
        Err(why) if in_ci() => panic!("{test}: libheif is required in CI: {why}"),
        Err(why) => {
            eprintln!("skipping {test}: {why}");
            false
        }
    }
}

/// An ISO base media file's boxes under `path` (e.g. `["meta", "iinf"]`): type and body
/// of each. `meta`, `iinf` and `iref` are full boxes (their version and flags are skipped;
/// `iinf`'s entry count too).
pub fn isobmff_boxes<'a>(bytes: &'a [u8], path: &[&str]) -> Vec<(String, &'a [u8])> {
    let mut level = bytes;
    let mut boxes = Vec::new();
    for depth in 0..=path.len() {
        boxes.clear();
        let mut i = 0;
        while i + 8 <= level.len() {
            let size = u32::from_be_bytes(level[i..i + 4].try_into().unwrap()) as usize;
            let kind = String::from_utf8_lossy(&level[i + 4..i + 8]).into_owned();
            let size = if size == 0 { level.len() - i } else { size };
            assert!(size >= 8 && i + size <= level.len(), "box {kind} of {size} bytes at {i} overruns");
            boxes.push((kind, &level[i + 8..i + size]));
            i += size;
        }
        if depth == path.len() {
            break;
        }
        let (kind, body) = boxes.iter().find(|(k, _)| k == path[depth]).unwrap_or_else(|| panic!("no {} box", path[depth]));
        level = match kind.as_str() {
            "meta" | "iref" => &body[4..],
            "iinf" if body[0] == 0 => &body[6..],
            "iinf" => &body[8..],
            _ => body,
        };
    }
    boxes
}

/// A HEIF's items by type (`hvc1`, `av01`, `Exif`, `mime`, `grid`, …), in file order.
pub fn heif_item_types(bytes: &[u8]) -> Vec<String> {
    isobmff_boxes(bytes, &["meta", "iinf"])
        .into_iter()
        .filter(|(k, _)| k == "infe")
        .map(|(_, body)| {
            // version 2: id u16, protection u16, type; version 3: id u32, protection u16, type.
            let at = if body[0] >= 3 { 10 } else { 8 };
            String::from_utf8_lossy(&body[at..at + 4]).into_owned()
        })
        .collect()
}

/// The kinds of a HEIF's item references (`thmb` thumbnail, `auxl` auxiliary image,
/// `cdsc` metadata, `dimg` grid tiles, …).
pub fn heif_references(bytes: &[u8]) -> Vec<String> {
    isobmff_boxes(bytes, &["meta"])
        .iter()
        .any(|(k, _)| k == "iref")
        .then(|| isobmff_boxes(bytes, &["meta", "iref"]).into_iter().map(|(k, _)| k).collect())
        .unwrap_or_default()
}

/// A JPEG's markers up to its first scan, and whether it is one image (one start-of-image,
/// ending at its end-of-image marker: no embedded thumbnail or appended second picture).
pub fn jpeg_markers(jpeg: &[u8]) -> (Vec<u8>, bool) {
    let mut markers = Vec::new();
    let mut i = 2;
    while jpeg[i] == 0xFF && jpeg[i + 1] != 0xDA {
        markers.push(jpeg[i + 1]);
        i += 2 + usize::from(u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]));
    }
    markers.push(0xDA);
    let one = jpeg.starts_with(&[0xFF, 0xD8]) && jpeg.windows(3).filter(|w| *w == [0xFF, 0xD8, 0xFF]).count() == 1 && jpeg.ends_with(&[0xFF, 0xD9]);
    (markers, one)
}

/// The face in each of the three frames (or pages) of tests/fixtures/moving-face.* and
/// pages.tif (tests/fixtures/make_animations.py), where it was pasted.
pub const MOVING_FACE: [PixelRect; 3] = [PixelRect { x: 40, y: 60, w: 62, h: 75 }, PixelRect { x: 125, y: 70, w: 62, h: 75 }, PixelRect { x: 210, y: 60, w: 62, h: 75 }];

/// The letters of each text in tests/fixtures/text-scene.jpg (tests/fixtures/make_text.py
/// rendered them and prints these): a badge's heading and name, an ID card's title and
/// number, and a number plate turned by 8° and softened (the box holds its turned letters).
pub const TEXT_BOXES: [(&str, PixelRect); 5] = [
    ("badge-heading", PixelRect { x: 684, y: 44, w: 188, h: 19 }),
    ("badge-name", PixelRect { x: 684, y: 94, w: 226, h: 31 }),
    ("id-title", PixelRect { x: 680, y: 219, w: 190, h: 16 }),
    ("id-number", PixelRect { x: 680, y: 318, w: 236, h: 20 }),
    ("plate", PixelRect { x: 705, y: 441, w: 225, h: 61 }),
];

/// The boxes (`{"x1",…}` objects) of a report's detections of `class`.
pub fn detected(report: &serde_json::Value, class: &str) -> Vec<obscura::geometry::BBox> {
    let detections = report["detections"].as_array().unwrap_or_else(|| panic!("no detections in {report}"));
    detections.iter().filter(|d| d["class"] == class).map(|d| serde_json::from_value(d["bbox"].clone()).unwrap()).collect()
}

/// How much of `rect` (a share of its area) the boxes overlap, counted once.
pub fn share_under(rect: PixelRect, boxes: &[obscura::geometry::BBox]) -> f32 {
    let pixels: Vec<PixelRect> = boxes.iter().filter_map(|b| b.to_pixels(u32::MAX, u32::MAX)).collect();
    let gt = obscura::geometry::BBox::from_xywh(rect.x as f32, rect.y as f32, rect.w as f32, rect.h as f32);
    obscura::geometry::covered_fraction(&gt, &pixels, u32::MAX, u32::MAX)
}

/// An animation's timing as a decoder reads it: each frame's delay in ms, and how many
/// times it plays (0 = forever).
pub type Played = (Vec<u32>, u32);

/// Every picture of a file as a viewer shows it, as RGB, read by decoders other than the
/// one under test where there is one: an animated GIF, PNG or WebP through `image`'s
/// animation decoders (with the timing), a TIFF's pages through the `tiff` crate.
pub fn all_pictures(bytes: &[u8]) -> (Vec<image::RgbImage>, Option<Played>) {
    use image::{AnimationDecoder, ImageFormat};
    let cursor = std::io::Cursor::new(bytes);
    let collect = |frames: image::Frames, loops| -> (Vec<image::RgbImage>, Option<Played>) {
        let loops = match loops {
            image::metadata::LoopCount::Infinite => 0,
            image::metadata::LoopCount::Finite(n) => n.get(),
        };
        let frames = frames.collect_frames().expect("decoding the frames");
        let delays = frames.iter().map(|f| { let (n, d) = f.delay().numer_denom_ms(); n / d }).collect();
        (frames.into_iter().map(|f| image::DynamicImage::ImageRgba8(f.into_buffer()).to_rgb8()).collect(), Some((delays, loops)))
    };
    match image::guess_format(bytes).expect("a known format") {
        ImageFormat::Gif => {
            let d = image::codecs::gif::GifDecoder::new(cursor).unwrap();
            let loops = d.loop_count();
            collect(d.into_frames(), loops)
        }
        ImageFormat::Png => {
            let d = image::codecs::png::PngDecoder::new(cursor).unwrap().apng().unwrap();
            let loops = d.loop_count();
            collect(d.into_frames(), loops)
        }
        ImageFormat::WebP => {
            let d = image::codecs::webp::WebPDecoder::new(cursor).unwrap();
            let loops = d.loop_count();
            collect(d.into_frames(), loops)
        }
        ImageFormat::Tiff => {
            let mut d = tiff::decoder::Decoder::new(cursor).unwrap();
            let mut pages = Vec::new();
            loop {
                let (w, h) = d.dimensions().unwrap();
                let channels = match d.colortype().unwrap() {
                    tiff::ColorType::RGB(8) => 3,
                    tiff::ColorType::RGBA(8) => 4,
                    other => panic!("page in {other:?}"),
                };
                let tiff::decoder::DecodingResult::U8(data) = d.read_image().unwrap() else { panic!("8-bit samples") };
                pages.push(image::RgbImage::from_raw(w, h, data.chunks_exact(channels).flat_map(|p| [p[0], p[1], p[2]]).collect()).unwrap());
                if !d.more_images() {
                    return (pages, None);
                }
                d.next_image().unwrap();
            }
        }
        other => panic!("{other:?} holds one picture"),
    }
}

/// The four-character kinds of a RIFF file's top-level chunks (a WebP's), in order.
pub fn riff_chunks(bytes: &[u8]) -> Vec<String> {
    let mut kinds = Vec::new();
    let mut i = 12;
    while i + 8 <= bytes.len() {
        kinds.push(String::from_utf8_lossy(&bytes[i..i + 4]).into_owned());
        let size = u32::from_le_bytes(bytes[i + 4..i + 8].try_into().unwrap()) as usize;
        i += 8 + size + (size & 1);
    }
    kinds
}

/// The kinds of a PNG's chunks, in order.
pub fn png_chunks(bytes: &[u8]) -> Vec<String> {
    let mut kinds = Vec::new();
    let mut i = 8;
    while i + 8 <= bytes.len() {
        let size = u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
        kinds.push(String::from_utf8_lossy(&bytes[i + 4..i + 8]).into_owned());
        i += 12 + size;
    }
    kinds
}

/// The secrets the animation fixtures carry (tests/fixtures/make_animations.py wrote them
/// in EXIF, XMP and text blocks beside the pictures).
pub const ANIMATION_SECRETS: [&[u8]; 7] = [b"SECRET", b"Exif", b"XMP", b"http://ns.adobe.com", b"tEXt", b"eXIf", b"Author"];

/// Asserts that an output `bytes` holds `pictures` pictures and nothing but what draws
/// them, by parsing its structure: a JPEG's segments (one image: no EXIF thumbnail, MPF
/// or appended preview; no APP1/APP2/APP13/COM), a PNG's chunks, a WebP's chunks, a GIF's
/// blocks (graphic control blocks, and one loop block for an animation), a TIFF's
/// directories and their tags; and that none of the fixtures' longer secrets is in it.
pub fn assert_only_pixels(name: &str, bytes: &[u8], pictures: usize) {
    fn chunk_list(chunks: &[String]) -> Vec<&str> {
        chunks.iter().map(String::as_str).collect()
    }
    match image::guess_format(bytes).unwrap_or_else(|e| panic!("{name}: the output is no image: {e}")) {
        image::ImageFormat::Jpeg => {
            assert_eq!(pictures, 1, "{name}: a JPEG holds one picture");
            let (markers, one) = jpeg_markers(bytes);
            assert!(one, "{name}: one image");
            assert!(markers.iter().all(|m| matches!(m, 0xE0 | 0xDB | 0xC4 | 0xC0 | 0xC2 | 0xDD | 0xDA)), "{name}: markers {markers:02x?}");
        }
        image::ImageFormat::Png => {
            let mut chunks = png_chunks(bytes);
            chunks.dedup();
            if pictures == 1 {
                assert!(chunk_list(&chunks).iter().all(|c| ["IHDR", "PLTE", "tRNS", "IDAT", "IEND"].contains(c)), "{name}: {chunks:?}");
            } else {
                let mut expected = vec!["IHDR", "acTL", "fcTL", "IDAT"];
                expected.extend(std::iter::repeat_n(["fcTL", "fdAT"], pictures - 1).flatten());
                expected.push("IEND");
                assert_eq!(chunk_list(&chunks), expected, "{name}");
            }
        }
        image::ImageFormat::WebP => {
            let chunks = riff_chunks(bytes);
            if pictures == 1 {
                assert!(chunk_list(&chunks).iter().all(|c| ["VP8 ", "VP8L", "VP8X", "ALPH"].contains(c)), "{name}: {chunks:?}");
            } else {
                let mut expected = vec!["VP8X", "ANIM"];
                expected.extend(std::iter::repeat_n("ANMF", pictures));
                assert_eq!(chunk_list(&chunks), expected, "{name}");
            }
        }
        image::ImageFormat::Gif => {
            // Images; extensions: a graphic control block per frame (timing and
            // transparency) and, for an animation, the one application block that says
            // how often it loops: no comment, XMP, ICC or plain-text block.
            let blocks = gif_blocks(bytes);
            assert_eq!(blocks.iter().filter(|b| b.0 == "image").count(), pictures, "{name}: {blocks:?}");
            let loops = blocks.iter().filter(|b| b.1 == 0xFF).count();
            assert_eq!(loops, usize::from(pictures > 1), "{name}: {blocks:?}");
            assert!(blocks.iter().all(|&(kind, label)| kind == "image" || label == 0xF9 || label == 0xFF), "{name}: {blocks:?}");
            if pictures > 1 {
                assert!(bytes.windows(11).any(|w| w == b"NETSCAPE2.0"), "{name}: the loop block");
            }
        }
        image::ImageFormat::Tiff => {
            // One directory a page (no thumbnail directory), each with only the tags that
            // describe its pixels: no EXIF, GPS, XMP, IPTC, ICC or description tag.
            let pages = tiff_directories(bytes);
            assert_eq!(pages.len(), pictures, "{name}: {pages:?}");
            assert!(pages.iter().flatten().all(|t| TIFF_PIXEL_TAGS.contains(t)), "{name}: tags {pages:?}");
        }
        other => panic!("{name}: {other:?} is not a format Obscura writes"),
    }
    // The fixtures' secrets, byte for byte: the long ones only. A redacted picture's
    // coded pixels are random enough to hold a 3- or 4-byte name such as "XMP" or "Exif"
    // by chance (a 2 MB TIFF, about one run in eight); the containers that would carry
    // those were parsed above.
    for secret in ANIMATION_SECRETS.iter().filter(|s| s.len() >= 6) {
        assert!(!bytes.windows(secret.len()).any(|w| w == *secret), "{name}: {} survived", String::from_utf8_lossy(secret));
    }
}
