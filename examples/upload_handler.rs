//! An HTTP upload endpoint that only ever stores or returns anonymised photos.
//!
//! ```sh
//! scripts/setup
//! cargo run --release --example upload_handler          # listens on 127.0.0.1:3000
//! curl --data-binary @photo.jpg localhost:3000/upload -o anonymised.jpg
//! ```
//!
//! One `Anonymizer` is built at start-up and shared by every request; each request runs
//! on tokio's blocking pool (`anonymize_async`), so the server stays responsive while
//! images are processed, and at most `max_concurrency` images are in flight. An upload
//! that cannot be anonymised is refused: the original is never echoed back or stored.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use obscura::{Anonymizer, Config, Error};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let anonymizer = Anonymizer::new(Config::default())?;
    let app = Router::new()
        .route("/upload", post(upload))
        .layer(DefaultBodyLimit::max(32 << 20))
        .with_state(anonymizer);
    let addr = std::env::var("OBSCURA_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("upload_handler: POST photos to http://{addr}/upload");
    axum::serve(listener, app).await?;
    Ok(())
}

async fn upload(State(anonymizer): State<Anonymizer>, body: Bytes) -> Response {
    match anonymizer.anonymize_async(body.to_vec()).await {
        Ok(out) => {
            let mime = out.format.mime();
            // Here a real service would store `out.bytes`; never the upload itself.
            (StatusCode::OK, [(header::CONTENT_TYPE, mime)], out.bytes).into_response()
        }
        // The client's file is unusable: say why, keep nothing.
        Err(Error::Decode(e)) => (StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")).into_response(),
        // Our side failed (e.g. detection): fail closed, the upload is not accepted.
        Err(e) => {
            tracing::error!("anonymisation failed: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "could not anonymise this image; it was not stored\n").into_response()
        }
    }
}
