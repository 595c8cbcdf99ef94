//! `obscura serve` as a deployment meets it: the real binary on a loopback port, spoken
//! to over HTTP (reqwest, and a raw socket where a client must misbehave on purpose).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;

const ANONYMISE: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf";
const RETENTION_ONLY: &str = "b0b1b2b3b4b5b6b7b8b9babbbcbdbebf";
const ADMIN: &str = "c0c1c2c3c4c5c6c7c8c9cacbcccdcecf";

/// A running `obscura serve`, killed when dropped.
struct Service {
    child: Child,
    api: String,
    metrics: String,
    _dir: tempfile::TempDir,
}

impl Service {
    fn start(extra: &[&str]) -> Service {
        Service::start_with_env(extra, &[])
    }

    /// [`Service::start`] with environment variables set for the service.
    fn start_with_env(extra: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, format!("# test tokens\nanonymise {ANONYMISE}\nretention {RETENTION_ONLY}\nadmin {ADMIN}\n")).unwrap();
        let mut child = obscura()
            .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--tokens"])
            .arg(&tokens)
            .args(extra)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let line = loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("listening on") => break line,
                Some(Ok(other)) => eprintln!("serve: {other}"),
                _ => panic!("obscura serve exited before listening: {:?}", child.wait()),
            }
        };
        // Keep draining stderr so the service never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(|l| eprintln!("serve: {}", l.unwrap_or_default())));
        let urls: Vec<&str> = line.split_whitespace().filter(|w| w.starts_with("http://")).collect();
        Service { child, api: urls[0].trim_end_matches(',').to_string(), metrics: urls[1].to_string(), _dir: dir }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    fn addr(&self) -> String {
        self.api.trim_start_matches("http://").to_string()
    }

    fn terminate(&mut self) {
        let sent = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(sent.success());
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

async fn post(service: &Service, path: &str, token: Option<&str>, body: Vec<u8>) -> reqwest::Response {
    let mut request = client().post(service.url(path)).body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// The JSON error body of a refused request, checking that no image came back.
async fn error_code(response: reqwest::Response, status: u16) -> String {
    error_of(response, status).await.0
}

/// A refused request's error code and message, checking that no image came back.
async fn error_of(response: reqwest::Response, status: u16) -> (String, String) {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(!message.is_empty(), "{body}");
    (body["error"]["code"].as_str().unwrap().to_string(), message)
}

/// `img` in `format`, carrying metadata that holds "SECRET": a JPEG's EXIF segment and
/// comment, a PNG's text chunk, a GIF's comment block, a TIFF's description tag.
fn with_secrets(img: &image::RgbImage, format: image::ImageFormat) -> Vec<u8> {
    use image::ImageFormat::*;
    let plain = encoded(img, format);
    let secret = match format {
        Jpeg => {
            let segment = |marker: u8, body: &[u8]| [&[0xFF, marker][..], &u16::try_from(body.len() + 2).unwrap().to_be_bytes(), body].concat();
            [&plain[..2], &segment(0xE1, b"Exif\0\0SECRET-EXIF"), &segment(0xFE, b"SECRET-COMMENT"), &plain[2..]].concat()
        }
        // After the 8-byte signature and the 25-byte IHDR chunk.
        Png => [&plain[..33], &png_chunk(b"tEXt", b"Comment\0SECRET-TEXT"), &plain[33..]].concat(),
        // Before the trailer.
        Gif => [&plain[..plain.len() - 1], b"\x21\xFE\x0ESECRET-COMMENT\x00\x3B"].concat(),
        Tiff => {
            use tiff::encoder::{TiffEncoder, colortype::RGB8};
            let mut out = std::io::Cursor::new(Vec::new());
            let mut encoder = TiffEncoder::new(&mut out).unwrap();
            let mut page = encoder.new_image::<RGB8>(img.width(), img.height()).unwrap();
            page.encoder().write_tag(tiff::tags::Tag::ImageDescription, "SECRET-DESCRIPTION").unwrap();
            page.write_data(img.as_raw()).unwrap();
            out.into_inner()
        }
        _ => return plain,
    };
    assert!(secret.windows(6).any(|w| w == b"SECRET"), "{format:?}");
    assert_eq!(decoded(&secret), decoded(&plain), "{format:?}: the same picture");
    secret
}

fn decoded(bytes: &[u8]) -> image::RgbImage {
    image::load_from_memory(bytes).unwrap().to_rgb8()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anonymises_jpeg_png_webp_gif_and_tiff_with_the_face_redacted_and_no_metadata() {
    let service = Service::start(&["--targets", "face"]);
    let original = load_rgb(&eval_image(ONE_FACE));
    let jpeg = std::fs::read(eval_image(ONE_FACE)).unwrap();
    // Each (but WebP: its animated fixture below carries EXIF and XMP) with metadata.
    for (format, body, mime) in [
        (image::ImageFormat::Jpeg, with_secrets(&original, image::ImageFormat::Jpeg), "image/jpeg"),
        (image::ImageFormat::Png, with_secrets(&original, image::ImageFormat::Png), "image/png"),
        (image::ImageFormat::WebP, encoded(&original, image::ImageFormat::WebP), "image/webp"),
        (image::ImageFormat::Gif, with_secrets(&original, image::ImageFormat::Gif), "image/gif"),
        (image::ImageFormat::Tiff, with_secrets(&original, image::ImageFormat::Tiff), "image/tiff"),
    ] {
        let response = post(&service, "/v1/anonymise", Some(ANONYMISE), body).await;
        assert_eq!(response.status(), 200, "{format:?}");
        assert_eq!(response.headers()["content-type"], mime);
        assert_eq!(response.headers()["x-obscura-regions"], "1");
        assert!(response.headers()["x-obscura-models"].to_str().unwrap().starts_with("centerface-int8@"));
        let bytes = response.bytes().await.unwrap();
        assert_eq!(image::guess_format(&bytes).unwrap(), format);
        let out = decoded(&bytes);
        assert!(mean_abs_diff(&original, &out, ONE_FACE_BOX) > 15.0, "{format:?}: the face is not redacted");
        // One picture and nothing but its pixels (the file's blocks, chunks, tags or
        // segments parsed and listed).
        assert_only_pixels(&format!("{format:?}"), &bytes, 1);
    }
    // Per-request options with the CLI's names: a solid fill in the face's centre.
    let response = post(&service, "/v1/anonymise?style=fill&format=png", Some(ANONYMISE), jpeg.clone()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    let out = decoded(&response.bytes().await.unwrap());
    let centre = out.get_pixel(ONE_FACE_BOX.x + ONE_FACE_BOX.w / 2, ONE_FACE_BOX.y + ONE_FACE_BOX.h / 2);
    assert_eq!(centre.0, [0, 0, 0]);
    // The report instead of the image.
    let response = post(&service, "/v1/anonymise?report=json", Some(ANONYMISE), jpeg.clone()).await;
    let report: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(report["regions"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["format"], "jpeg");
    // Detections only, no pixels.
    let response = post(&service, "/v1/detect", Some(ANONYMISE), jpeg).await;
    assert_eq!(response.headers()["content-type"], "application/json");
    let found: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    let face = &found["detections"][0]["bbox"];
    let (x1, y1) = (face["x1"].as_f64().unwrap(), face["y1"].as_f64().unwrap());
    assert!((x1 - ONE_FACE_BOX.x as f64).abs() < 40.0 && (y1 - ONE_FACE_BOX.y as f64).abs() < 60.0, "{found}");
}

/// HEIC and AVIF (phones' formats, read through libheif) come back as JPEG with the face
/// redacted and nothing else of the file: not its thumbnail, alpha image, EXIF or XMP. A
/// cut file, a HEIF of several images, or asking for HEIC output is refused; a service
/// without libheif answers 501 and says what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heic_and_avif_come_back_as_jpeg_and_bad_ones_get_the_documented_errors() {
    if !libheif_here("heic_and_avif_come_back_as_jpeg") {
        return;
    }
    let service = Service::start(&["--targets", "face"]);
    for name in ["astronaut.heic", "astronaut.avif"] {
        let body = std::fs::read(fixture(name)).unwrap();
        let before = decoded_rgb(&body);
        let response = post(&service, "/v1/anonymise", Some(ANONYMISE), body.clone()).await;
        assert_eq!(response.status(), 200, "{name}");
        assert_eq!(response.headers()["content-type"], "image/jpeg", "{name}");
        assert_eq!(response.headers()["x-obscura-regions"], "1", "{name}");
        let bytes = response.bytes().await.unwrap();
        assert_only_pixels(name, &bytes, 1);
        let face = mean_abs_diff(&before, &decoded(&bytes), ASTRONAUT_FACE);
        assert!(face > 15.0, "{name}: the face is redacted ({face:.1})");
        // Another written format on request; HEIC or AVIF output is not one.
        let response = post(&service, "/v1/anonymise?format=png", Some(ANONYMISE), body.clone()).await;
        assert_eq!(response.headers()["content-type"], "image/png", "{name}");
        for format in ["heic", "avif"] {
            let response = post(&service, &format!("/v1/anonymise?format={format}"), Some(ANONYMISE), body.clone()).await;
            assert_eq!(error_code(response, 400).await, "invalid_option", "{name} format={format}");
        }
        let format = if name.ends_with(".heic") { "HEIC" } else { "AVIF" };
        for cut in [body.len() / 2, body.len() - 100] {
            let response = post(&service, "/v1/anonymise", Some(ANONYMISE), body[..cut].to_vec()).await;
            let (code, message) = error_of(response, 422).await;
            assert_eq!(code, "corrupt_image", "{name} cut at {cut}: {message}");
            assert!(message.contains(format), "{name} cut at {cut}: the message names the format: {message}");
        }
    }
    // Stored on its side and turned for display (`irot`), or coded as a grid of tiles:
    // redacted where the photo shows the face.
    for name in ["astronaut-rotated.heic", "astronaut-grid.heic"] {
        let body = std::fs::read(fixture(name)).unwrap();
        let response = post(&service, "/v1/anonymise", Some(ANONYMISE), body.clone()).await;
        assert_eq!(response.headers()["x-obscura-regions"], "1", "{name}");
        let face = mean_abs_diff(&decoded_rgb(&body), &decoded(&response.bytes().await.unwrap()), ASTRONAUT_FACE);
        assert!(face > 15.0, "{name}: the face, where it is shown, is redacted ({face:.1})");
    }
    let response = post(&service, "/v1/anonymise", Some(ANONYMISE), std::fs::read(fixture("two-images.heic")).unwrap()).await;
    assert_eq!(error_code(response, 422).await, "animated_image", "two top-level images");
    drop(service);
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-libheif.so.1");
    let service = Service::start_with_env(&["--targets", "face"], &[("OBSCURA_LIBHEIF", missing.as_os_str())]);
    let response = post(&service, "/v1/anonymise", Some(ANONYMISE), std::fs::read(fixture("astronaut.heic")).unwrap()).await;
    assert_eq!(error_code(response, 501).await, "format_unavailable");
    let response = post(&service, "/v1/anonymise", Some(ANONYMISE), std::fs::read(eval_image(ONE_FACE)).unwrap()).await;
    assert_eq!(response.status(), 200, "other formats still work");
}

/// Animations and multi-page TIFFs over HTTP: every frame or page comes back redacted
/// at its face, in the format sent (or another animation format on request), with the
/// per-frame report; one-picture formats are refused for them (400), and a service with
/// a lower frame limit answers 422 `too_many_frames`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_frame_of_an_animation_comes_back_redacted() {
    let service = Service::start(&["--targets", "face"]);
    for (name, content_type) in [("moving-face.gif", "image/gif"), ("moving-face.png", "image/png"), ("moving-face.webp", "image/webp"), ("pages.tif", "image/tiff")] {
        let body = std::fs::read(fixture(name)).unwrap();
        let (before, _) = all_pictures(&body);
        let response = post(&service, "/v1/anonymise", Some(ANONYMISE), body.clone()).await;
        assert_eq!(response.status(), 200, "{name}");
        assert_eq!(response.headers()["content-type"], content_type, "{name}");
        // An animation's frames also take their neighbours' regions (2 + 3 + 2); a
        // TIFF's pages are separate pictures.
        let per_frame: &[usize] = if name.ends_with(".tif") { &[1, 1, 1] } else { &[2, 3, 2] };
        assert_eq!(response.headers()["x-obscura-regions"], per_frame.iter().sum::<usize>().to_string(), "{name}");
        let written = response.bytes().await.unwrap();
        let (after, _) = all_pictures(&written);
        assert_eq!(after.len(), 3, "{name}");
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            let face = mean_abs_diff(b, a, MOVING_FACE[i]);
            assert!(face > 15.0, "{name} frame {i}: the face is redacted ({face:.1})");
        }
        // The fixture's EXIF, XMP and text blocks (each holding "SECRET") are not carried
        // along: three pictures and nothing else in the file.
        assert!(body.windows(6).any(|w| w == b"SECRET"), "{name} carries its secrets");
        assert_only_pixels(name, &written, 3);
        let response = post(&service, "/v1/anonymise?report=json", Some(ANONYMISE), body.clone()).await;
        let report: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        let frames = report["frames"].as_array().unwrap_or_else(|| panic!("{name}: {report}"));
        assert_eq!(frames.len(), 3, "{name}");
        assert_eq!(frames.iter().map(|f| f["regions"].as_array().unwrap().len()).collect::<Vec<_>>(), per_frame, "{name}: {report}");
        let response = post(&service, "/v1/anonymise?format=jpeg", Some(ANONYMISE), body).await;
        assert_eq!(error_code(response, 400).await, "invalid_option", "{name} as one JPEG");
    }
    let response = post(&service, "/v1/detect", Some(ANONYMISE), std::fs::read(fixture("moving-face.gif")).unwrap()).await;
    let detected: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(detected["frames"].as_array().map(Vec::len), Some(3), "detect reports each frame: {detected}");
    assert_eq!(detected["regions"].as_array().map(Vec::len), Some(7), "the regions anonymise would redact: {detected}");
    let response = post(&service, "/v1/anonymise?format=webp", Some(ANONYMISE), std::fs::read(fixture("moving-face.gif")).unwrap()).await;
    assert_eq!(response.headers()["content-type"], "image/webp");
    assert_eq!(all_pictures(&response.bytes().await.unwrap()).0.len(), 3, "a GIF as an animated WebP");
    drop(service);
    let tmp = tempfile::tempdir().unwrap();
    let settings = tmp.path().join("obscura.toml");
    std::fs::write(&settings, "[image]\nmax_frames = 2\n").unwrap();
    let service = Service::start(&["--targets", "face", "--config", settings.to_str().unwrap()]);
    let response = post(&service, "/v1/anonymise", Some(ANONYMISE), std::fs::read(fixture("moving-face.gif")).unwrap()).await;
    assert_eq!(error_code(response, 422).await, "too_many_frames");
}

/// The `text` target over HTTP: a badge, an ID card and a plate come back redacted at
/// their boxes, `/v1/detect` finds each on the input and none on the output, the text
/// style is a per-request option, and a service that does not detect text refuses
/// `targets=text` rather than leave text visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn text_comes_back_redacted_and_the_detector_finds_none_there_afterwards() {
    let service = Service::start(&["--targets", "face,text"]);
    let body = std::fs::read(fixture("text-scene.jpg")).unwrap();
    let text_in = |report: &serde_json::Value| detected(report, "text");
    let response = post(&service, "/v1/detect?targets=text", Some(ANONYMISE), body.clone()).await;
    assert_eq!(response.status(), 200);
    let before: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    for (name, rect) in TEXT_BOXES {
        assert!(share_under(rect, &text_in(&before)) > 0.9, "{name} found on the input: {before}");
    }
    for query in ["format=png", "format=png&text_style=pixelate"] {
        let response = post(&service, &format!("/v1/anonymise?{query}"), Some(ANONYMISE), body.clone()).await;
        assert_eq!(response.status(), 200, "{query}");
        let output = response.bytes().await.unwrap().to_vec();
        let (original, after) = (decoded(&body), decoded(&output));
        for (name, rect) in TEXT_BOXES {
            let changed = mean_abs_diff(&original, &after, rect);
            assert!(changed > 20.0, "{query}: {name} redacted ({changed:.1})");
        }
        let response = post(&service, "/v1/detect?targets=text", Some(ANONYMISE), output).await;
        let again: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        for (name, rect) in TEXT_BOXES {
            assert_eq!(share_under(rect, &text_in(&again)), 0.0, "{query}: no text at {name} afterwards: {again}");
        }
    }
    let response = post(&service, "/v1/anonymise?text_style=smudge", Some(ANONYMISE), body.clone()).await;
    assert_eq!(error_code(response, 400).await, "invalid_option");
    drop(service);
    let service = Service::start(&["--targets", "face"]);
    let response = post(&service, "/v1/anonymise?targets=face,text", Some(ANONYMISE), body).await;
    assert_eq!(error_code(response, 400).await, "invalid_option", "text asked of a service that does not detect it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_the_documented_4xx_and_never_image_bytes() {
    let service = Service::start(&["--targets", "face", "--max-body-bytes", "2000000"]);
    let jpeg = std::fs::read(eval_image(ONE_FACE)).unwrap();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("empty", Vec::new(), 400, "empty_body"),
        ("not an image (a BMP)", b"BM\x00\x00\x00\x00\x00\x00\x00\x00".to_vec(), 415, "not_an_image"),
        ("truncated", jpeg[..jpeg.len() / 3].to_vec(), 422, "corrupt_image"),
        ("cut, with a new end-of-image marker", [&jpeg[..jpeg.len() * 2 / 3], &[0xFF, 0xD9][..]].concat(), 422, "corrupt_image"),
        ("decompression bomb", png_claiming(60_000, 60_000), 422, "too_many_pixels"),
        ("a GIF screen of 100 MP around a 1-pixel image", gif_claiming(10_000, 10_000), 422, "corrupt_image"),
        ("arithmetic-coded JPEG", std::fs::read(root().join("tests/fixtures/arithmetic.jpg")).unwrap(), 422, "unsupported_image"),
        ("animated GIF cut in its last frame", { let gif = std::fs::read(fixture("moving-face.gif")).unwrap(); gif[..gif.len() - 2000].to_vec() }, 422, "corrupt_image"),
    ];
    for (what, body, status, code) in cases {
        let response = post(&service, "/v1/anonymise", Some(ANONYMISE), body).await;
        assert_eq!(error_code(response, status).await, code, "{what}");
    }
    // A file of each format cut in half and cut near its end (for an animation, in its
    // last frame or the metadata after it): refused, the message naming the format.
    let small = image::imageops::thumbnail(&load_rgb(&eval_image(ONE_FACE)), 200, 150);
    let read = |name: &str| std::fs::read(fixture(name)).unwrap();
    for (what, whole, format) in [
        ("JPEG", jpeg.clone(), "JPEG"),
        ("PNG", encoded(&small, image::ImageFormat::Png), "PNG"),
        ("WebP", encoded(&small, image::ImageFormat::WebP), "WebP"),
        ("GIF", encoded(&small, image::ImageFormat::Gif), "GIF"),
        ("TIFF", encoded(&small, image::ImageFormat::Tiff), "TIFF"),
        ("animated GIF", read("moving-face.gif"), "GIF"),
        ("animated PNG", read("moving-face.png"), "PNG"),
        ("animated WebP", read("moving-face.webp"), "WebP"),
        ("TIFF pages", read("pages.tif"), "TIFF"),
    ] {
        for cut in [whole.len() / 2, whole.len() - 100] {
            let response = post(&service, "/v1/anonymise", Some(ANONYMISE), whole[..cut].to_vec()).await;
            let (code, message) = error_of(response, 422).await;
            assert_eq!(code, "corrupt_image", "{what} cut at {cut}: {message}");
            assert!(message.contains(&format!("corrupt or truncated {format} image")), "{what} cut at {cut}: {message}");
        }
    }
    for (query, what) in [("stlye=fill", "unknown option"), ("style=fill&style=blur", "an option given twice"), ("style=mosaic", "unknown style"), ("threshold=0.01", "threshold below the service's"), ("targets=person", "a target the service does not detect")] {
        // Refused before the body is read (so a small one; see the token test).
        let response = post(&service, &format!("/v1/anonymise?{query}"), Some(ANONYMISE), b"x".to_vec()).await;
        assert_eq!(error_code(response, 400).await, "invalid_option", "{what}");
    }
    let response = client().get(service.url("/v1/nothing-here")).send().await.unwrap();
    assert_eq!(error_code(response, 404).await, "not_found");
    // Too large a body: refused from its announced length before it is sent, and, sent
    // in chunks without a length, as soon as it passes the limit. (Raw sockets: a client
    // still writing when the server answers and closes sees a broken pipe, which is how
    // HTTP servers refuse large uploads.)
    let head = format!("POST /v1/anonymise HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ANONYMISE}\r\nConnection: close\r\n");
    let mut announced = TcpStream::connect(service.addr()).unwrap();
    write!(announced, "{head}Content-Length: 2500000\r\n\r\n").unwrap();
    let text = read_response(announced);
    assert!(text.starts_with("HTTP/1.1 413") && text.contains("\"body_too_large\""), "{text}");
    let mut chunked = TcpStream::connect(service.addr()).unwrap();
    write!(chunked, "{head}Transfer-Encoding: chunked\r\n\r\n").unwrap();
    // Exactly the limit, then one byte more, and nothing after it: the service has read
    // everything sent when it answers, so its close resets nothing.
    let chunk = vec![0xFFu8; 100_000];
    for _ in 0..20 {
        write!(chunked, "{:x}\r\n", chunk.len()).unwrap();
        chunked.write_all(&chunk).unwrap();
        chunked.write_all(b"\r\n").unwrap();
    }
    chunked.write_all(b"1\r\n\xFF\r\n").unwrap();
    let text = read_response(chunked);
    assert!(text.starts_with("HTTP/1.1 413") && text.contains("\"body_too_large\""), "{text}");
}

/// What the service answered on a raw connection (headers and body, lossy text).
fn read_response(mut stream: TcpStream) -> String {
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_but_health_needs_a_token_with_its_scope() {
    let service = Service::start(&["--targets", "face"]);
    // Refused before the body is read: a small one, which the server drains (a large
    // unread one is cut off, as HTTP servers do, and the client may see a reset).
    let jpeg = b"any body".to_vec();
    for route in ["/v1/anonymise", "/v1/detect"] {
        assert_eq!(error_code(post(&service, route, None, jpeg.clone()).await, 401).await, "unauthorized");
        assert_eq!(error_code(post(&service, route, Some("not-a-configured-token-0123456789"), jpeg.clone()).await, 401).await, "unauthorized");
        assert_eq!(error_code(post(&service, route, Some(&ANONYMISE[..31]), jpeg.clone()).await, 401).await, "unauthorized");
        assert_eq!(error_code(post(&service, route, Some(RETENTION_ONLY), jpeg.clone()).await, 403).await, "forbidden");
    }
    for health in ["/healthz", "/readyz"] {
        assert_eq!(client().get(service.url(health)).send().await.unwrap().status(), 200, "{health}");
    }
}

/// Sends a request's headers and the first half of its body, and stops there: the request
/// holds its admission slot until the rest comes (or the deadline passes).
fn half_sent(service: &Service, body: &[u8], token: &str) -> TcpStream {
    let mut stream = TcpStream::connect(service.addr()).unwrap();
    write!(stream, "POST /v1/anonymise HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
    stream.write_all(&body[..body.len() / 2]).unwrap();
    stream.flush().unwrap();
    stream
}

/// Sends the rest of the body and reads the whole response: `(status, headers+body)`.
fn finish(mut stream: TcpStream, body: &[u8]) -> (u16, Vec<u8>) {
    stream.write_all(&body[body.len() / 2..]).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let status = std::str::from_utf8(&response[9..12]).unwrap().parse().unwrap();
    (status, response)
}

/// Waits until the metrics say `admitted` requests hold a slot (so a test knows the
/// service has them, whatever the machine's speed).
async fn wait_admitted(service: &Service, admitted: i64) {
    for _ in 0..600 {
        let text = client().get(&service.metrics).send().await.unwrap().text().await.unwrap();
        let value = |name: &str| text.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse::<i64>().unwrap())).unwrap_or(0);
        if value("obscura_in_flight ") + value("obscura_queued ") >= admitted {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the service never admitted {admitted} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_503_with_retry_after_and_the_admitted_still_complete() {
    let service = Service::start(&["--targets", "face", "--max-concurrency", "1", "--queue", "1"]);
    let jpeg = std::fs::read(eval_image(ONE_FACE)).unwrap();
    let held: Vec<TcpStream> = (0..2).map(|_| half_sent(&service, &jpeg, ANONYMISE)).collect();
    wait_admitted(&service, 2).await;
    let response = post(&service, "/v1/anonymise", Some(ANONYMISE), b"refused before it is read".to_vec()).await;
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(error_code(response, 503).await, "busy");
    for stream in held {
        let (status, _) = finish(stream, &jpeg);
        assert_eq!(status, 200, "an admitted request completes");
    }
    // Capacity is back.
    assert_eq!(post(&service, "/v1/anonymise", Some(ANONYMISE), jpeg).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_past_its_deadline_gets_503_and_a_silent_client_is_disconnected() {
    let service = Service::start(&["--targets", "face", "--request-timeout", "1", "--header-timeout", "1"]);
    let jpeg = std::fs::read(eval_image(ONE_FACE)).unwrap();
    // The body never completes: the deadline answers for it.
    let mut stream = half_sent(&service, &jpeg, ANONYMISE);
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("\"timeout\""), "{text}");
    // Headers that never end: the connection is closed, no worker is held.
    let mut slow = TcpStream::connect(service.addr()).unwrap();
    slow.write_all(b"POST /v1/anonymise HTTP/1.1\r\nHost: x\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut rest = Vec::new();
    let closed = slow.read_to_end(&mut rest);
    assert!(closed.is_ok(), "the service closed the connection: {closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_requests_in_flight_finish_then_exits_0() {
    let mut service = Service::start(&["--targets", "face"]);
    let jpeg = std::fs::read(eval_image(ONE_FACE)).unwrap();
    let held = half_sent(&service, &jpeg, ANONYMISE);
    wait_admitted(&service, 1).await;
    service.terminate();
    // Not ready any more, or not listening at all: either way no new work is taken.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, response) = finish(held, &jpeg);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&response[..200.min(response.len())]));
    let exit = service.child.wait().unwrap();
    assert_eq!(exit.code(), Some(0));
    assert!(TcpStream::connect(service.addr()).is_err(), "still listening after exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_requests_regions_stages_and_failures() {
    let service = Service::start(&["--targets", "face"]);
    let jpeg = std::fs::read(eval_image(ONE_FACE)).unwrap();
    assert_eq!(post(&service, "/v1/anonymise", Some(ANONYMISE), jpeg.clone()).await.status(), 200);
    assert_eq!(post(&service, "/v1/anonymise", Some(ANONYMISE), jpeg).await.status(), 200);
    assert_eq!(post(&service, "/v1/anonymise", Some(ANONYMISE), b"nope".to_vec()).await.status(), 415);
    assert_eq!(post(&service, "/v1/anonymise", None, b"nope".to_vec()).await.status(), 401);
    let text = client().get(&service.metrics).send().await.unwrap().text().await.unwrap();
    for line in [
        "obscura_http_requests_total{route=\"/v1/anonymise\",status=\"200\"} 2",
        "obscura_http_requests_total{route=\"/v1/anonymise\",status=\"415\"} 1",
        "obscura_http_requests_total{route=\"/v1/anonymise\",status=\"401\"} 1",
        "obscura_regions_redacted_total{class=\"face\"} 2",
        "obscura_failures_total{reason=\"not_an_image\"} 1",
        "obscura_failures_total{reason=\"unauthorized\"} 1",
        "obscura_stage_duration_seconds_count{stage=\"detect\"} 2",
        "obscura_http_request_duration_seconds_count{route=\"/v1/anonymise\"} 4",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    // The metrics are not on the API's listener.
    assert_eq!(client().get(service.url("/metrics")).send().await.unwrap().status(), 404);
}

#[test]
fn print_config_shows_the_layered_settings_and_a_missing_token_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serve.toml");
    std::fs::write(&config, "[detect]\nthreshold = 0.3\n\n[serve]\nqueue = 7\nmax_body_bytes = 1000\n").unwrap();
    let out = run(obscura().args(["serve", "--print-config", "--config"]).arg(&config).args(["--max-body-bytes", "5000"]).env("OBSCURA_QUEUE", "9"));
    assert!(out.status.success());
    let shown: toml::Table = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert!((shown["detect"]["threshold"].as_float().unwrap() - 0.3).abs() < 1e-6, "from the file: {shown}");
    assert_eq!(shown["serve"]["max_body_bytes"].as_integer(), Some(5000), "the flag over the file");
    assert_eq!(shown["serve"]["queue"].as_integer(), Some(9), "the environment over the file");
    let out = run(obscura().args(["serve", "--listen", "127.0.0.1:0"]).env_remove("OBSCURA_TOKENS_FILE"));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--tokens"), "{}", stderr(&out));
    let weak = dir.path().join("weak");
    std::fs::write(&weak, "anonymise hunter2\n").unwrap();
    let out = run(obscura().args(["serve", "--listen", "127.0.0.1:0", "--tokens"]).arg(&weak));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("at least 32"), "{}", stderr(&out));
}

// ---- retention and erasure over HTTP ----------------------------------------------------

const POLICY: &str = "deadline = \"1h\"\n[classes.photo]\nmax_age = \"365d\"\non_expiry = \"purge\"\non_unsubscribe = \"purge\"\n";

/// A fresh catalog: a SQLite file in `dir`, or a new database on the test PostgreSQL
/// server (`None` outside CI when there is none).
async fn catalog(postgres: bool, dir: &Path) -> Option<String> {
    if !postgres {
        return Some(dir.join("catalog.sqlite").display().to_string());
    }
    postgres_database("obscura_serve").await
}

async fn get_json(service: &Service, path: &str, token: &str) -> (u16, serde_json::Value) {
    let response = client().get(service.url(path)).bearer_auth(token).send().await.unwrap();
    let status = response.status().as_u16();
    (status, serde_json::from_slice(&response.bytes().await.unwrap()).unwrap())
}

async fn unsubscribe_over_http_removes_the_objects_before_answering(postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let Some(catalog) = catalog(postgres, dir.path()).await else { return };
    let store = dir.path().join("store");
    for key in ["dana-77/1.jpg", "dana-77/1.thumb.jpg", "dana-77/2.jpg", "eve/1.jpg"] {
        std::fs::create_dir_all(store.join(key).parent().unwrap()).unwrap();
        std::fs::write(store.join(key), b"photo bytes").unwrap();
    }
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    let (policy, secret) = (dir.path().join("policy.toml").display().to_string(), dir.path().join("secret").display().to_string());
    let store = store.display().to_string();
    let service = Service::start(&["--targets", "face", "--catalog", &catalog, "--policy", &policy, "--secret-file", &secret, "--allow-store", &store]);
    let upload = |id: &str, subject: &str, key: &str, derived: &[&str]| {
        serde_json::json!({ "id": id, "subject": subject, "store": store, "key": key, "class": "photo", "derived": derived }).to_string()
    };
    // Two uploads as JSON lines, one transaction; then a third alone.
    let lines = format!("{}\n{}\n", upload("d1", "dana-77", "dana-77/1.jpg", &["dana-77/1.thumb.jpg"]), upload("d2", "dana-77", "dana-77/2.jpg", &[]));
    let response = post(&service, "/v1/uploads", Some(RETENTION_ONLY), lines.into_bytes()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(post(&service, "/v1/uploads", Some(RETENTION_ONLY), upload("e1", "eve", "eve/1.jpg", &[]).into_bytes()).await.status(), 200);
    let again = post(&service, "/v1/uploads", Some(RETENTION_ONLY), upload("e1", "eve", "eve/1.jpg", &[]).into_bytes()).await;
    assert_eq!(error_code(again, 409).await, "duplicate_upload");
    // An upload in any other place (the whole disk, a path that climbs out of the store)
    // is refused: purging it would delete a file the service can write, not a photo.
    std::fs::write(dir.path().join("victim.txt"), b"not a photo").unwrap();
    for hostile in ["/", "relative", &format!("{store}/../")] {
        let body = serde_json::json!({ "id": "x1", "subject": "mallory", "store": hostile, "key": "victim.txt", "class": "photo" }).to_string();
        assert_eq!(error_code(post(&service, "/v1/uploads", Some(RETENTION_ONLY), body.into_bytes()).await, 403).await, "store_not_allowed", "{hostile}");
    }
    assert!(dir.path().join("victim.txt").exists());
    // The anonymise scope does not reach retention; the audit needs admin.
    assert_eq!(error_code(post(&service, "/v1/subjects/dana-77/unsubscribe", Some(ANONYMISE), Vec::new()).await, 403).await, "forbidden");
    assert_eq!(error_code(client().get(service.url("/v1/audit/verify")).bearer_auth(RETENTION_ONLY).send().await.unwrap(), 403).await, "forbidden");

    // Access request: one person's uploads and the manifest, as a tar.
    let response = client().get(service.url("/v1/subjects/dana-77/export")).bearer_auth(RETENTION_ONLY).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-tar");
    let archive = dir.path().join("export.tar");
    std::fs::write(&archive, response.bytes().await.unwrap()).unwrap();
    let unpacked = dir.path().join("export");
    std::fs::create_dir(&unpacked).unwrap();
    assert!(std::process::Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&unpacked).status().unwrap().success());
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(unpacked.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["subject"], "dana-77");
    let files: Vec<&str> = manifest["uploads"].as_array().unwrap().iter().map(|u| u["file"].as_str().unwrap()).collect();
    assert_eq!(files.len(), 2, "dana's two uploads, not eve's: {manifest}");
    for file in files {
        assert_eq!(std::fs::read(unpacked.join(file)).unwrap(), b"photo bytes");
    }

    let response = post(&service, "/v1/subjects/dana-77/unsubscribe", Some(RETENTION_ONLY), Vec::new()).await;
    assert_eq!(response.status(), 200);
    let summary: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!((summary["queued"].as_u64(), summary["done"].as_u64(), summary["pending"].as_u64()), (Some(2), Some(2), Some(0)), "{summary}");
    // Gone when the answer arrives: the originals, the thumbnail and the emptied folder.
    let store = Path::new(&store);
    for key in ["dana-77/1.jpg", "dana-77/1.thumb.jpg", "dana-77/2.jpg", "dana-77"] {
        assert!(!store.join(key).exists(), "{key} survived the unsubscribe");
    }
    assert!(store.join("eve/1.jpg").exists(), "another person's photo is untouched");
    // One upload erased by id; an unknown one is a 404.
    let response = client().delete(service.url("/v1/uploads/e1")).bearer_auth(RETENTION_ONLY).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(!store.join("eve/1.jpg").exists());
    let response = client().delete(service.url("/v1/uploads/nope")).bearer_auth(RETENTION_ONLY).send().await.unwrap();
    assert_eq!(error_code(response, 404).await, "unknown_upload");
    // Forgotten: nothing to export any more.
    let response = client().get(service.url("/v1/subjects/dana-77/export")).bearer_auth(RETENTION_ONLY).send().await.unwrap();
    assert_eq!(error_code(response, 404).await, "unknown_subject");
    let (status, report) = get_json(&service, "/v1/retention/status", RETENTION_ONLY).await;
    assert_eq!(status, 200);
    assert_eq!(report["uploads_active"], 0, "{report}");
    assert_eq!(report["overdue"], 0, "{report}");
    let (status, plan) = get_json(&service, "/v1/retention/plan?horizon=400d&limit=5", RETENTION_ONLY).await;
    assert_eq!((status, plan["purge"].as_u64()), (200, Some(0)), "{plan}");
    let (status, verdict) = get_json(&service, "/v1/audit/verify", ADMIN).await;
    assert_eq!(status, 200);
    assert_eq!(verdict["intact"], true, "{verdict}");
    assert!(verdict["records"].as_i64().unwrap() >= 5, "{verdict}");
    // Ready means the catalog answers too.
    assert_eq!(client().get(service.url("/readyz")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsubscribe_over_http_on_sqlite_removes_the_objects_before_answering() {
    unsubscribe_over_http_removes_the_objects_before_answering(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsubscribe_over_http_on_postgresql_removes_the_objects_before_answering() {
    unsubscribe_over_http_removes_the_objects_before_answering(true).await;
}

/// Issue 25, case 1, over HTTP: an upload registered under a class that the policy later
/// dropped. Before the fix the erase answered 200 having queued nothing, and the export
/// still returned the photo.
async fn erasure_over_http_reaches_a_class_the_policy_no_longer_names(postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let Some(catalog) = catalog(postgres, dir.path()).await else { return };
    let store = dir.path().join("store");
    std::fs::create_dir_all(store.join("lea")).unwrap();
    std::fs::write(store.join("lea/1.jpg"), b"photo bytes").unwrap();
    let (old, new) = (dir.path().join("old.toml"), dir.path().join("new.toml"));
    std::fs::write(&old, format!("{POLICY}[classes.legacy]\non_expiry = \"purge\"\non_unsubscribe = \"purge\"\n")).unwrap();
    std::fs::write(&new, POLICY).unwrap();
    let secret = dir.path().join("secret").display().to_string();
    let registered = obscura()
        .args(["retention", "--catalog", &catalog, "--secret-file", &secret, "--policy"])
        .arg(&old)
        .args(["register", "--id", "l1", "--subject", "lea", "--key", "lea/1.jpg", "--class", "legacy", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(registered.status.success(), "{}", String::from_utf8_lossy(&registered.stderr));
    let (new, store) = (new.display().to_string(), store.display().to_string());
    let service = Service::start(&["--targets", "face", "--catalog", &catalog, "--policy", &new, "--secret-file", &secret, "--allow-store", &store]);
    let (_, report) = get_json(&service, "/v1/retention/status", RETENTION_ONLY).await;
    assert_eq!(report["unaccounted"], serde_json::json!([{ "class": "legacy", "uploads": 1 }]), "{report}");
    let response = post(&service, "/v1/subjects/lea/erase", Some(RETENTION_ONLY), Vec::new()).await;
    assert_eq!(response.status(), 200);
    let summary: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!((summary["queued"].as_u64(), summary["done"].as_u64()), (Some(1), Some(1)), "{summary}");
    assert!(!Path::new(&store).join("lea/1.jpg").exists(), "the erasure left the photo");
    let response = client().get(service.url("/v1/subjects/lea/export")).bearer_auth(RETENTION_ONLY).send().await.unwrap();
    assert_eq!(error_code(response, 404).await, "unknown_subject");
    let (_, report) = get_json(&service, "/v1/retention/status", RETENTION_ONLY).await;
    assert_eq!(report["unaccounted"], serde_json::json!([]), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn erasure_over_http_on_sqlite_reaches_a_class_the_policy_no_longer_names() {
    erasure_over_http_reaches_a_class_the_policy_no_longer_names(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn erasure_over_http_on_postgresql_reaches_a_class_the_policy_no_longer_names() {
    erasure_over_http_reaches_a_class_the_policy_no_longer_names(true).await;
}

/// Subject ids over HTTP are compared trimmed and in NFC, as everywhere: "José" registered
/// in NFC is erased by a request naming it in NFD (percent-encoded in the path).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subject_id_over_http_is_one_person_however_it_is_spelled() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(store.join("j")).unwrap();
    std::fs::write(store.join("j/1.jpg"), b"photo bytes").unwrap();
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    let catalog = dir.path().join("catalog.sqlite").display().to_string();
    let (policy, secret) = (dir.path().join("policy.toml").display().to_string(), dir.path().join("audit.key").display().to_string());
    let store = store.display().to_string();
    let service = Service::start(&["--targets", "face", "--catalog", &catalog, "--policy", &policy, "--secret-file", &secret, "--allow-store", &store]);
    let body = serde_json::json!({ "id": "j1", "subject": "Jos\u{e9}", "store": store, "key": "j/1.jpg", "class": "photo" }).to_string();
    assert_eq!(post(&service, "/v1/uploads", Some(RETENTION_ONLY), body.into_bytes()).await.status(), 200);
    let response = post(&service, "/v1/subjects/Jose%CC%81%20/erase", Some(RETENTION_ONLY), Vec::new()).await;
    assert_eq!(response.status(), 200);
    let summary: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!((summary["queued"].as_u64(), summary["done"].as_u64()), (Some(1), Some(1)), "{summary}");
    assert!(!Path::new(&store).join("j/1.jpg").exists());
    let again = serde_json::json!({ "id": "j2", "subject": "Jose\u{301}", "store": store, "key": "j/2.jpg", "class": "photo" }).to_string();
    assert_eq!(error_code(post(&service, "/v1/uploads", Some(RETENTION_ONLY), again.into_bytes()).await, 409).await, "subject_erased");
}

/// `uploaded_at` over HTTP: RFC 3339 is taken as the CLI takes it (it was refused), and a
/// time that would never expire (year 2099, i64::MAX) is refused as invalid.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_times_over_http_take_rfc3339_and_refuse_the_far_future() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let catalog = dir.path().join("catalog.sqlite").display().to_string();
    let (policy, secret) = (dir.path().join("policy.toml").display().to_string(), dir.path().join("audit.key").display().to_string());
    let store = store.display().to_string();
    let service = Service::start(&["--targets", "face", "--catalog", &catalog, "--policy", &policy, "--secret-file", &secret, "--allow-store", &store]);
    let body = |id: &str, at: serde_json::Value| serde_json::json!({ "id": id, "subject": "uma", "store": store, "key": format!("u/{id}.jpg"), "class": "photo", "uploaded_at": at }).to_string().into_bytes();
    assert_eq!(post(&service, "/v1/uploads", Some(RETENTION_ONLY), body("u1", serde_json::json!("2024-01-31T12:00:00Z"))).await.status(), 200);
    let (_, plan) = get_json(&service, "/v1/retention/plan?horizon=1d&limit=5", RETENTION_ONLY).await;
    assert_eq!(plan["purge"], 1, "an upload of January 2024 with a max_age of 365 days is due: {plan}");
    for (id, at) in [("u2", serde_json::json!("2099-01-01T00:00:00Z")), ("u3", serde_json::json!(i64::MAX)), ("u4", serde_json::json!("yesterday")), ("u5", serde_json::json!("1969-07-20T20:17:00Z"))] {
        let response = post(&service, "/v1/uploads", Some(RETENTION_ONLY), body(id, at.clone())).await;
        assert_eq!(error_code(response, 400).await, "invalid_upload", "{at}");
    }
}

/// Data residency over HTTP: with the class limited to the "eu" store, registering an
/// upload in the "us" store (or in a path that climbs out of the eu one) is refused as
/// `residency` (422) and nothing is catalogued; and an upload registered before the policy
/// said so is flagged by `/v1/retention/status` once it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn residency_over_http_refuses_an_upload_outside_its_location_and_status_flags_a_misplaced_one() {
    let dir = tempfile::tempdir().unwrap();
    let (eu, us) = (dir.path().join("eu"), dir.path().join("us"));
    for d in [&eu, &us] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("1.jpg"), b"photo bytes").unwrap();
    }
    let (eu, us) = (eu.display().to_string(), us.display().to_string());
    let open = POLICY.to_string() + &format!("\n[stores]\n{eu:?} = \"eu\"\n{us:?} = \"us\"\n");
    let limited = open.replace("[classes.photo]\n", "[classes.photo]\nlocations = [\"eu\"]\n");
    assert_ne!(open, limited);
    let catalog = dir.path().join("catalog.sqlite").display().to_string();
    let secret = dir.path().join("audit.key").display().to_string();
    let body = |id: &str, store: &str| serde_json::json!({ "id": id, "subject": "vera", "store": store, "key": "1.jpg", "class": "photo" }).to_string().into_bytes();
    // Registered while the policy set no limit.
    std::fs::write(dir.path().join("open.toml"), &open).unwrap();
    {
        let policy = dir.path().join("open.toml").display().to_string();
        let service = Service::start(&["--targets", "face", "--catalog", &catalog, "--policy", &policy, "--secret-file", &secret, "--allow-store", &eu, "--allow-store", &us]);
        assert_eq!(post(&service, "/v1/uploads", Some(RETENTION_ONLY), body("v0", &us)).await.status(), 200);
        let (_, status) = get_json(&service, "/v1/retention/status", RETENTION_ONLY).await;
        assert_eq!(status["misplaced"], serde_json::json!([]), "{status}");
    }
    std::fs::write(dir.path().join("limited.toml"), &limited).unwrap();
    let policy = dir.path().join("limited.toml").display().to_string();
    let service = Service::start(&["--targets", "face", "--catalog", &catalog, "--policy", &policy, "--secret-file", &secret, "--allow-store", &eu, "--allow-store", &us]);
    assert_eq!(post(&service, "/v1/uploads", Some(RETENTION_ONLY), body("v1", &eu)).await.status(), 200);
    let climbing = format!("{eu}/../us");
    for (id, store) in [("v2", us.as_str()), ("v3", climbing.as_str())] {
        let response = post(&service, "/v1/uploads", Some(RETENTION_ONLY), body(id, store)).await;
        assert!(matches!(response.status().as_u16(), 403 | 422), "{store}: {}", response.status());
        if response.status() == 422 {
            assert_eq!(error_code(response, 422).await, "residency", "{store}");
        }
    }
    let (_, status) = get_json(&service, "/v1/retention/status", RETENTION_ONLY).await;
    assert_eq!(status["uploads_active"], 2, "v0 and v1 only: {status}");
    let misplaced = status["misplaced"].as_array().unwrap();
    assert_eq!(misplaced.len(), 1, "{status}");
    assert_eq!((misplaced[0]["class"].as_str(), misplaced[0]["store"].as_str(), misplaced[0]["uploads"].as_u64()), (Some("photo"), Some(us.as_str()), Some(1)));
    assert!(misplaced[0]["reason"].as_str().unwrap().contains("\"us\""), "{status}");
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Issue 25, case 5: a 1.2 GB export peaked at 2.5 GB of memory (made whole in memory,
/// then copied into the archive). Streamed, an export of 300 MB raises the service's peak
/// memory by far less than its size, and the archive is complete and exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_export_over_http_is_streamed_not_held_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(store.join("tia")).unwrap();
    let (n, size) = (12usize, 25usize << 20);
    for i in 0..n {
        std::fs::write(store.join(format!("tia/{i}.jpg")), vec![i as u8; size]).unwrap();
    }
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    let catalog = dir.path().join("catalog.sqlite").display().to_string();
    let (policy, secret) = (dir.path().join("policy.toml").display().to_string(), dir.path().join("audit.key").display().to_string());
    let store = store.display().to_string();
    let service = Service::start(&["--targets", "face", "--catalog", &catalog, "--policy", &policy, "--secret-file", &secret, "--allow-store", &store]);
    for i in 0..n {
        let body = serde_json::json!({ "id": format!("t{i}"), "subject": "tia", "store": store, "key": format!("tia/{i}.jpg"), "class": "photo" }).to_string();
        assert_eq!(post(&service, "/v1/uploads", Some(RETENTION_ONLY), body.into_bytes()).await.status(), 200);
    }
    let before = peak_memory(service.child.id());
    let mut response = client().get(service.url("/v1/subjects/tia/export")).bearer_auth(RETENTION_ONLY).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let archive = dir.path().join("export.tar");
    let mut file = std::fs::File::create(&archive).unwrap();
    while let Some(chunk) = response.chunk().await.unwrap() {
        file.write_all(&chunk).unwrap();
    }
    drop(file);
    let grown = peak_memory(service.child.id()).saturating_sub(before);
    let total = (n * size) as u64;
    // Made in memory it was twice the export; streamed it is a few photos at most.
    assert!(grown < 4 * size as u64, "the service's peak memory grew by {} MB for a {} MB export", grown >> 20, total >> 20);
    let unpacked = dir.path().join("export");
    std::fs::create_dir(&unpacked).unwrap();
    assert!(std::process::Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&unpacked).status().unwrap().success());
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(unpacked.join("manifest.json")).unwrap()).unwrap();
    let uploads = manifest["uploads"].as_array().unwrap();
    assert_eq!(uploads.len(), n);
    for u in uploads {
        let i: u8 = u["id"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(std::fs::read(unpacked.join(u["file"].as_str().unwrap())).unwrap(), vec![i; size]);
    }
    eprintln!("peak memory grew by {} MB for a {} MB export", grown >> 20, total >> 20);
}

/// Issue 25, case 3, over HTTP: the export followed a key that was a link and returned the
/// deployment's secret file byte for byte. Now it is refused and nothing of it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_export_over_http_never_follows_a_symbolic_link() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(store.join("sam")).unwrap();
    std::fs::write(dir.path().join("secret"), b"").unwrap();
    std::os::unix::fs::symlink(dir.path().join("tokens-and-secrets"), store.join("sam/1.jpg")).unwrap();
    std::fs::write(dir.path().join("tokens-and-secrets"), b"THE DEPLOYMENT SECRET").unwrap();
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    let catalog = dir.path().join("catalog.sqlite").display().to_string();
    let (policy, secret) = (dir.path().join("policy.toml").display().to_string(), dir.path().join("audit.key").display().to_string());
    let store = store.display().to_string();
    let service = Service::start(&["--targets", "face", "--catalog", &catalog, "--policy", &policy, "--secret-file", &secret, "--allow-store", &store]);
    let body = serde_json::json!({ "id": "s1", "subject": "sam", "store": store, "key": "sam/1.jpg", "class": "photo" }).to_string();
    assert_eq!(post(&service, "/v1/uploads", Some(RETENTION_ONLY), body.into_bytes()).await.status(), 200);
    let response = client().get(service.url("/v1/subjects/sam/export")).bearer_auth(RETENTION_ONLY).send().await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap_or_default();
    assert!(!bytes.windows(21).any(|w| w == b"THE DEPLOYMENT SECRET"), "the export sent the secret");
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&bytes));
    let error: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(error["error"]["code"], "symbolic_link", "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_catalog_the_retention_routes_do_not_exist() {
    let service = Service::start(&["--targets", "face"]);
    let response = post(&service, "/v1/subjects/x/unsubscribe", Some(ADMIN), Vec::new()).await;
    assert_eq!(error_code(response, 404).await, "not_found");
}

/// Polls `/readyz` until it answers `status`, for at most `secs`; returns the last body.
async fn readyz_until(service: &Service, status: u16, secs: u64) -> String {
    let mut last = String::new();
    for _ in 0..secs * 10 {
        let response = client().get(service.url("/readyz")).send().await.unwrap();
        let got = response.status().as_u16();
        last = response.text().await.unwrap();
        if got == status {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/readyz never answered {status}: {last}");
}

/// The review's case: `serve --scheduler` on a SQLite catalog whose scheduler lock another
/// process holds logged an error, kept answering 200 on /readyz and never tried again, so
/// nothing expired once the other process stopped. Now /readyz says 503 with the reason
/// while it waits in standby, and the service takes over when the lock is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_scheduler_in_standby_says_so_and_takes_over_when_the_lock_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(store.join("old")).unwrap();
    std::fs::write(store.join("old/1.jpg"), b"photo bytes").unwrap();
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    let catalog = dir.path().join("catalog.sqlite").display().to_string();
    let (policy, secret) = (dir.path().join("policy.toml").display().to_string(), dir.path().join("secret").display().to_string());
    // Another scheduler (the CLI's) holds the lock.
    let mut other = obscura()
        .args(["retention", "--catalog", &catalog, "--policy", &policy, "--secret-file", &secret, "run", "--interval", "1h"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = format!("{catalog}.scheduler-lock");
    for _ in 0..300 {
        if Path::new(&lock).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let allowed = store.display().to_string();
    let service = Service::start(&["--targets", "face", "--catalog", &catalog, "--policy", &policy, "--secret-file", &secret, "--scheduler", "--allow-store", &allowed]);
    let body = readyz_until(&service, 503, 60).await;
    assert!(body.contains("scheduler_not_running") && body.contains("standby: another scheduler holds"), "{body}");
    // The expired upload waits while the other scheduler sleeps for an hour.
    let two_years_ago = obscura::retention::now_ms() - 2 * 365 * 86_400_000;
    let upload = serde_json::json!({ "id": "o1", "subject": "olga", "store": allowed, "key": "old/1.jpg", "class": "photo", "uploaded_at": two_years_ago });
    assert_eq!(post(&service, "/v1/uploads", Some(RETENTION_ONLY), upload.to_string().into_bytes()).await.status(), 200);
    // The other scheduler stops: the service's takes over within its retry interval.
    other.kill().unwrap();
    other.wait().unwrap();
    readyz_until(&service, 200, 60).await;
    for _ in 0..600 {
        if !store.join("old/1.jpg").exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the service's scheduler never took over");
}

/// `--scheduler` runs the retention scheduler in the service: an expired upload is purged
/// without any request, and SIGTERM stops both (exit 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_scheduler_runs_in_the_service_and_stops_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(store.join("old")).unwrap();
    std::fs::write(store.join("old/1.jpg"), b"photo bytes").unwrap();
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    let catalog = dir.path().join("catalog.sqlite").display().to_string();
    let (policy, secret) = (dir.path().join("policy.toml").display().to_string(), dir.path().join("secret").display().to_string());
    let allowed = store.display().to_string();
    let mut service = Service::start(&["--targets", "face", "--catalog", &catalog, "--policy", &policy, "--secret-file", &secret, "--scheduler", "--allow-store", &allowed]);
    let two_years_ago = obscura::retention::now_ms() - 2 * 365 * 86_400_000;
    let upload = serde_json::json!({ "id": "o1", "subject": "olga", "store": store.display().to_string(), "key": "old/1.jpg", "class": "photo", "uploaded_at": two_years_ago });
    assert_eq!(post(&service, "/v1/uploads", Some(RETENTION_ONLY), upload.to_string().into_bytes()).await.status(), 200);
    let mut purged = false;
    for _ in 0..600 {
        if !store.join("old/1.jpg").exists() {
            purged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(purged, "the in-process scheduler never purged the expired upload");
    let (_, status) = get_json(&service, "/v1/retention/status", RETENTION_ONLY).await;
    assert_eq!(status["uploads_active"], 0, "{status}");
    service.terminate();
    assert_eq!(service.child.wait().unwrap().code(), Some(0));
}

/// `/openapi.json` describes every route the service answers, and only those.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_openapi_document_lists_every_route() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    let (catalog, policy, secret) = (dir.path().join("c.sqlite"), dir.path().join("policy.toml"), dir.path().join("secret"));
    let args = ["--targets", "face", "--catalog", catalog.to_str().unwrap(), "--policy", policy.to_str().unwrap(), "--secret-file", secret.to_str().unwrap()];
    let service = Service::start(&args);
    let response = client().get(service.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let doc: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            let url = service.url(&path.replace("{id}", "doc-check"));
            let request = client().request(method.to_uppercase().parse().unwrap(), url).bearer_auth(ADMIN).body(Vec::new());
            let status = request.send().await.unwrap().status().as_u16();
            assert!(status != 404 || path.contains("{id}"), "{method} {path} is documented but not served");
            assert_ne!(status, 405, "{method} {path}: the method is not served");
        }
    }
    for route in ["/v1/anonymise", "/v1/detect", "/v1/uploads", "/v1/subjects/{id}/unsubscribe", "/v1/subjects/{id}/erase", "/v1/subjects/{id}/export", "/v1/uploads/{id}", "/v1/retention/status", "/v1/retention/plan", "/v1/audit/verify", "/healthz", "/readyz"] {
        assert!(paths.contains_key(route), "{route} is served but not documented");
    }
}

/// A browser's form upload: `multipart/form-data` with one file part; two files are
/// refused rather than one silently left out, and other fields rather than ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_form_upload_with_one_file_is_anonymised() {
    let service = Service::start(&["--targets", "face"]);
    let jpeg = std::fs::read(eval_image(ONE_FACE)).unwrap();
    let form = |files: usize, field: Option<&str>| {
        let mut body = match field {
            Some(name) => format!("--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\nfill\r\n").into_bytes(),
            None => Vec::new(),
        };
        for i in 0..files {
            body.extend(format!("--XyZ\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"p{i}.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").as_bytes());
            body.extend(&jpeg);
            body.extend(b"\r\n");
        }
        body.extend(b"--XyZ--\r\n");
        body
    };
    let send = |body: Vec<u8>| client().post(service.url("/v1/anonymise")).bearer_auth(ANONYMISE).header("content-type", "multipart/form-data; boundary=XyZ").body(body).send();
    let response = send(form(1, None)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/jpeg");
    let out = decoded(&response.bytes().await.unwrap());
    assert!(mean_abs_diff(&load_rgb(&eval_image(ONE_FACE)), &out, ONE_FACE_BOX) > 15.0, "the face is not redacted");
    assert_eq!(error_code(send(form(2, None)).await.unwrap(), 400).await, "invalid_multipart");
    assert_eq!(error_code(send(form(0, None)).await.unwrap(), 400).await, "invalid_multipart");
    // An option sent as a form field would be ignored: it is refused instead.
    assert_eq!(error_code(send(form(1, Some("style"))).await.unwrap(), 400).await, "invalid_multipart");
}

/// A request past its deadline is answered at once, but the image it started keeps its
/// admission slot until it is done: timed-out work cannot pile up behind the queue, and
/// the metrics show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timed_out_work_keeps_its_slot_until_it_ends() {
    let service = Service::start(&["--targets", "face", "--max-concurrency", "1", "--queue", "1", "--request-timeout", "0.2"]);
    let big = image::imageops::resize(&load_rgb(&eval_image(ONE_FACE)), 4096, 2828, image::imageops::FilterType::Triangle);
    let body = encoded(&big, image::ImageFormat::Jpeg);
    let response = post(&service, "/v1/anonymise", Some(ANONYMISE), body).await;
    assert_eq!(error_code(response, 503).await, "timeout");
    let in_flight = |text: &str| text.lines().find_map(|l| l.strip_prefix("obscura_in_flight ")).map(|v| v.trim().parse::<i64>().unwrap()).unwrap();
    let text = client().get(&service.metrics).send().await.unwrap().text().await.unwrap();
    assert_eq!(in_flight(&text), 1, "the timed-out image still holds its slot:\n{text}");
    for _ in 0..1200 {
        let text = client().get(&service.metrics).send().await.unwrap().text().await.unwrap();
        if in_flight(&text) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the slot was never given back");
}
