//! The five stages of a job, in the order [`SdxlHandler`]'s `Handler::handle` runs them:
//! parse → prepare → generate → encode → deliver. Each is a public method, so a handler with
//! a different step (another delivery, say) can call the other four as they are.

use std::time::Instant;

use image::RgbImage;
use serde_json::{json, Value};

use super::dialects::{self, RequestMeta, ResponseFormat, Routed};
use super::request::{self, GenerateInput, ImageSource};
use super::{SdxlHandler, MAX_INLINE_RESULT_BYTES, VERSION};
use crate::fetch::ModelKind;
use crate::image::OutputFormat;
use crate::pipeline::{GenerateOutput, GenerateRequest, HiresFix, InitImage, Timings, Variation};
use crate::runpod::{HandlerOutput, JobContext, JobError};

/// A job that passed validation: the request and the seed of its first image.
#[derive(Debug, Clone)]
pub struct ParsedJob {
    pub input: GenerateInput,
    /// The request's seed, or one drawn for it (always returned to the client).
    pub seed: u64,
    /// The client dialect it came in, the response shape it gets and what was left out.
    pub meta: RequestMeta,
}

/// What the parse stage makes of a job: a generation, or an answer that needs none (the
/// A1111 envelope's GET listings).
#[derive(Debug, Clone)]
pub enum Route {
    Generate(Box<ParsedJob>),
    Answer(Value),
}

/// A job's images as files, with the infotext written into each.
#[derive(Debug, Clone)]
pub struct EncodedImages {
    pub files: Vec<Vec<u8>>,
    /// One A1111 infotext per image, as embedded in its file.
    pub infotexts: Vec<String>,
    pub format: OutputFormat,
    /// Wall time of rendering the infotexts and encoding the files.
    pub encode_s: f64,
}

impl SdxlHandler {
    /// Stage 1: reads the job's `input` in whichever client dialect it came
    /// ([`dialects`]), validates the canonical request (every schema violation at once, then
    /// the model names, which only the loaded handler knows) and fixes the seed. Listing
    /// requests are answered here.
    pub fn route(&self, input: &Value) -> Result<Route, JobError> {
        let invalid = |e: request::ValidationErrors| JobError::invalid_input(e.0.join("; "));
        let translated =
            match dialects::route(input, &self.dialects, &self.catalog).map_err(invalid)? {
                Routed::Answer(v) => return Ok(Route::Answer(v)),
                Routed::Generate(t) => t,
            };
        let input = request::parse(&translated.input, &self.defaults).map_err(|e| {
            invalid(request::ValidationErrors(dialects::client_errors(
                translated.meta.dialect,
                e.0,
            )))
        })?;
        self.check_names(&input)?;
        // torch's generator keeps the low 32 bits of a seed; drawing in that range keeps
        // every returned seed reproducible in A1111/ComfyUI as written.
        let seed = input
            .seed
            .unwrap_or_else(|| u64::from(rand::random::<u32>()));
        Ok(Route::Generate(Box::new(ParsedJob {
            input,
            seed,
            meta: translated.meta,
        })))
    }

    /// Stage 1 for a job that must generate: [`route`](Self::route), with listing requests
    /// refused.
    pub fn parse(&self, input: &Value) -> Result<ParsedJob, JobError> {
        match self.route(input)? {
            Route::Generate(job) => Ok(*job),
            Route::Answer(_) => Err(JobError::invalid_input(
                "this request asks for a listing, not an image",
            )),
        }
    }

    /// Stage 2: the engine request for a parsed job. Fetches and decodes the img2img input
    /// image, if any (the only stage before the engine that may wait on the network).
    pub async fn prepare(&self, job: &ParsedJob) -> Result<GenerateRequest, JobError> {
        let input = &job.input;
        let init_image = match &input.img2img {
            None => None,
            Some(i) => {
                let (inline, url) = match &i.source {
                    ImageSource::Inline(data) => (Some(data.as_str()), None),
                    ImageSource::Url(url) => (None, Some(url.as_str())),
                };
                let image = crate::image::input::load_init_image(inline, url, &self.image_options)
                    .await
                    .map_err(|e| JobError::from_error(e.error_type(), e))?;
                Some(InitImage {
                    image,
                    strength: i.strength as f32,
                })
            }
        };
        Ok(GenerateRequest {
            prompt: input.prompt.clone(),
            negative_prompt: input.negative_prompt.clone(),
            width: input.width,
            height: input.height,
            steps: input.steps,
            guidance: input.guidance_scale as f32,
            sampler: input.sampler,
            schedule: input.schedule,
            seed: job.seed,
            num_images: input.num_images,
            loras: input
                .loras
                .iter()
                .map(|l| (l.name.clone(), l.weight, l.clip_weight))
                .collect(),
            clip_skip: input.clip_skip.unwrap_or(2),
            emphasis: input.prompt_weighting,
            guidance_rescale: input.guidance_rescale as f32,
            noise: input.noise,
            sde_noise: input.sde_noise,
            variation: input.subseed.map(|(subseed, strength)| Variation {
                subseed,
                strength: strength as f32,
            }),
            init_image,
            hires: input.hires.map(|h| HiresFix {
                scale: h.scale as f32,
                steps: h.steps,
                denoise: h.denoise as f32,
            }),
        })
    }

    /// Stage 3: runs the request on the engine thread, reporting each sampler step as job
    /// progress; cancelling the job stops it at the next step.
    pub async fn generate(
        &self,
        request: GenerateRequest,
        ctx: &JobContext,
    ) -> Result<GenerateOutput, JobError> {
        let progress_ctx = ctx.clone();
        self.engine
            .generate(
                request,
                move |p| progress_ctx.progress(json!({"step": p.step, "steps": p.steps})),
                ctx.cancellation_token().clone(),
            )
            .await
            .map_err(|e| JobError::from_error(e.error_type(), e))
    }

    /// Stage 4: encodes the images in the requested format, each with its infotext (image
    /// `n` gets `seeds[n]`). Encoding runs on a blocking thread.
    pub async fn encode(
        &self,
        job: &ParsedJob,
        images: Vec<RgbImage>,
        seeds: &[u64],
    ) -> Result<EncodedImages, JobError> {
        let started = Instant::now();
        let infotexts: Vec<String> = seeds
            .iter()
            .map(|s| self.infotext(&job.input, *s).render())
            .collect();
        let format = job.input.output_format;
        let quality = job.input.output_quality;
        let texts = infotexts.clone();
        let files = tokio::task::spawn_blocking(move || {
            images
                .iter()
                .zip(&texts)
                .map(|(img, text)| crate::image::encode(img, format, quality, text))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| JobError::new("internal_error", format!("image encoding thread: {e}")))?
        .map_err(|e| JobError::from_error("encode_error", e))?;
        Ok(EncodedImages {
            files,
            infotexts,
            format,
            encode_s: started.elapsed().as_secs_f64(),
        })
    }

    /// Stage 5: uploads the files to object storage (when configured) or inlines them as
    /// data URIs, and builds the result body. `started` is when the job began (`total_s`).
    pub async fn deliver(
        &self,
        job_id: &str,
        job: &ParsedJob,
        seeds: &[u64],
        timings: &Timings,
        encoded: EncodedImages,
        started: Instant,
    ) -> Result<HandlerOutput, JobError> {
        if job.meta.response == ResponseFormat::A1111 {
            return self
                .a1111_body(job, seeds, &encoded)
                .map(HandlerOutput::new);
        }
        let upload_started = Instant::now();
        let format = encoded.format;
        let uris: Vec<String> = match &self.bucket {
            Some(bucket) => {
                let uploads = encoded.files.into_iter().enumerate().map(|(n, bytes)| {
                    let key = crate::storage::image_key(job_id, n, format.extension());
                    async move { bucket.upload(&key, bytes, format.mime()).await }
                });
                futures::future::try_join_all(uploads)
                    .await
                    .map_err(|e| JobError::from_error("upload_error", e))?
            }
            None => inline_uris(&encoded.files, format)?,
        };
        let upload_s = upload_started.elapsed().as_secs_f64();
        let t = timings;
        let mut value = json!({
            "images": uris,
            "image_url": uris.first(),
            "seed": job.seed,
            "seeds": seeds,
            "parameters": encoded.infotexts.first(),
            "info": {
                "request": job.input,
                "checkpoint": {
                    "name": self.checkpoint.name,
                    "file": self.checkpoint.file_name,
                    "sha256": self.checkpoint.sha256,
                    "autov2": self.checkpoint.autov2,
                    "civitai": self.checkpoint.civitai,
                    "architecture": self.engine.info().architecture,
                },
                "vae": self.models.vae().map(|v| json!({"name": v.name, "sha256": v.sha256})),
                "device": self.engine.info().device,
                "dtype": self.engine.info().dtype,
                "timings": {
                    "encode_prompt_s": t.encode_s,
                    "denoise_s": t.denoise_s,
                    "unet_steps": t.unet_steps,
                    "vae_decode_s": t.decode_s,
                    "vae_f32_retry": t.vae_f32_retry,
                    "image_encode_s": encoded.encode_s,
                    "upload_s": upload_s,
                    "total_s": started.elapsed().as_secs_f64(),
                },
                "version": VERSION,
            }
        });
        if job.meta.dialect != dialects::Dialect::Native
            || !job.meta.ignored_fields.is_empty()
            || !job.meta.notes.is_empty()
        {
            value["info"]["dialect"] = json!(job.meta.dialect);
            value["info"]["ignored_fields"] = json!(job.meta.ignored_fields);
            value["info"]["notes"] = json!(job.meta.notes);
        }
        Ok(HandlerOutput::new(value))
    }

    /// Validates everything the schema cannot know alone (model names), all at once.
    fn check_names(&self, input: &GenerateInput) -> Result<(), JobError> {
        let mut errors = Vec::new();
        if let Some(name) = &input.checkpoint {
            if !name.eq_ignore_ascii_case(&self.checkpoint.name) {
                errors.push(format!(
                    "field `checkpoint`: {name:?} is not loaded (allowed: {:?})",
                    self.checkpoint.name
                ));
            }
        }
        for (i, l) in input.loras.iter().enumerate() {
            if self.models.find(ModelKind::Lora, &l.name).is_none() {
                let available: Vec<&str> = self.models.loras().map(|m| m.name.as_str()).collect();
                errors.push(format!(
                    "field `loras[{i}].name`: {:?} is not in models.toml (allowed: {available:?})",
                    l.name
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(JobError::invalid_input(errors.join("; ")))
        }
    }
}

/// The files as base64 data URIs, refused when together they pass RunPod's result limit
/// ([`MAX_INLINE_RESULT_BYTES`]), which would lose the result rather than deliver it.
fn inline_uris(files: &[Vec<u8>], format: OutputFormat) -> Result<Vec<String>, JobError> {
    let uris: Vec<String> = files
        .iter()
        .map(|b| crate::image::data_uri(b, format))
        .collect();
    let inline_bytes: usize = uris.iter().map(String::len).sum();
    if inline_bytes > MAX_INLINE_RESULT_BYTES {
        return Err(JobError::new(
            "result_too_large",
            format!(
                "the images are {inline_bytes} bytes as base64, over RunPod's ~20 MB \
                 result limit: ask for fewer images, use output_format jpeg, or set \
                 BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID and \
                 BUCKET_SECRET_ACCESS_KEY to upload images to object storage"
            ),
        ));
    }
    Ok(uris)
}
