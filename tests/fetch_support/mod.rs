//! Local mock of Civitai's API, its download redirect and the presigned storage host (the
//! behaviour it imitates is described in docs/civitai.md), plus a mock Hugging Face endpoint.
//! Everything listens on 127.0.0.1.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use sha2::{Digest, Sha256};

/// File content: literal bytes, or generated on the fly (for multi-GB throughput runs).
#[derive(Clone)]
pub enum Content {
    Bytes(Arc<Vec<u8>>),
    /// `head` followed by `block` repeated until `len` bytes.
    Generated {
        head: Arc<Vec<u8>>,
        block: Arc<Vec<u8>>,
        len: u64,
    },
}

impl Content {
    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Generated { len, .. } => *len,
        }
    }

    /// Bytes `[start, end)`.
    pub fn slice(&self, start: u64, end: u64) -> Bytes {
        match self {
            Content::Bytes(b) => Bytes::copy_from_slice(&b[start as usize..end as usize]),
            Content::Generated { head, block, .. } => {
                let mut out = Vec::with_capacity((end - start) as usize);
                let mut p = start;
                while p < end {
                    if (p as usize) < head.len() {
                        let stop = (end as usize).min(head.len());
                        out.extend_from_slice(&head[p as usize..stop]);
                        p = stop as u64;
                    } else {
                        let off = (p - head.len() as u64) as usize % block.len();
                        let take = (block.len() - off).min((end - p) as usize);
                        out.extend_from_slice(&block[off..off + take]);
                        p += take as u64;
                    }
                }
                Bytes::from(out)
            }
        }
    }

    pub fn sha256(&self) -> String {
        let mut h = Sha256::new();
        let mut p = 0;
        while p < self.len() {
            let end = (p + (8 << 20)).min(self.len());
            h.update(self.slice(p, end));
            p = end;
        }
        hex::encode_upper(h.finalize())
    }

    pub fn autov3(&self) -> String {
        let head = self.slice(0, 8);
        let n = u64::from_le_bytes(head[..8].try_into().unwrap());
        let mut h = Sha256::new();
        h.update(self.slice(8 + n, self.len()));
        hex::encode_upper(h.finalize())[..12].to_string()
    }
}

/// A valid safetensors file with one F32 tensor of `n` values derived from `seed`.
pub fn safetensors_bytes(n: usize, seed: u32) -> Vec<u8> {
    let header = format!(
        "{{\"w\":{{\"dtype\":\"F32\",\"shape\":[{n}],\"data_offsets\":[0,{}]}}}}",
        n * 4
    );
    let mut header = header.into_bytes();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(&((x % 1000) as f32 / 1000.0).to_le_bytes());
    }
    out
}

/// A generated safetensors-shaped file of `len` bytes (header + pseudo-random payload).
pub fn generated(len: u64) -> Content {
    let payload = len - 8 - 128;
    let mut header = format!(
        "{{\"w\":{{\"dtype\":\"U8\",\"shape\":[{payload}],\"data_offsets\":[0,{payload}]}}}}"
    )
    .into_bytes();
    assert!(header.len() <= 128);
    header.resize(128, b' ');
    let mut head = 128u64.to_le_bytes().to_vec();
    head.extend_from_slice(&header);
    let mut block = vec![0u8; (1 << 20) + 7]; // odd length so chunks do not align
    let mut x: u64 = 0x9E3779B97F4A7C15;
    for b in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    Content::Generated {
        head: Arc::new(head),
        block: Arc::new(block),
        len,
    }
}

/// How the download endpoint answers for a version.
#[derive(Clone, Debug, PartialEq)]
pub enum DownloadBehavior {
    Redirect,
    EarlyAccess,
    GenerationOnly,
    Archived,
    NotFound,
    /// 200 with an HTML page instead of a redirect.
    Html200,
    /// 429 for the first `n` requests, then redirect.
    RateLimited(usize),
}

#[derive(Clone)]
pub struct MockFile {
    pub id: u64,
    pub name: String,
    pub fp: Option<String>,
    pub size: Option<String>,
    pub format: String,
    pub kind: String,
    pub primary: bool,
    pub content: Content,
    /// Overrides the listed SHA256 (to simulate a wrong hash in metadata).
    pub listed_sha: Option<String>,
    /// Overrides the listed size in bytes.
    pub listed_size: Option<u64>,
    /// What storage actually serves, if different from `content` (wrong variant).
    pub served: Option<Content>,
    /// Storage answers this (content-type, body) instead of the file.
    pub served_text: Option<(String, String)>,
    pub autov3: bool,
}

impl MockFile {
    pub fn new(id: u64, name: &str, content: Content) -> Self {
        MockFile {
            id,
            name: name.into(),
            fp: Some("fp16".into()),
            size: Some("pruned".into()),
            format: "SafeTensor".into(),
            kind: "Model".into(),
            primary: true,
            content,
            listed_sha: None,
            listed_size: None,
            served: None,
            served_text: None,
            autov3: false,
        }
    }
}

#[derive(Clone)]
pub struct MockVersion {
    pub id: u64,
    pub model_id: u64,
    pub name: String,
    pub model_name: String,
    pub model_type: String,
    pub base_model: String,
    pub trained_words: Vec<String>,
    pub files: Vec<MockFile>,
    pub behavior: DownloadBehavior,
}

/// One request the mock saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub host: &'static str,
    pub path: String,
    pub query: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub status: u16,
}

impl Seen {
    fn new(host: &'static str, path: &str, query: &str, headers: &HeaderMap, status: u16) -> Self {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        Seen {
            host,
            path: path.to_string(),
            query: query.to_string(),
            range: header("range"),
            authorization: header("authorization"),
            status,
        }
    }
}

#[derive(Default)]
pub struct MockState {
    pub versions: Mutex<HashMap<u64, MockVersion>>,
    /// Token the download endpoint requires (None = anonymous downloads allowed).
    pub required_token: Mutex<Option<String>>,
    pub seen: Mutex<Vec<Seen>>,
    /// storage signature -> (version id, file id, valid)
    signatures: Mutex<HashMap<String, (u64, u64, bool)>>,
    sig_counter: AtomicU64,
    /// One-shot cut points: a body request whose range `[start, end)` contains a point is cut
    /// there (after sending `point - start` bytes) and the point is consumed.
    pub drop_at: Mutex<VecDeque<u64>>,
    /// Bytes of file content sent by storage (all requests).
    pub bytes_served: AtomicU64,
    /// Storage ignores `Range` and always sends the whole file with 200.
    pub ignore_ranges: AtomicBool,
    /// Invalidate every issued signature when a connection is cut.
    pub expire_on_drop: AtomicBool,
    pub chunk_delay_ms: AtomicU64,
    pub chunk_size: AtomicUsize,
    rate_limit_count: AtomicUsize,
    pub storage_addr: Mutex<Option<SocketAddr>>,
    /// Storage holds each response until this many metadata requests arrived (lets a test
    /// line up two workers deterministically).
    pub storage_gate: AtomicUsize,
    /// Plain URL files: path -> (content, content-disposition).
    pub plain: Mutex<HashMap<String, (Content, Option<String>)>>,
}

impl MockState {
    pub fn count(&self, host: &str, path_prefix: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.host == host && s.path.starts_with(path_prefix))
            .count()
    }
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    /// The requests the storage host saw, in order.
    pub fn storage_requests(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.host == "storage")
            .collect()
    }
    pub fn add(&self, v: MockVersion) {
        self.versions.lock().unwrap().insert(v.id, v);
    }
    pub fn expire_all(&self) {
        for v in self.signatures.lock().unwrap().values_mut() {
            v.2 = false;
        }
    }
    fn record(
        &self,
        host: &'static str,
        path: &str,
        query: &str,
        headers: &HeaderMap,
        status: u16,
    ) {
        self.seen
            .lock()
            .unwrap()
            .push(Seen::new(host, path, query, headers, status));
    }
}

/// Serves `app` on a free port of 127.0.0.1 in the background.
async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

/// Running mock Civitai + storage servers.
pub struct MockCivitai {
    pub state: Arc<MockState>,
    pub api_addr: SocketAddr,
    pub storage_addr: SocketAddr,
}

impl MockCivitai {
    pub async fn start() -> MockCivitai {
        let state = Arc::new(MockState::default());
        state.chunk_size.store(64 * 1024, Ordering::Relaxed);
        let storage = Router::new()
            .route("/storage/{key}", get(storage_handler))
            .route("/files/{*path}", get(plain_handler))
            .with_state(state.clone());
        let storage_addr = serve(storage).await;
        *state.storage_addr.lock().unwrap() = Some(storage_addr);
        let api = Router::new()
            .route("/api/v1/model-versions/{id}", get(version_handler))
            .route("/api/download/models/{id}", get(download_handler))
            .with_state(state.clone());
        let api_addr = serve(api).await;
        MockCivitai {
            state,
            api_addr,
            storage_addr,
        }
    }

    pub fn base_url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}", self.api_addr)).unwrap()
    }

    pub fn plain_url(&self, path: &str) -> String {
        format!("http://{}/files/{path}", self.storage_addr)
    }
}

fn json_error(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

async fn version_handler(
    State(state): State<Arc<MockState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/api/v1/model-versions/{id}");
    let Ok(id) = id.parse::<u64>() else {
        state.record("api", &path, "", &headers, 400);
        return json_error(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "Invalid id"}),
        );
    };
    let v = state.versions.lock().unwrap().get(&id).cloned();
    let Some(v) = v else {
        state.record("api", &path, "", &headers, 404);
        return json_error(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "Model not found"}),
        );
    };
    state.record("api", &path, "", &headers, 200);
    let files: Vec<serde_json::Value> = v
        .files
        .iter()
        .map(|f| {
            let sha = f.listed_sha.clone().unwrap_or_else(|| f.content.sha256());
            let size = f.listed_size.unwrap_or(f.content.len());
            let mut hashes = serde_json::json!({
                "AutoV2": &sha[..10],
                "SHA256": sha,
                "CRC32": "DAEE95B7",
            });
            if f.autov3 {
                hashes["AutoV3"] = serde_json::Value::String(f.content.autov3());
            }
            let mut meta = serde_json::json!({"format": f.format});
            if let Some(fp) = &f.fp {
                meta["fp"] = fp.clone().into();
            }
            if let Some(s) = &f.size {
                meta["size"] = s.clone().into();
            }
            serde_json::json!({
                "id": f.id,
                "sizeKB": size as f64 / 1024.0,
                "name": f.name,
                "type": f.kind,
                "pickleScanResult": "Success",
                "pickleScanMessage": "No Pickle imports",
                "virusScanResult": "Success",
                "virusScanMessage": null,
                "scannedAt": "2025-12-18T09:00:00.000",
                "metadata": meta,
                "hashes": hashes,
                "primary": f.primary,
                "downloadUrl": format!("https://civitai.com/api/download/models/{}", v.id),
            })
        })
        .collect();
    let body = serde_json::json!({
        "id": v.id,
        "modelId": v.model_id,
        "name": v.name,
        "nsfwLevel": 1,
        "status": "Published",
        "trainedWords": v.trained_words,
        "trainingStatus": null,
        "baseModel": v.base_model,
        "baseModelType": "Standard",
        "usageControl": if v.behavior == DownloadBehavior::GenerationOnly { "Generation" } else { "Download" },
        "paidAccess": null,
        "air": format!("urn:air:sdxl:{}:civitai:{}@{}", v.model_type.to_lowercase(), v.model_id, v.id),
        "stats": {"downloadCount": null, "thumbsUpCount": 3},
        "model": {"name": v.model_name, "type": v.model_type, "nsfw": false, "poi": false},
        "files": files,
        "images": [],
        "downloadUrl": format!("https://civitai.com/api/download/models/{}", v.id),
        "someFutureField": {"nested": [1, 2, 3]},
    });
    Json(body).into_response()
}

async fn download_handler(
    State(state): State<Arc<MockState>>,
    Path(id): Path<u64>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/api/download/models/{id}");
    let query: String = q
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let respond = |status: StatusCode, r: Response| {
        state.record("api", &path, &query, &headers, status.as_u16());
        r
    };
    // A JSON error as the download endpoint sends it to non-browser clients.
    let fail =
        |status: StatusCode, body: serde_json::Value| respond(status, json_error(status, body));
    let file_not_found = || {
        fail(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "File not found"}),
        )
    };
    let v = state.versions.lock().unwrap().get(&id).cloned();
    let Some(v) = v else {
        return file_not_found();
    };
    if let DownloadBehavior::RateLimited(n) = v.behavior {
        if state.rate_limit_count.fetch_add(1, Ordering::SeqCst) < n {
            return fail(
                StatusCode::TOO_MANY_REQUESTS,
                serde_json::json!({"error": "We've noticed an unusual amount of downloading from your account. Contact support@civitai.com or come back later."}),
            );
        }
    }
    match v.behavior {
        DownloadBehavior::NotFound => return file_not_found(),
        DownloadBehavior::Archived => {
            return fail(
                StatusCode::GONE,
                serde_json::json!({"error": "Model archived, not available for download"}),
            )
        }
        DownloadBehavior::GenerationOnly => {
            return fail(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error":"Unauthorized","message":"The creator of this asset has disabled downloads on this file"}),
            );
        }
        _ => {}
    }
    // Token: `Authorization: Bearer` wins over `?token=` (docs/civitai.md, *Tokens*).
    let token = match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(h) => h.split(' ').nth(1).map(str::to_string),
        None => q.get("token").cloned(),
    };
    let required = state.required_token.lock().unwrap().clone();
    if let Some(req) = &required {
        if token.as_deref() != Some(req.as_str()) {
            return fail(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error":"Unauthorized","message":"The creator of this asset requires you to be logged in to download it"}),
            );
        }
    }
    match v.behavior {
        DownloadBehavior::EarlyAccess => {
            return fail(
                StatusCode::FORBIDDEN,
                serde_json::json!({"error":"Early Access","deadline":"2030-01-01T00:00:00.000Z","message":"This asset is in Early Access. You can use Buzz access it now!"}),
            );
        }
        DownloadBehavior::Html200 => {
            let r = (
                StatusCode::OK,
                [("content-type", "text/html; charset=utf-8")],
                "<!DOCTYPE html><html><body>Sign in</body></html>",
            )
                .into_response();
            return respond(StatusCode::OK, r);
        }
        _ => {}
    }
    let file = match q.get("fileId").and_then(|f| f.parse::<u64>().ok()) {
        Some(fid) => v.files.iter().find(|f| f.id == fid),
        None => v.files.iter().find(|f| f.primary),
    };
    let Some(file) = file else {
        return file_not_found();
    };
    let n = state.sig_counter.fetch_add(1, Ordering::SeqCst);
    let sig = format!("sig{n:08}");
    state
        .signatures
        .lock()
        .unwrap()
        .insert(sig.clone(), (v.id, file.id, true));
    let storage = state.storage_addr.lock().unwrap().unwrap();
    let location = format!(
        "http://{storage}/storage/{}-{}.a1b2.safetensors?X-Amz-Expires=86400&response-content-disposition=attachment%3B%20filename%3D%22{}%22&X-Amz-Date=20990101T000000Z&X-Amz-Signature={sig}",
        v.id,
        file.id,
        file.name.replace(' ', "%20")
    );
    let r = Response::builder()
        .status(StatusCode::TEMPORARY_REDIRECT)
        .header("location", location.clone())
        .header("cache-control", "no-store, max-age=0")
        .body(Body::from(location))
        .unwrap();
    respond(StatusCode::TEMPORARY_REDIRECT, r)
}

/// Parses `bytes=N-` or `bytes=N-M`.
fn parse_range(h: &str, len: u64) -> Option<(u64, u64)> {
    let r = h.strip_prefix("bytes=")?;
    let (a, b) = r.split_once('-')?;
    let start: u64 = a.parse().ok()?;
    let end = if b.is_empty() {
        len
    } else {
        b.parse::<u64>().ok()? + 1
    };
    Some((start, end.min(len)))
}

fn serve_content(
    state: &Arc<MockState>,
    content: Content,
    headers: &HeaderMap,
    disposition: Option<String>,
    host: &'static str,
    path: &str,
    query: &str,
) -> Response {
    let len = content.len();
    let ranged = if state.ignore_ranges.load(Ordering::SeqCst) {
        None
    } else {
        headers.get("range").and_then(|v| v.to_str().ok())
    };
    let (start, end, partial) = match ranged {
        Some(r) => match parse_range(r, len) {
            Some((s, _)) if s >= len => {
                state.record(host, path, query, headers, 416);
                return Response::builder()
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header("content-range", format!("bytes */{len}"))
                    .body(Body::empty())
                    .unwrap();
            }
            Some((s, e)) => (s, e, true),
            None => (0, len, false),
        },
        None => (0, len, false),
    };
    let status = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    state.record(host, path, query, headers, status.as_u16());
    let cut = {
        let mut points = state.drop_at.lock().unwrap();
        let hit = points.iter().position(|&c| start <= c && c < end);
        hit.and_then(|i| points.remove(i))
    };
    let chunk = state.chunk_size.load(Ordering::Relaxed) as u64;
    let delay = state.chunk_delay_ms.load(Ordering::Relaxed);
    let st = state.clone();
    let stream = futures::stream::unfold(start, move |pos| {
        let content = content.clone();
        let st = st.clone();
        async move {
            if pos >= end {
                return None;
            }
            if let Some(c) = cut {
                if pos >= c {
                    // Let the server flush what it has sent before the connection is cut.
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    if st.expire_on_drop.load(Ordering::SeqCst) {
                        st.expire_all();
                    }
                    return Some((Err(std::io::Error::other("connection cut by mock")), end));
                }
            }
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let mut next = (pos + chunk).min(end);
            if let Some(c) = cut {
                if c > pos {
                    next = next.min(c);
                }
            }
            st.bytes_served.fetch_add(next - pos, Ordering::Relaxed);
            Some((Ok::<Bytes, std::io::Error>(content.slice(pos, next)), next))
        }
    });
    let mut b = Response::builder()
        .status(status)
        .header("content-type", "application/octet-stream")
        .header("accept-ranges", "bytes")
        .header("content-length", (end - start).to_string());
    if partial {
        b = b.header("content-range", format!("bytes {start}-{}/{len}", end - 1));
    }
    if let Some(d) = disposition {
        b = b.header("content-disposition", d);
    }
    b.body(Body::from_stream(stream)).unwrap()
}

async fn storage_handler(
    State(state): State<Arc<MockState>>,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/storage/{key}");
    let query = q.keys().cloned().collect::<Vec<_>>().join("&");
    // R2 rejects presigned requests that also carry an Authorization header.
    if headers.contains_key("authorization") {
        state.record("storage", &path, &query, &headers, 400);
        return (
            StatusCode::BAD_REQUEST,
            "InvalidRequest: Missing x-amz-content-sha256",
        )
            .into_response();
    }
    let gate = state.storage_gate.load(Ordering::SeqCst);
    for _ in 0..1000 {
        if state.count("api", "/api/v1/model-versions/") >= gate {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sig = q.get("X-Amz-Signature").cloned().unwrap_or_default();
    let entry = state.signatures.lock().unwrap().get(&sig).cloned();
    let Some((vid, fid, valid)) = entry else {
        state.record("storage", &path, &query, &headers, 403);
        return (StatusCode::FORBIDDEN, "SignatureDoesNotMatch").into_response();
    };
    if !valid {
        state.record("storage", &path, &query, &headers, 403);
        return (
            StatusCode::FORBIDDEN,
            "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
        )
            .into_response();
    }
    let file = state
        .versions
        .lock()
        .unwrap()
        .get(&vid)
        .and_then(|v| v.files.iter().find(|f| f.id == fid).cloned());
    let Some(file) = file else {
        state.record("storage", &path, &query, &headers, 404);
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Some((ct, body)) = &file.served_text {
        state.record("storage", &path, &query, &headers, 200);
        return (StatusCode::OK, [("content-type", ct.clone())], body.clone()).into_response();
    }
    let content = file.served.clone().unwrap_or(file.content.clone());
    let disposition = Some(format!("attachment; filename=\"{}\"", file.name));
    serve_content(
        &state,
        content,
        &headers,
        disposition,
        "storage",
        &path,
        &query,
    )
}

async fn plain_handler(
    State(state): State<Arc<MockState>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    let full = format!("/files/{path}");
    let entry = state.plain.lock().unwrap().get(&path).cloned();
    match entry {
        Some((content, disposition)) => {
            serve_content(&state, content, &headers, disposition, "storage", &full, "")
        }
        None => {
            state.record("storage", &full, "", &headers, 404);
            StatusCode::NOT_FOUND.into_response()
        }
    }
}

/// Mock Hugging Face endpoint: `/{org}/{repo}/resolve/{rev}/{file}` with Range support and
/// the headers hf-hub reads (`etag`/`x-linked-etag`, `x-repo-commit`, `content-range`).
pub struct MockHf {
    pub state: Arc<HfState>,
    pub addr: SocketAddr,
}

#[derive(Default)]
pub struct HfState {
    pub files: Mutex<HashMap<String, Content>>,
    pub seen: Mutex<Vec<Seen>>,
}

impl MockHf {
    pub async fn start() -> MockHf {
        let state = Arc::new(HfState::default());
        let app = Router::new()
            .route("/{org}/{repo}/resolve/{rev}/{*file}", get(hf_handler))
            .with_state(state.clone());
        let addr = serve(app).await;
        MockHf { state, addr }
    }
}

async fn hf_handler(
    State(state): State<Arc<HfState>>,
    Path((org, repo, rev, file)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let key = format!("{org}/{repo}/{file}");
    let path = format!("/{org}/{repo}/resolve/{rev}/{file}");
    let content = state.files.lock().unwrap().get(&key).cloned();
    let record = |status: u16| {
        state
            .seen
            .lock()
            .unwrap()
            .push(Seen::new("hf", &path, "", &headers, status))
    };
    let Some(content) = content else {
        record(404);
        return (
            StatusCode::NOT_FOUND,
            [("x-error-code", "EntryNotFound")],
            "Entry not found",
        )
            .into_response();
    };
    let len = content.len();
    let (start, end) = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| parse_range(r, len))
        .unwrap_or((0, len));
    record(206);
    let sha = content.sha256().to_lowercase();
    let mut resp = Response::builder()
        .status(StatusCode::PARTIAL_CONTENT)
        .header("content-type", "application/octet-stream")
        .header("accept-ranges", "bytes")
        .header("x-repo-commit", "0123456789abcdef0123456789abcdef01234567")
        .header("x-linked-etag", format!("\"{sha}\""))
        .header("etag", format!("\"{sha}\""))
        .header(
            "content-range",
            format!("bytes {start}-{}/{len}", end.saturating_sub(1)),
        );
    resp = resp.header("content-length", HeaderValue::from(end - start));
    resp.body(Body::from(content.slice(start, end))).unwrap()
}

// ---- shared test helpers -------------------------------------------------------------

use sdxl_worker::fetch::{
    prefetch_with, EntryError, FetchArgs, FetchError, Manifest, PrefetchOptions, ProgressMode,
    SecretString,
};
use std::path::PathBuf;

pub const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// Single-connection options with fast retries.
pub fn opts() -> PrefetchOptions {
    PrefetchOptions {
        retry_base: Duration::from_millis(5),
        retry_max: Duration::from_millis(40),
        max_retries: 4,
        progress: ProgressMode::Lines,
        write_limit: None,
        connections: 1,
        segment_min_size: 64 << 20,
        segment_piece_min: 8 << 20,
    }
}

/// Multi-connection options that split even the small test files into ranges.
pub fn multi_opts(connections: usize) -> PrefetchOptions {
    PrefetchOptions {
        connections,
        segment_min_size: 0,
        segment_piece_min: 16 * 1024,
        ..opts()
    }
}

pub fn manifest(dir: &std::path::Path, text: &str) -> Manifest {
    let p = dir.join("models.toml");
    std::fs::write(&p, text).unwrap();
    Manifest::load(&p).unwrap()
}

pub fn args(mock: &MockCivitai, cache: &std::path::Path) -> FetchArgs {
    let mut a = FetchArgs::new("models.toml", cache);
    a.civitai_base_url = mock.base_url();
    a.civitai_token = Some(SecretString::new(TOKEN));
    a
}

pub fn ckpt_version() -> MockVersion {
    let mut fp32 = MockFile::new(
        901,
        "sdXL_v10_fp32.safetensors",
        Content::Bytes(safetensors_bytes(60_000, 2).into()),
    );
    fp32.fp = Some("fp32".into());
    fp32.size = Some("full".into());
    fp32.primary = false;
    MockVersion {
        id: 128078,
        model_id: 101055,
        name: "v1.0 VAE fix".into(),
        model_name: "SD XL".into(),
        model_type: "Checkpoint".into(),
        base_model: "SDXL 1.0".into(),
        trained_words: vec![],
        files: vec![
            MockFile::new(
                900,
                "sdXL_v10VAEFix.safetensors",
                Content::Bytes(safetensors_bytes(50_000, 1).into()),
            ),
            fp32,
        ],
        behavior: DownloadBehavior::Redirect,
    }
}

pub fn lora_version() -> MockVersion {
    let mut f = MockFile::new(
        950,
        "add-detail-xl.safetensors",
        Content::Bytes(safetensors_bytes(10_000, 3).into()),
    );
    f.fp = None;
    f.size = None;
    f.autov3 = true;
    MockVersion {
        id: 135867,
        model_id: 122359,
        name: "v1".into(),
        model_name: "Detail Tweaker XL".into(),
        model_type: "LORA".into(),
        base_model: "SDXL 1.0".into(),
        trained_words: vec!["detailed".into(), "intricate".into()],
        files: vec![f],
        behavior: DownloadBehavior::Redirect,
    }
}

pub fn blobs(cache: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let root = cache.join("blobs/sha256");
    if let Ok(dirs) = std::fs::read_dir(root) {
        for d in dirs.flatten() {
            for f in std::fs::read_dir(d.path()).unwrap().flatten() {
                if f.path().extension().is_some_and(|e| e == "safetensors") {
                    out.push(f.path());
                }
            }
        }
    }
    out
}

/// Runs a prefetch that must fail on its one entry, and returns that entry's error.
pub async fn prefetch_err(a: &FetchArgs, m: &Manifest, o: &PrefetchOptions) -> EntryError {
    entry_error(prefetch_with(a, m, o).await.unwrap_err())
}

pub fn entry_error(e: FetchError) -> EntryError {
    match e {
        FetchError::Entries(mut v) => {
            assert_eq!(v.len(), 1, "{v:?}");
            v.remove(0).error
        }
        other => panic!("expected an entry failure, got {other}"),
    }
}

pub async fn setup() -> (MockCivitai, tempfile::TempDir) {
    let mock = MockCivitai::start().await;
    mock.state.add(ckpt_version());
    mock.state.add(lora_version());
    *mock.state.required_token.lock().unwrap() = Some(TOKEN.into());
    (mock, tempfile::tempdir().unwrap())
}

pub const BASIC: &str = r#"
[[checkpoint]]
civitai = 128078

[[lora]]
name = "detail"
air = "urn:air:sdxl:lora:civitai:122359@135867"
weight = 0.7
"#;

pub fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
