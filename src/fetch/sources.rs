//! One function per source kind (Civitai, URL, Hugging Face, local path): each makes one
//! manifest entry available as a verified file and describes it with a [`Sidecar`].
//!
//! A download runs in these stages: cache lookup → lock the cache key (one downloader per file
//! per volume) → lookup again (another worker may have finished it) → free-space check →
//! [`transfer`] (resolve, transfer, verify: `download.rs`) → [`commit`] into the cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::cache::{self, Cache, CivitaiInfo, IndexRecord, Sidecar};
use super::civitai::{self, CivitaiClient};
use super::download::{self, Downloaded, Expect};
use super::error::EntryError;
use super::hf;
use super::manifest::{self, FileChoice, ManifestEntry, ModelKind, Source};
use super::names;
use super::progress::{FileProgress, ProgressHub};
use super::resolve::{FixedUrl, Resolver};
use super::verify::{hash_file, read_head, sniff_safetensors};
use super::PrefetchOptions;

/// Shared state of one prefetch run.
pub(crate) struct Ctx {
    pub(crate) cache: Cache,
    pub(crate) civitai: CivitaiClient,
    pub(crate) data: reqwest::Client,
    pub(crate) opts: PrefetchOptions,
    pub(crate) hub: ProgressHub,
}

/// Result of fetching one entry, before naming.
pub(crate) struct Fetched {
    pub(crate) path: PathBuf,
    pub(crate) sidecar: Sidecar,
    pub(crate) transferred: u64,
    pub(crate) cached: bool,
}

impl Fetched {
    /// A file that was already in the cache (or used in place): nothing transferred.
    fn cached(path: PathBuf, sidecar: Sidecar) -> Self {
        Fetched {
            path,
            sidecar,
            transferred: 0,
            cached: true,
        }
    }
}

/// Makes one entry available: pinned cache hit first, then the entry's source.
pub(crate) async fn fetch_entry(
    ctx: &Ctx,
    entry: &ManifestEntry,
    label: &str,
) -> Result<Fetched, EntryError> {
    // A pinned file already in the cache needs no network at all (offline start).
    if let Some(pin) = &entry.sha256 {
        if let Some((path, sidecar)) = ctx.cache.lookup(pin) {
            tracing::info!(entry = label, "cache hit (sha256 pinned; no network)");
            return Ok(Fetched::cached(path, sidecar));
        }
    }
    match &entry.source {
        Source::Civitai {
            version_id,
            model_id,
        } => fetch_civitai(ctx, entry, label, *version_id, *model_id).await,
        Source::HuggingFace {
            repo,
            file,
            revision,
        } => fetch_hf(ctx, entry, label, repo, file, revision.as_deref()).await,
        Source::Url(url) => fetch_url(ctx, entry, label, url).await,
        Source::Path(path) => fetch_path(ctx, entry, label, path).await,
    }
}

fn civitai_index_key(version_id: u64, choice: &FileChoice) -> String {
    cache::key_for(&format!(
        "civitai:{version_id}:{:?}:{:?}:{:?}",
        choice.file_id, choice.fp, choice.size
    ))
}

async fn fetch_civitai(
    ctx: &Ctx,
    entry: &ManifestEntry,
    label: &str,
    version_id: u64,
    model_id_hint: Option<u64>,
) -> Result<Fetched, EntryError> {
    let index_key = civitai_index_key(version_id, &entry.choice);
    let version = match ctx.civitai.version(version_id).await {
        Ok(v) => v,
        Err(e @ (EntryError::Network { .. } | EntryError::Unavailable { .. })) => {
            // Offline or Civitai down: a file fetched for this exact entry before still works.
            if let Some(rec) = ctx.cache.index_get(&index_key) {
                if let Some((path, sidecar)) = ctx.cache.lookup(&rec.sha256) {
                    tracing::warn!(entry = label, error = %e, "Civitai unreachable; using the cached file from an earlier fetch");
                    return Ok(Fetched::cached(path, sidecar));
                }
            }
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    if let Some(m) = model_id_hint {
        if m != version.model_id {
            tracing::warn!(
                entry = label,
                air_model = m,
                actual_model = version.model_id,
                "AIR model id does not match the version's model; using the version"
            );
        }
    }
    let file = civitai::choose_file(&version, &entry.choice)?;
    let listed = file.sha256();
    if let (Some(pin), Some(listed)) = (&entry.sha256, &listed) {
        if pin != listed {
            return Err(EntryError::PinMismatch {
                pinned: pin.clone(),
                listed: listed.clone(),
                file_id: file.id,
            });
        }
    }
    let expected_sha = entry.sha256.clone().or(listed);
    let expected_size = file.size_bytes();
    let file_name = names::sanitize_file_name(
        file.name
            .as_deref()
            .unwrap_or(&format!("civitai-{version_id}.safetensors")),
    );
    let info = CivitaiInfo {
        model_id: version.model_id,
        version_id: version.id,
        file_id: file.id,
        model_name: version.model.as_ref().and_then(|m| m.name.clone()),
        version_name: version.name.clone(),
        model_type: version.model.as_ref().and_then(|m| m.kind.clone()),
        base_model: version.base_model.clone(),
        air: version.air.clone(),
        trained_words: version.trained_words.clone().unwrap_or_default(),
        hashes: file.hashes(),
    };
    let source = format!("civitai version {} file {}", version.id, file.id);
    let make_sidecar = |sha: String, size: u64, autov3: Option<String>| Sidecar {
        sha256: sha,
        size,
        file_name: file_name.clone(),
        source: source.clone(),
        autov3,
        civitai: Some(info.clone()),
        fetched_at: cache::now_unix(),
    };

    let lock_key = match &expected_sha {
        Some(sha) => sha.clone(),
        None => cache::key_for(&format!("civitai-file:{}", file.id)),
    };
    let hit = |ctx: &Ctx| -> Result<Option<Fetched>, EntryError> {
        if let Some(sha) = &expected_sha {
            if let Some((path, old)) = ctx.cache.lookup(sha) {
                // Refresh metadata (trigger words, names) from the revalidated version.
                let sc = make_sidecar(sha.clone(), old.size, old.autov3.clone());
                if sc != old {
                    ctx.cache.write_sidecar(&sc)?;
                }
                let record = IndexRecord::downloaded(sha, old.size, &file_name);
                ctx.cache.index_put(&index_key, &record)?;
                return Ok(Some(Fetched::cached(path, sc)));
            }
        }
        Ok(None)
    };
    if let Some(f) = hit(ctx)? {
        tracing::info!(entry = label, "cache hit (metadata revalidated)");
        return Ok(f);
    }
    let _lock = ctx.cache.lock(&lock_key, label).await?;
    if let Some(f) = hit(ctx)? {
        tracing::info!(entry = label, "cache hit (downloaded by another worker)");
        return Ok(f);
    }
    check_space(&ctx.cache, &lock_key, file.approx_size_bytes())?;
    let resolver: Arc<dyn Resolver> = Arc::new(civitai::CivitaiResolver {
        client: ctx.civitai.clone(),
        version_id: version.id,
        file_id: file.id,
    });
    let expect = Expect {
        size: expected_size,
        sha256: expected_sha.clone(),
        autov3: entry.kind == ModelKind::Lora,
        size_hint: file.approx_size_bytes(),
    };
    let (d, progress) = transfer(ctx, label, &lock_key, resolver, &expect).await?;
    let sidecar = make_sidecar(d.sha256.clone(), d.size, d.autov3.clone());
    commit(ctx, &d, sidecar, &index_key, progress)
}

/// Downloads one file into its part file (see `download.rs`), with a progress line that is
/// abandoned when the download fails.
async fn transfer(
    ctx: &Ctx,
    label: &str,
    lock_key: &str,
    resolver: Arc<dyn Resolver>,
    expect: &Expect,
) -> Result<(Downloaded, FileProgress), EntryError> {
    let progress = ctx.hub.file(label);
    let d = download::download(
        &ctx.data, &ctx.cache, lock_key, resolver, expect, &ctx.opts, &progress,
    )
    .await
    .inspect_err(|_| progress.abandon())?;
    Ok((d, progress))
}

/// Moves a verified download into the cache under its hash, records which sha256 the source
/// identity `index_key` resolved to (so an offline restart finds it), and closes the progress
/// line.
fn commit(
    ctx: &Ctx,
    d: &Downloaded,
    sidecar: Sidecar,
    index_key: &str,
    progress: FileProgress,
) -> Result<Fetched, EntryError> {
    let path = ctx.cache.commit(&d.part, &sidecar)?;
    let record = IndexRecord::downloaded(&d.sha256, d.size, &sidecar.file_name);
    ctx.cache.index_put(index_key, &record)?;
    progress.finish("downloaded and verified");
    Ok(Fetched {
        path,
        sidecar,
        transferred: d.bytes_transferred,
        cached: false,
    })
}

/// Refuses to start a download that cannot fit: the bytes still missing from the part file
/// must be free on the cache volume (checked before the transfer, so a full volume fails in
/// seconds instead of after gigabytes).
fn check_space(cache: &Cache, key: &str, size: Option<u64>) -> Result<(), EntryError> {
    let Some(size) = size else { return Ok(()) };
    let have = std::fs::metadata(cache.part_path(key))
        .map(|m| m.len())
        .unwrap_or(0);
    let needed = size.saturating_sub(have);
    if let Ok(available) = fs4::available_space(cache.root()) {
        if available < needed {
            return Err(EntryError::DiskFull {
                path: cache.root().to_path_buf(),
                needed,
                available,
            });
        }
    }
    Ok(())
}

async fn fetch_url(
    ctx: &Ctx,
    entry: &ManifestEntry,
    label: &str,
    url: &url::Url,
) -> Result<Fetched, EntryError> {
    let index_key = cache::key_for(&format!("url:{url}"));
    let reuse = |ctx: &Ctx| {
        ctx.cache.index_get(&index_key).and_then(|rec| {
            ctx.cache
                .lookup(&rec.sha256)
                .filter(|_| entry.sha256.as_ref().is_none_or(|p| *p == rec.sha256))
        })
    };
    // URLs are treated as immutable: without a pin, a file fetched from the same URL before is
    // reused (pin `sha256` to detect a changed file).
    if let Some((path, sidecar)) = reuse(ctx) {
        tracing::info!(entry = label, "cache hit (same URL fetched before)");
        return Ok(Fetched::cached(path, sidecar));
    }
    let lock_key = entry.sha256.clone().unwrap_or_else(|| index_key.clone());
    let _lock = ctx.cache.lock(&lock_key, label).await?;
    if let Some((path, sidecar)) = reuse(ctx) {
        return Ok(Fetched::cached(path, sidecar));
    }
    let expect = Expect {
        size: None,
        sha256: entry.sha256.clone(),
        autov3: entry.kind == ModelKind::Lora,
        size_hint: None,
    };
    let resolver = Arc::new(FixedUrl(url.to_string()));
    let (d, progress) = transfer(ctx, label, &lock_key, resolver, &expect).await?;
    let url_name = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .filter(|s| !s.is_empty())
        .map(|s| s.to_string());
    let raw_name = d
        .disposition_name
        .clone()
        .or(url_name)
        .unwrap_or_else(|| "model.safetensors".into());
    if manifest::is_pickle_name(&raw_name) {
        let _ = std::fs::remove_file(&d.part);
        return Err(EntryError::Pickle(manifest::pickle_message(&raw_name)));
    }
    let mut file_name = names::sanitize_file_name(&raw_name);
    if !file_name.to_ascii_lowercase().ends_with(".safetensors") {
        file_name.push_str(".safetensors");
    }
    let sidecar = Sidecar {
        sha256: d.sha256.clone(),
        size: d.size,
        file_name,
        source: format!("url {}", names::redact_url(url)),
        autov3: d.autov3.clone(),
        civitai: None,
        fetched_at: cache::now_unix(),
    };
    commit(ctx, &d, sidecar, &index_key, progress)
}

async fn fetch_hf(
    ctx: &Ctx,
    entry: &ManifestEntry,
    label: &str,
    repo: &str,
    file: &str,
    revision: Option<&str>,
) -> Result<Fetched, EntryError> {
    let identity = format!("hf:{repo}:{}:{file}", revision.unwrap_or("main"));
    let index_key = cache::key_for(&identity);
    let lock_key = entry.sha256.clone().unwrap_or_else(|| index_key.clone());
    let _lock = ctx.cache.lock(&lock_key, label).await?;
    if let Some(rec) = ctx.cache.index_get(&index_key) {
        if entry.sha256.as_ref().is_none_or(|p| *p == rec.sha256) {
            if let Some((path, sidecar)) = ctx.cache.lookup(&rec.sha256) {
                tracing::info!(
                    entry = label,
                    "cache hit (same Hugging Face file fetched before)"
                );
                return Ok(Fetched::cached(path, sidecar));
            }
        }
    }
    let t0 = Instant::now();
    tracing::info!(entry = label, "downloading from Hugging Face");
    let hf_path = hf::fetch_file(repo, file, revision, ctx.cache.root()).await?;
    let head = read_head(&hf_path);
    sniff_safetensors(&head, None)?;
    let progress = ctx.hub.file(&format!("{label} (verifying)"));
    let (sha, autov3, size) = hash_file(
        &hf_path,
        entry.kind == ModelKind::Lora,
        Some(progress.clone()),
    )
    .await?;
    check_pin(entry, &sha)?;
    let file_name = names::sanitize_file_name(file);
    let sidecar = Sidecar {
        sha256: sha.clone(),
        size,
        file_name: file_name.clone(),
        source: format!("hf {repo}/{file}@{}", revision.unwrap_or("main")),
        autov3,
        civitai: None,
        fetched_at: cache::now_unix(),
    };
    let path = ctx.cache.adopt(&hf_path, &sidecar)?;
    ctx.cache
        .index_put(&index_key, &IndexRecord::downloaded(&sha, size, &file_name))?;
    progress.finish("verified");
    tracing::debug!(
        ms = t0.elapsed().as_millis() as u64,
        "hugging face fetch done"
    );
    Ok(Fetched {
        path,
        sidecar,
        transferred: size,
        cached: false,
    })
}

/// A `sha256` pinned in models.toml must match the file's hash.
fn check_pin(entry: &ManifestEntry, sha: &str) -> Result<(), EntryError> {
    match &entry.sha256 {
        Some(pin) if pin != sha => Err(EntryError::HashMismatch {
            expected: pin.clone(),
            actual: sha.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Local files are used in place; their hash is remembered by (path, size, mtime) so a restart
/// does not rehash gigabytes.
async fn fetch_path(
    ctx: &Ctx,
    entry: &ManifestEntry,
    label: &str,
    path: &Path,
) -> Result<Fetched, EntryError> {
    let local = |message: String| EntryError::Local {
        path: path.to_path_buf(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| local(e.to_string()))?;
    if !meta.is_file() {
        return Err(local("not a regular file".into()));
    }
    sniff_safetensors(&read_head(path), Some(meta.len())).map_err(|e| local(e.to_string()))?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos());
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let index_key = cache::key_for(&format!("path:{}", canonical.display()));
    let remembered = ctx
        .cache
        .index_get(&index_key)
        .filter(|r| r.size == meta.len() && r.mtime_ns.is_some() && r.mtime_ns == mtime_ns);
    let (sha, autov3, size) = match remembered {
        Some(r) => (r.sha256, r.autov3, r.size),
        None => {
            let (sha, autov3, size) = hash_file(
                path,
                entry.kind == ModelKind::Lora,
                Some(ctx.hub.file(label)),
            )
            .await?;
            ctx.cache.index_put(
                &index_key,
                &IndexRecord {
                    sha256: sha.clone(),
                    size,
                    mtime_ns,
                    file_name: None,
                    autov3: autov3.clone(),
                },
            )?;
            (sha, autov3, size)
        }
    };
    // A file hashed before as a checkpoint needs its AutoV3 once when used as a LoRA.
    let (sha, autov3, size) = if entry.kind == ModelKind::Lora && autov3.is_none() {
        hash_file(path, true, None).await?
    } else {
        (sha, autov3, size)
    };
    check_pin(entry, &sha)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.safetensors".into());
    Ok(Fetched {
        path: path.to_path_buf(),
        sidecar: Sidecar {
            sha256: sha,
            size,
            file_name,
            source: format!("path {}", path.display()),
            autov3,
            civitai: None,
            fetched_at: cache::now_unix(),
        },
        transferred: 0,
        cached: true,
    })
}
