//! The heartbeat (ping; docs/runpod-protocol.md, *Heartbeat*) and the set of held job ids it
//! reports. The ping runs on
//! its own OS thread with its own tokio runtime, so a handler that blocks the main runtime's
//! threads (CPU-bound work, a stuck lock) cannot delay it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::args::{nonempty, RuntimeArgs, Timings};
use crate::client::{auth_header, user_agent};
use crate::lock;
use crate::result::SDK_COMPAT_VERSION;
use crate::urls::ping_url;

/// Ids of jobs taken but not finished (queued or running): `job_in_progress` and the ping's
/// `job_id` list come from here.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeldJobs(Arc<Mutex<BTreeSet<String>>>);

impl HeldJobs {
    fn lock(&self) -> MutexGuard<'_, BTreeSet<String>> {
        lock(&self.0)
    }

    pub(crate) fn add(&self, id: &str) {
        self.lock().insert(id.to_owned());
    }

    pub(crate) fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    pub(crate) fn snapshot(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }
}

/// Where and how often to ping.
#[derive(Clone)]
pub(crate) struct PingConfig {
    pub template: String,
    pub worker_id: String,
    pub api_key: String,
    pub interval: Duration,
}

impl PingConfig {
    /// The heartbeat settings, when the SDK would start one: API key, pod id and ping URL
    /// all set (docs/runpod-protocol.md, *Heartbeat*).
    pub(crate) fn from_args(args: &RuntimeArgs, timings: &Timings) -> Option<PingConfig> {
        let key = nonempty(&args.runpod_ai_api_key)?;
        let pod = nonempty(&args.pod_id)?;
        let url = nonempty(&args.webhook_ping)?;
        // The SDK divides by 1000 with integer division; a 0 s period would spin, so 1 s is
        // the floor.
        let interval = timings
            .ping_interval
            .unwrap_or_else(|| Duration::from_secs((args.ping_interval_ms / 1000).max(1)));
        Some(PingConfig {
            template: url.to_owned(),
            worker_id: pod.to_owned(),
            api_key: key.to_owned(),
            interval,
        })
    }
}

/// A running heartbeat thread; stopped on drop.
pub(crate) struct Heartbeat {
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    pub(crate) fn start(cfg: PingConfig, held: HeldJobs) -> std::io::Result<Heartbeat> {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let thread = std::thread::Builder::new()
            .name("runpod-heartbeat".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(err) => {
                        tracing::error!("heartbeat runtime could not start: {err}");
                        return;
                    }
                };
                rt.block_on(ping_loop(cfg, held, token));
            })?;
        Ok(Heartbeat {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn ping_loop(cfg: PingConfig, held: HeldJobs, stop: CancellationToken) {
    let mut headers = reqwest::header::HeaderMap::new();
    match auth_header(Some(&cfg.api_key)) {
        Ok(Some(v)) => {
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        Ok(None) => {}
        Err(err) => {
            tracing::error!("heartbeat disabled: {err}");
            return;
        }
    }
    let client = match reqwest::Client::builder()
        .default_headers(headers)
        .user_agent(user_agent())
        .build()
    {
        Ok(c) => c,
        Err(err) => {
            tracing::error!("heartbeat disabled: HTTP client: {err}");
            return;
        }
    };
    tracing::info!(
        interval_ms = cfg.interval.as_millis() as u64,
        "heartbeat started"
    );
    // Fixed cadence measured from the start; a slow ping skips ticks rather than bunching.
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => break,
        }
        let url = ping_url(
            &cfg.template,
            &cfg.worker_id,
            &held.snapshot(),
            SDK_COMPAT_VERSION,
        );
        let sent = tokio::time::timeout(cfg.interval * 2, client.get(&url).send());
        tokio::select! {
            r = sent => match r {
                Ok(Ok(resp)) if !resp.status().is_success() => {
                    tracing::warn!("Ping Request Error: HTTP {}", resp.status());
                }
                Ok(Ok(_)) => tracing::trace!("ping sent"),
                Ok(Err(err)) => tracing::warn!("Ping Request Error: {err}"),
                Err(_) => tracing::warn!("Ping Request Error: timed out"),
            },
            _ = stop.cancelled() => break,
        }
    }
    tracing::debug!("heartbeat stopped");
}
