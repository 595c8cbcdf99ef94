//! What each fuzz target asserts, in one place: `fuzz/fuzz_targets/*.rs` feed it
//! libFuzzer's inputs, and `tests/fuzz_corpus.rs` replays every committed corpus and
//! regression file through it under `cargo test`. A property that fails panics.
#![allow(dead_code)]

use std::path::{Component, Path};
use std::sync::OnceLock;

use obscura::image_io::{self, ImageConfig, KeptMetadata};
use obscura::{Anonymizer, Config};

/// Bytes → `Anonymizer::anonymize` (faces, the real model): either an error, or an
/// image of the same format and size as the input decodes to, with as many frames or
/// pages. Never a panic, never the
/// input passed through.
pub fn anonymize(data: &[u8]) {
    static ANONYMIZER: OnceLock<Anonymizer> = OnceLock::new();
    let anonymizer = ANONYMIZER.get_or_init(|| {
        let mut config = Config::default();
        config.detect.targets = vec![obscura::detect::Class::Face];
        config.runtime.sessions = 1;
        config.runtime.intra_threads = 1;
        // Small limits keep each input fast; the limits themselves are under test too.
        config.image.max_dimension = 2048;
        config.image.max_pixels = 1 << 20;
        config.image.max_frames = 8;
        config.redact.seed = Some(1);
        Anonymizer::new(config).expect("the models and ONNX Runtime (scripts/setup)")
    });
    let Ok(out) = anonymizer.anonymize(data) else { return };
    let input = image_io::decode(data, &ImageConfig { max_dimension: 2048, max_pixels: 1 << 20, max_frames: 8, ..ImageConfig::default() })
        .expect("anonymize accepted what decode refuses");
    let output = image_io::decode(&out.bytes, &ImageConfig::default()).expect("the output decodes");
    assert_eq!(output.format, input.format.written_as(), "the same format, or JPEG for HEIC and AVIF");
    assert_eq!((output.frame.width(), output.frame.height()), (input.frame.width(), input.frame.height()), "same size");
    let sizes = |d: &image_io::Decoded| d.more.iter().map(|f| (f.width(), f.height())).collect::<Vec<_>>();
    assert_eq!(sizes(&output), sizes(&input), "every frame or page, each of its size");
    if !output.more.is_empty() {
        // (An animation of one frame is written as a still.)
        assert_eq!(output.timing.as_ref().map(|t| t.delays_ms.len()), input.timing.as_ref().map(|t| t.delays_ms.len()), "one delay per frame");
    }
    if !out.report.regions.is_empty() {
        assert!(out.bytes != data, "regions were found but the input was passed through");
    }
}

/// EXIF and ICC blocks, as a camera (or an attacker) may write them: what
/// `--keep-metadata` keeps is only allowlisted small scalars and rebuilt colorimetry, and
/// a JPEG carrying the block round-trips without panics.
pub fn metadata(data: &[u8]) {
    if let Some(exif) = image_io::sanitize_exif(data) {
        let parsed = exif::Reader::new().read_raw(exif).expect("a sanitised EXIF block parses");
        for f in parsed.fields() {
            let allowed = image_io::EXIF_ALLOWLIST.contains(&f.tag) || matches!(f.tag, exif::Tag::Orientation | exif::Tag::ExifIFDPointer);
            assert!(allowed, "kept a tag outside the allowlist: {}", f.tag);
            assert!(!matches!(f.value, exif::Value::Undefined(..) | exif::Value::Byte(_)), "kept a blob: {}", f.tag);
            assert_eq!(f.ifd_num, exif::In::PRIMARY, "kept a field of another image");
        }
    }
    if let Some(icc) = image_io::sanitize_icc(data) {
        assert!(icc.len() <= 1024, "a rebuilt ICC profile of {} bytes", icc.len());
        assert_eq!(image_io::sanitize_icc(&icc).as_deref(), Some(icc.as_slice()), "rebuilding is idempotent");
    }
    // The same bytes as a JPEG's EXIF segment, decoded with keep_metadata and encoded.
    if data.len() < 60_000 {
        let mut jpeg = tiny_jpeg();
        let segment = [b"Exif\0\0".as_slice(), data].concat();
        let mut app1 = vec![0xFF, 0xE1];
        app1.extend(((segment.len() + 2) as u16).to_be_bytes());
        app1.extend(segment);
        jpeg.splice(2..2, app1);
        let config = ImageConfig { keep_metadata: true, ..ImageConfig::default() };
        if let Ok(decoded) = image_io::decode(&jpeg, &config) {
            let KeptMetadata { exif, icc_profile } = &decoded.metadata;
            if let Some(e) = exif {
                assert_eq!(image_io::sanitize_exif(e).as_deref(), Some(e.as_slice()), "kept EXIF is already sanitised");
            }
            assert!(icc_profile.is_none(), "no ICC profile in this JPEG");
            image_io::encode(decoded.frame, decoded.format, &decoded.metadata, 80).expect("encodes");
        }
    }
}

fn tiny_jpeg() -> Vec<u8> {
    static JPEG: OnceLock<Vec<u8>> = OnceLock::new();
    JPEG.get_or_init(|| {
        let frame = obscura::image_io::Frame::new(8, 8, 3, vec![128; 8 * 8 * 3]);
        image_io::encode(frame, image_io::Format::Jpeg, &KeptMetadata::default(), 80).unwrap()
    })
    .clone()
}

/// The retention policy parser: any text is accepted or refused with a message; never a
/// panic, and an accepted policy has sane values.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(policy) = obscura::retention::Policy::parse(text) {
        for (name, class) in &policy.classes {
            assert!(!name.is_empty(), "a class without a name");
            assert!(policy.class(name).is_some(), "class {name} cannot be looked up");
            let _ = class;
        }
    }
}

/// Keys and relative names from listings, object keys and flags: a name joined under an
/// output folder never leaves it, and a key written to a folder store lands inside it.
pub fn store_key(data: &[u8]) {
    let Ok(key) = std::str::from_utf8(data) else { return };
    let root = Path::new("/srv/out");
    if let Ok(joined) = image_io::safe_join(root, Path::new(key)) {
        assert!(joined.starts_with(root) && joined != root, "{key:?} joined to {}", joined.display());
        assert!(!joined.components().any(|c| matches!(c, Component::ParentDir)), "{key:?} kept a `..`");
    }
    static STORE: OnceLock<(tempfile::TempDir, obscura::store::Store, tokio::runtime::Runtime)> = OnceLock::new();
    let (dir, store, rt) = STORE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("store");
        let store = obscura::store::Store::open(&inner.display().to_string(), &Default::default()).unwrap();
        (dir, store, tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap())
    });
    let root = dir.path().join("store").canonicalize().unwrap();
    let leftovers = || std::fs::read_dir(&root).unwrap().flatten().map(|e| e.file_name()).collect::<Vec<_>>();
    assert!(leftovers().is_empty(), "an earlier input left {:?}", leftovers());
    if rt.block_on(store.put(key, b"x".to_vec())).is_err() {
        assert!(leftovers().is_empty(), "{key:?}: a failed write left {:?} behind", leftovers());
    } else {
        // Whatever was written is inside the store's folder, and can be deleted again.
        let outside: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).filter(|n| n != "store").collect();
        assert!(outside.is_empty(), "{key:?} wrote outside the store: {outside:?}");
        rt.block_on(store.delete(key)).unwrap();
        assert!(leftovers().is_empty(), "{key:?}: the delete left {:?} behind", leftovers());
    }
}
