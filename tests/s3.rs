//! Stores and batches against a real S3-protocol server: moto in server mode, started
//! on loopback by these tests (`scripts/setup --test-fixtures` installs it). Without it
//! the tests print why and pass, except in CI, where they fail.

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use obscura::store::{Store, StoreOptions};

struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn moto() -> Option<Moto> {
    let bin = root().join(".cache/test-fixtures/moto/bin/moto_server");
    if !bin.is_file() {
        assert!(!in_ci(), "CI must run `scripts/setup --test-fixtures` (moto S3 server missing)");
        eprintln!("skipped: {} missing (run scripts/setup --test-fixtures)", bin.display());
        return None;
    }
    let port = free_port();
    let child = Command::new(&bin).args(["-H", "127.0.0.1", "-p", &port.to_string()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let server = Moto { child, endpoint: format!("http://127.0.0.1:{port}") };
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(server)
}

/// `CreateBucket` (moto does not check signatures). A moto that has just opened its
/// port may still drop the first connections while it starts (seen with several servers
/// starting at once on 2 cores): those are retried for up to 30 s.
fn create_bucket(endpoint: &str, bucket: &str) {
    let status = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let started = Instant::now();
        loop {
            match reqwest::Client::new().put(format!("{endpoint}/{bucket}")).send().await {
                Ok(response) => return response.status(),
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    eprintln!("create bucket {bucket}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("create bucket {bucket}: {e}"),
            }
        }
    });
    assert!(status.is_success(), "create bucket {bucket}: {status}");
}

fn s3_env<'a>(cmd: &'a mut Command, endpoint: &str) -> &'a mut Command {
    cmd.env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ALLOW_HTTP", "true")
}

fn options(endpoint: &str) -> StoreOptions {
    let s3 = [("endpoint", endpoint), ("access_key_id", "test"), ("secret_access_key", "test"), ("region", "us-east-1"), ("allow_http", "true")];
    StoreOptions { s3: s3.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..StoreOptions::default() }
}

fn list_keys(store: &Store) -> BTreeSet<String> {
    tokio::runtime::Runtime::new().unwrap().block_on(async { store.list().map(|e| e.unwrap().key).collect().await })
}

fn small_photo() -> Vec<u8> {
    let img = image::open(eval_image(ONE_FACE)).unwrap().resize(320, 320, image::imageops::FilterType::Triangle);
    let mut out = std::io::Cursor::new(Vec::new());
    img.to_rgb8().write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

#[test]
fn lists_past_one_page_reads_writes_and_deletes() {
    let Some(server) = moto() else { return };
    create_bucket(&server.endpoint, "listing");
    let store = Store::open("s3://listing/many/", &options(&server.endpoint)).unwrap();
    let keys: BTreeSet<String> = (0..1100).map(|i| format!("k{}/obj{i:05}", i % 3)).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        futures::stream::iter(keys.iter())
            .map(|k| store.put(k, k.as_bytes().to_vec()))
            .buffer_unordered(32)
            .for_each(|r| async {
                r.unwrap();
            })
            .await;
    });
    // S3 lists at most 1,000 keys per request: 1,100 keys take two pages.
    assert_eq!(list_keys(&store), keys);
    rt.block_on(async {
        assert_eq!(store.get("k1/obj00001").await.unwrap().as_ref(), b"k1/obj00001");
        store.delete("k1/obj00001").await.unwrap();
        store.delete("k1/obj00001").await.unwrap(); // already gone: fine
        assert!(store.get("k1/obj00001").await.is_err());
        assert!(store.put("../escape", vec![1]).await.is_err(), "keys cannot climb out of the prefix");
        // In-place writes are conditional: an object re-uploaded since it was read is kept.
        let (old, version) = store.get_versioned("k2/obj00002").await.unwrap();
        assert!(version.is_some(), "S3 reports an ETag");
        store.put("k2/obj00002", b"a newer upload".to_vec()).await.unwrap();
        let err = store.replace("k2/obj00002", b"anonymised old".to_vec(), version.as_deref()).await.unwrap_err();
        assert!(matches!(err, obscura::store::StoreError::Changed { .. }), "{err}");
        assert_eq!(store.get("k2/obj00002").await.unwrap().as_ref(), b"a newer upload");
        let (_, version) = store.get_versioned("k2/obj00002").await.unwrap();
        store.replace("k2/obj00002", old.to_vec(), version.as_deref()).await.unwrap();
        assert_eq!(store.get("k2/obj00002").await.unwrap(), old);
    });
    assert_eq!(list_keys(&store).len(), 1099);
}

#[test]
fn batch_from_bucket_to_bucket_and_in_place() {
    let Some(server) = moto() else { return };
    create_bucket(&server.endpoint, "uploads");
    create_bucket(&server.endpoint, "anonymised");
    let src = Store::open("s3://uploads/in", &options(&server.endpoint)).unwrap();
    let photo = small_photo();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for k in ["a.jpg", "x/b.jpg", "x/y/c"] {
            src.put(k, photo.clone()).await.unwrap();
        }
        src.put("readme.txt", b"text".to_vec()).await.unwrap();
    });
    let tmp = tempfile::tempdir().unwrap();
    let out = run(s3_env(&mut obscura(), &server.endpoint)
        .args(["batch", "s3://uploads/in", "s3://anonymised/out", "--seed", "1", "--journal"])
        .arg(tmp.path().join("j.sqlite")));
    assert!(out.status.success());
    assert!(stderr(&out).contains("3 anonymised, 0 failed, 1 skipped"), "{}", stderr(&out));
    let dst = Store::open("s3://anonymised/out", &options(&server.endpoint)).unwrap();
    assert_eq!(list_keys(&dst), ["a.jpg", "x/b.jpg", "x/y/c"].map(String::from).into_iter().collect());
    let original = image::load_from_memory(&photo).unwrap().to_rgb8();
    let face = obscura::geometry::PixelRect { x: 41, y: 44, w: 30, h: 50 };
    for k in ["a.jpg", "x/y/c"] {
        let bytes = rt.block_on(dst.get(k)).unwrap();
        let anonymised = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert!(mean_abs_diff(&original, &anonymised, face) > 8.0, "{k} redacted");
    }

    // A destination object store needs an explicit journal.
    let out = run(s3_env(&mut obscura(), &server.endpoint).args(["batch", "s3://uploads/in", "s3://anonymised/again"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--journal"));

    // In place: each original replaced by its anonymised version.
    let out = run(s3_env(&mut obscura(), &server.endpoint)
        .args(["batch", "s3://uploads/in", "s3://uploads/in", "--in-place", "--journal"])
        .arg(tmp.path().join("j2.sqlite")));
    assert!(out.status.success());
    let replaced = rt.block_on(src.get("a.jpg")).unwrap();
    assert_ne!(replaced.as_ref(), photo.as_slice());
    let anonymised = image::load_from_memory(&replaced).unwrap().to_rgb8();
    assert!(mean_abs_diff(&original, &anonymised, face) > 8.0);
    assert_eq!(rt.block_on(src.get("readme.txt")).unwrap().as_ref(), b"text", "non-images untouched");

    // The same job again: every object is the version it wrote, so nothing is redone.
    let again = |journal: &str| {
        run(s3_env(&mut obscura(), &server.endpoint)
            .args(["batch", "s3://uploads/in", "s3://uploads/in", "--in-place", "--seed", "1", "--journal"])
            .arg(tmp.path().join(journal)))
    };
    let out = again("j2.sqlite");
    assert!(out.status.success());
    assert!(stderr(&out).contains("0 anonymised, 0 failed, 0 skipped"), "{}", stderr(&out));
    // The person uploads a raw photo again under a key that was cleaned: the next run
    // anonymises it (the journal was keyed by name alone: "already done", face left raw).
    rt.block_on(src.put("a.jpg", photo.clone())).unwrap();
    let out = again("j2.sqlite");
    assert!(out.status.success());
    assert!(stderr(&out).contains("1 anonymised, 0 failed, 0 skipped"), "{}", stderr(&out));
    let replaced = rt.block_on(src.get("a.jpg")).unwrap();
    let anonymised = image::load_from_memory(&replaced).unwrap().to_rgb8();
    assert!(mean_abs_diff(&original, &anonymised, face) > 8.0, "the re-uploaded photo was anonymised");
}

/// A proxy in front of moto that answers 503 to PUTs of keys containing "flaky" twice
/// and to "always-fail" every time, counting attempts.
async fn faulty_proxy(upstream: String, attempts: Arc<AtomicUsize>) -> String {
    use axum::body::Body;
    use axum::extract::Request;
    use axum::http::StatusCode;
    use axum::response::Response;
    let flaky_seen = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |req: Request| {
        let (client, upstream, attempts, flaky_seen) = (client.clone(), upstream.clone(), attempts.clone(), flaky_seen.clone());
        async move {
            let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
            let method = req.method().clone();
            if method == axum::http::Method::PUT && (path.contains("always-fail") || path.contains("flaky")) {
                attempts.fetch_add(1, Ordering::SeqCst);
                if path.contains("always-fail") || flaky_seen.fetch_add(1, Ordering::SeqCst) < 2 {
                    return Response::builder().status(StatusCode::SERVICE_UNAVAILABLE).body(Body::from("SlowDown")).unwrap();
                }
            }
            let headers = req.headers().clone();
            let body = axum::body::to_bytes(req.into_body(), usize::MAX).await.unwrap();
            let mut upstream_req = client.request(method, format!("{upstream}{path}")).body(body);
            for (name, value) in headers.iter() {
                if name != "host" && name != "content-length" {
                    upstream_req = upstream_req.header(name, value);
                }
            }
            let res = upstream_req.send().await.unwrap();
            let mut out = Response::builder().status(res.status().as_u16());
            for (name, value) in res.headers().iter() {
                if name != "content-length" && name != "transfer-encoding" {
                    out = out.header(name.as_str(), value.as_bytes());
                }
            }
            out.body(Body::from(res.bytes().await.unwrap())).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[test]
fn failing_writes_are_retried_then_recorded_and_nothing_is_half_written() {
    let Some(server) = moto() else { return };
    create_bucket(&server.endpoint, "faulty-src");
    create_bucket(&server.endpoint, "faulty-dst");
    let src = Store::open("s3://faulty-src", &options(&server.endpoint)).unwrap();
    let photo = small_photo();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for k in ["ok.jpg", "flaky.jpg", "always-fail.jpg"] {
        rt.block_on(src.put(k, photo.clone())).unwrap();
    }
    let attempts = Arc::new(AtomicUsize::new(0));
    let proxy = rt.block_on(faulty_proxy(server.endpoint.clone(), attempts.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let out = run(s3_env(&mut obscura(), &proxy)
        .args(["batch", "s3://faulty-src", "s3://faulty-dst", "--retries", "3", "--journal"])
        .arg(tmp.path().join("j.sqlite")));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("error: always-fail.jpg:") && err.contains("2 anonymised, 1 failed"), "{err}");
    // flaky: 2 refused + 1 accepted; always-fail: 1 + 3 retries.
    assert_eq!(attempts.load(Ordering::SeqCst), 3 + 4);
    let dst = Store::open("s3://faulty-dst", &options(&server.endpoint)).unwrap();
    assert_eq!(list_keys(&dst), ["flaky.jpg", "ok.jpg"].map(String::from).into_iter().collect(), "nothing for the failed object");
}

/// Turns on versioning (moto does not check signatures).
fn enable_versioning(endpoint: &str, bucket: &str) {
    let body = r#"<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Status>Enabled</Status></VersioningConfiguration>"#;
    let status = tokio::runtime::Runtime::new().unwrap().block_on(async {
        reqwest::Client::new().put(format!("{endpoint}/{bucket}?versioning")).body(body).send().await.unwrap().status()
    });
    assert!(status.is_success(), "enable versioning on {bucket}: {status}");
}

/// Versions and delete markers stored under exactly `key`.
fn stored_versions(endpoint: &str, bucket: &str, key: &str) -> usize {
    let xml = tokio::runtime::Runtime::new().unwrap().block_on(async {
        reqwest::Client::new().get(format!("{endpoint}/{bucket}?versions&prefix={key}")).send().await.unwrap().text().await.unwrap()
    });
    xml.split("<Key>").skip(1).filter(|rest| rest.starts_with(&format!("{key}</Key>"))).count()
}

#[test]
fn purge_removes_every_version_on_a_versioned_bucket_and_retention_relies_on_it() {
    use obscura::retention::{NewUpload, Policy, Retention, RetentionConfig, Secret};
    let Some(server) = moto() else { return };
    let ep = &server.endpoint;
    create_bucket(ep, "versioned");
    enable_versioning(ep, "versioned");
    let store = Store::open("s3://versioned/up/", &options(ep)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for (key, copies) in [("alice/1.jpg", 3), ("alice/1.jpg.bak", 1), ("alice/1_thumb.jpg", 2), ("bob/1.jpg", 2)] {
            for i in 0..copies {
                store.put(key, format!("{key} v{i}").into_bytes()).await.unwrap();
            }
        }
        // A plain delete leaves the old versions behind (and adds a delete marker).
        store.put("tmp/x", b"1".to_vec()).await.unwrap();
        store.delete("tmp/x").await.unwrap();
    });
    assert_eq!(stored_versions(ep, "versioned", "up/tmp/x"), 2, "moto should keep the version and a delete marker");
    assert_eq!(stored_versions(ep, "versioned", "up/alice/1.jpg"), 3);

    // Retention purges through Store::purge: every version of the original and the thumbnail.
    let dir = tempfile::TempDir::new().unwrap();
    let policy = Policy::parse("deadline = \"1h\"\n[classes.photo]\non_expiry = \"purge\"\non_unsubscribe = \"purge\"\n").unwrap();
    let mut config = RetentionConfig::new(&dir.path().join("c.sqlite").display().to_string(), policy, Secret::from_bytes(vec![7; 32]).unwrap());
    config.store_options = options(ep);
    rt.block_on(async {
        let r = Retention::open(config).await.unwrap();
        let mut upload = NewUpload::new("a1", "alice", "s3://versioned/up/", "alice/1.jpg", "photo");
        upload.derived = vec!["alice/1_thumb.jpg".into()];
        r.register(&upload).await.unwrap();
        let summary = r.unsubscribe("alice").await.unwrap();
        assert_eq!((summary.done, summary.pending), (1, 0), "{summary:?}");
        let log = r.audit(None, Some("a1"), 0, 10).await.unwrap();
        // 3 + 2 versions, and the delete marker each plain delete added.
        assert!(log.last().unwrap().detail.contains("with 7 stored version(s)"), "{}", log.last().unwrap().detail);
        // The version, the earlier delete marker, and the marker purge's own delete added.
        assert_eq!(store.purge("tmp/x").await.unwrap(), 3);
    });
    assert_eq!(stored_versions(ep, "versioned", "up/alice/1.jpg"), 0, "versions of the original survived the purge");
    assert_eq!(stored_versions(ep, "versioned", "up/alice/1_thumb.jpg"), 0);
    assert_eq!(stored_versions(ep, "versioned", "up/tmp/x"), 0);
    // Neighbours sharing the prefix, and other people's objects, are untouched.
    assert_eq!(stored_versions(ep, "versioned", "up/alice/1.jpg.bak"), 1);
    assert_eq!(stored_versions(ep, "versioned", "up/bob/1.jpg"), 2);
}

/// PUTs `body` at exactly `path` (no URL normalisation: `.` and `..` segments go through
/// as written), the way any S3 client may have stored an odd key.
fn raw_put(endpoint: &str, path: &str, body: &[u8]) {
    use std::io::{Read, Write};
    let addr = endpoint.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(conn, "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
    conn.write_all(body).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "PUT {path}: {}", answer.lines().next().unwrap_or_default());
}

/// The review's case: keys `.`, `../x.jpg`, `dir//x.jpg` and a `tail/` folder marker
/// stopped a whole batch (exit 2, nothing after them), and `tail/` failed on every run.
/// Each is now reported with its reason while every other object is processed.
#[test]
fn odd_keys_are_reported_one_by_one_and_never_stop_the_batch() {
    let Some(server) = moto() else { return };
    create_bucket(&server.endpoint, "odd");
    let photo = small_photo();
    for key in ["good/1.jpg", ".", "../x.jpg", "dir//x.jpg", "good/2.jpg", "%2E%2E/y.jpg"] {
        raw_put(&server.endpoint, &format!("/odd/{key}"), &photo);
    }
    raw_put(&server.endpoint, "/odd/tail/", b"");
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("report.jsonl");
    let batch = |report: &std::path::Path| {
        let mut cmd = obscura();
        s3_env(&mut cmd, &server.endpoint)
            .args(["batch", "s3://odd", "s3://odd-out", "--targets", "face", "--journal"])
            .arg(tmp.path().join("j.sqlite"))
            .arg("--report")
            .arg(report);
        cmd
    };
    create_bucket(&server.endpoint, "odd-out");
    let out = run(&mut batch(&report));
    assert_eq!(out.status.code(), Some(1), "some objects could not be anonymised: exit 1, not 2");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&report).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let status = |key: &str| lines.iter().find(|l| l["key"] == key).map(|l| l["status"].as_str().unwrap().to_string());
    assert_eq!(status("good/1.jpg").as_deref(), Some("done"), "{lines:?}");
    assert_eq!(status("good/2.jpg").as_deref(), Some("done"));
    for odd in [".", "../x.jpg", "dir//x.jpg"] {
        assert_eq!(status(odd).as_deref(), Some("failed"), "{odd}: {lines:?}");
    }
    assert_eq!(status("tail/").as_deref(), Some("skipped"), "a folder marker is not an object");
    let dst = Store::open("s3://odd-out", &options(&server.endpoint)).unwrap();
    let written = list_keys(&dst);
    assert!(written.contains("good/1.jpg") && written.contains("good/2.jpg"), "{written:?}");
    assert!(!written.iter().any(|k| k.contains("..")), "nothing written outside the prefix: {written:?}");
    // The next run retries the failures but no longer trips over the folder marker.
    let out = run(&mut batch(&tmp.path().join("report2.jsonl")));
    assert_eq!(out.status.code(), Some(1));
    let again = std::fs::read_to_string(tmp.path().join("report2.jsonl")).unwrap();
    assert!(!again.contains("\"tail/\""), "{again}");
}
