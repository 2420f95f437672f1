//! URL templates of the worker-facing job API, filled exactly as the SDK fills them
//! (docs/runpod-protocol.md, *URL templates*): plain string replacement, then
//! `&param=value` appended blindly.

/// The job API URLs of one worker, with the worker id already substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUrls {
    /// `RUNPOD_WEBHOOK_GET_JOB` with `$ID` → worker id.
    pub take: String,
    /// `take` with `/job-take/` → `/job-stop/`; `None` when the template lacks `/job-take/`.
    pub stop: Option<String>,
    /// `RUNPOD_WEBHOOK_POST_OUTPUT` with `$RUNPOD_POD_ID` → worker id (`$ID` left for the job).
    pub done: String,
    /// `RUNPOD_WEBHOOK_POST_STREAM` likewise.
    pub stream: Option<String>,
}

impl JobUrls {
    pub fn new(
        worker_id: &str,
        get_job: &str,
        post_output: &str,
        post_stream: Option<&str>,
    ) -> Self {
        let take = get_job.replace("$ID", worker_id);
        let stop = take
            .contains("/job-take/")
            .then(|| take.replace("/job-take/", "/job-stop/"));
        JobUrls {
            take,
            stop,
            done: post_output.replace("$RUNPOD_POD_ID", worker_id),
            stream: post_stream.map(|s| s.replace("$RUNPOD_POD_ID", worker_id)),
        }
    }

    /// job-take (one job) or job-take-batch (`batch_size` > 1).
    pub fn take_url(&self, batch_size: usize, job_in_progress: bool) -> String {
        let flag = u8::from(job_in_progress);
        if batch_size > 1 {
            format!(
                "{}&batch_size={batch_size}&job_in_progress={flag}",
                self.take.replace("/job-take/", "/job-take-batch/")
            )
        } else {
            format!("{}&job_in_progress={flag}", self.take)
        }
    }

    /// job-done for a job; `is_stream` is true for the final post of a streaming handler.
    pub fn done_url(&self, job_id: &str, is_stream: bool) -> String {
        format!("{}&isStream={is_stream}", self.done.replace("$ID", job_id))
    }

    /// job-stream for a job; the SDK always sends `isStream=false` here.
    pub fn stream_url(&self, job_id: &str) -> Option<String> {
        self.stream
            .as_ref()
            .map(|s| format!("{}&isStream=false", s.replace("$ID", job_id)))
    }
}

/// The heartbeat URL: `$RUNPOD_POD_ID` substituted, then `job_id` (comma-joined, omitted
/// when empty) and `runpod_version` merged into the query like Python `requests` does.
pub fn ping_url(template: &str, worker_id: &str, job_ids: &[String], version: &str) -> String {
    let base = template.replace("$RUNPOD_POD_ID", worker_id);
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if !job_ids.is_empty() {
        query.append_pair("job_id", &job_ids.join(","));
    }
    query.append_pair("runpod_version", version);
    let query = query.finish();
    match base.split_once('?') {
        Some((_, existing)) if !existing.is_empty() => format!("{base}&{query}"),
        Some(_) => format!("{base}{query}"),
        None => format!("{base}?{query}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPU: &str = "?gpu=NVIDIA+RTX+A5000";

    fn urls() -> JobUrls {
        JobUrls::new(
            "abc123",
            &format!("https://api.runpod.ai/v2/EP/job-take/$ID{GPU}"),
            &format!("https://api.runpod.ai/v2/EP/job-done/$RUNPOD_POD_ID/$ID{GPU}"),
            Some(&format!(
                "https://api.runpod.ai/v2/EP/job-stream/$RUNPOD_POD_ID/$ID{GPU}"
            )),
        )
    }

    #[test]
    fn urls_as_the_sdk_builds_them() {
        let u = urls();
        assert_eq!(
            u.take_url(1, false),
            "https://api.runpod.ai/v2/EP/job-take/abc123?gpu=NVIDIA+RTX+A5000&job_in_progress=0"
        );
        assert_eq!(
            u.take_url(3, true),
            "https://api.runpod.ai/v2/EP/job-take-batch/abc123?gpu=NVIDIA+RTX+A5000&batch_size=3&job_in_progress=1"
        );
        assert_eq!(
            u.stop.as_deref(),
            Some("https://api.runpod.ai/v2/EP/job-stop/abc123?gpu=NVIDIA+RTX+A5000")
        );
        assert_eq!(
            u.done_url("J1", false),
            "https://api.runpod.ai/v2/EP/job-done/abc123/J1?gpu=NVIDIA+RTX+A5000&isStream=false"
        );
        assert_eq!(
            u.done_url("J1", true),
            "https://api.runpod.ai/v2/EP/job-done/abc123/J1?gpu=NVIDIA+RTX+A5000&isStream=true"
        );
        assert_eq!(
            u.stream_url("J1").as_deref(),
            Some("https://api.runpod.ai/v2/EP/job-stream/abc123/J1?gpu=NVIDIA+RTX+A5000&isStream=false")
        );
        assert_eq!(
            ping_url(
                "https://api.runpod.ai/v2/EP/ping/$RUNPOD_POD_ID",
                "abc123",
                &["J1".into(), "J2".into()],
                "1.12.0"
            ),
            "https://api.runpod.ai/v2/EP/ping/abc123?job_id=J1%2CJ2&runpod_version=1.12.0"
        );
    }

    #[test]
    fn ping_query_merges_and_omits_empty_job_ids() {
        assert_eq!(
            ping_url("http://h/ping/$RUNPOD_POD_ID?gpu=x", "w", &[], "1.12.0"),
            "http://h/ping/w?gpu=x&runpod_version=1.12.0"
        );
        assert_eq!(
            ping_url("http://h/ping/w?", "w", &["a".into()], "1.12.0"),
            "http://h/ping/w?job_id=a&runpod_version=1.12.0"
        );
    }

    #[test]
    fn job_stop_disabled_without_job_take_segment() {
        let u = JobUrls::new("w", "http://h/take/$ID?x=1", "http://h/done/$ID?", None);
        assert_eq!(u.stop, None);
        assert_eq!(u.take, "http://h/take/w?x=1");
        assert_eq!(u.stream_url("J"), None);
        // Only `$ID` is substituted in the take template (the SDK's simulator relies on it).
        let u = JobUrls::new(
            "w",
            "http://h/job-take/$RUNPOD_POD_ID?",
            "http://h/done",
            None,
        );
        assert_eq!(u.take, "http://h/job-take/$RUNPOD_POD_ID?");
    }
}
