//! Request and response bodies of the HTTP API, with the examples the OpenAPI spec shows.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::pipeline::GenerateInput;
use crate::reward::SelectionInput;

/// A text-to-image request. Absent fields take the server's defaults; unknown fields are rejected.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "prompt": "two blue stars on a white background",
    "n": 1,
    "seed": 42,
    "best_of": 2
}))]
pub struct GenerateRequest {
    /// What to draw. Must not be blank; at most `--max-prompt-bytes` bytes; cut to the text encoder's 77
    /// tokens with a warning.
    #[schema(pattern = r"\S", min_length = 1, max_length = 4096)]
    pub prompt: String,
    /// What to steer away from (classifier-free guidance's unconditional side). Default: empty.
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub negative_prompt: Option<String>,
    /// Images to generate for the prompt. Default 1; at most the server's `--max-images`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 8)]
    pub n: Option<i64>,
    /// Denoising steps, at most the server's `--max-steps`. Default: the server's `--default-steps`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 150)]
    pub steps: Option<i64>,
    /// Classifier-free guidance scale, 0 to 100; 1 or less turns guidance off. Default 7.5.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100)]
    pub guidance_scale: Option<f64>,
    /// The sampler. Default: the model's own scheduler.
    #[serde(default)]
    #[schema(value_type = Option<SchedulerName>)]
    pub scheduler: Option<String>,
    /// Seed of image 0; image i uses seed + i. Default: random, and returned in the response.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Pixels; a multiple of the model's size multiple, at most `--max-image-size`. Default: the model's
    /// native size.
    #[serde(default)]
    #[schema(minimum = 8, maximum = 1024, multiple_of = 8)]
    pub width: Option<i64>,
    /// Pixels; a multiple of the model's size multiple, at most `--max-image-size`. Default: the model's
    /// native size.
    #[serde(default)]
    #[schema(minimum = 8, maximum = 1024, multiple_of = 8)]
    pub height: Option<i64>,
    /// DDIM's eta in [0, 1] (0 is deterministic DDIM). Ignored by other schedulers. Default 0.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1)]
    pub eta: Option<f64>,
    /// Guidance rescale in [0, 1], as diffusers' `guidance_rescale` ("Common Diffusion Noise Schedules and Sample
    /// Steps are Flawed", 0.7 there): after classifier-free guidance, each image's guided prediction is scaled to
    /// the standard deviation of its text-conditioned prediction, and this much of that is mixed in. Counters the
    /// over-exposure of high guidance scales, notably on zero-SNR models. Only with guidance (`guidance_scale` > 1).
    /// Default 0: off.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1)]
    pub guidance_rescale: Option<f64>,
    /// img2img: the image to start from, a base64 PNG or JPEG (at most `--max-image-pixels` pixels). It is
    /// resized (Lanczos) to `width` × `height`. Those default to its own size rounded down to the model's size
    /// multiple (at least one multiple, and scaled down to fit the largest size allowed). The VAE encodes it,
    /// and it is noised to the level of the first step that runs.
    #[serde(default)]
    #[schema(value_type = Option<ImageBase64>)]
    pub init_image: Option<String>,
    /// img2img only (with `init_image`): how much of the starting image is noised away, in (0, 1]. The first
    /// `steps − floor(steps × strength)` steps are skipped, but at least one step runs. Default 0.8, as
    /// diffusers.
    #[serde(default)]
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub strength: Option<f64>,
    /// SDXL's refiner only (a model whose pipeline is `StableDiffusionXLImg2ImgPipeline` with
    /// `requires_aesthetics_score`): the aesthetic score, 0 to 10, the refined image is conditioned on. Default
    /// 6.0, as diffusers. Other models ignore it, and the answer's `warnings` say so.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 10)]
    pub aesthetic_score: Option<f64>,
    /// SDXL's refiner only: the aesthetic score of classifier-free guidance's negative rows, 0 to 10. Default
    /// 2.5, as diffusers.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 10)]
    pub negative_aesthetic_score: Option<f64>,
    /// Rejection sampling: generate `best_of` candidates for each of the `n` images, score them all with the
    /// reward model and return the `n` best. Default 1; at most the server's `--max-best-of`, and
    /// `best_of × n` at most `--max-candidates`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 16)]
    pub best_of: Option<i64>,
    /// Keep generating until `n` candidates score at least this much, or `max_candidates` have been tried;
    /// the `n` best come back either way. An alternative to `best_of`.
    #[serde(default)]
    pub min_reward: Option<f64>,
    /// The candidate budget for `min_reward` (only with it), at least `n`. Default 4 × n; at most
    /// `--max-candidates`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 128)]
    pub max_candidates: Option<i64>,
    /// Which loaded reward model scores the candidates. Default: the first `--reward-model`.
    #[serde(default)]
    #[schema(value_type = Option<RewardModelName>)]
    pub reward_model: Option<String>,
    /// Also return every candidate's score, in seed order. Default false.
    #[serde(default)]
    pub return_candidate_scores: Option<bool>,
    /// Which model version generates (`GET /models`). Default: the active version.
    #[serde(default)]
    #[schema(value_type = Option<ModelVersion>)]
    pub model: Option<String>,
}

/// The samplers `scheduler` names (the document's enum; `SchedulerKind::from_name` also takes aliases).
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum SchedulerName {
    #[schema(rename = "ddim")]
    Ddim,
    #[schema(rename = "euler")]
    Euler,
    #[schema(rename = "euler_a")]
    EulerA,
    #[schema(rename = "dpm++2m")]
    DpmPlusPlus2M,
    #[schema(rename = "pndm")]
    Pndm,
    #[schema(rename = "lcm")]
    Lcm,
}

/// A rating's label (`storage::Label`).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum LabelName {
    Good,
    Bad,
    Skip,
}

impl From<GenerateRequest> for GenerateInput {
    fn from(request: GenerateRequest) -> Self {
        GenerateInput {
            prompt: request.prompt,
            negative_prompt: request.negative_prompt,
            n: request.n,
            steps: request.steps,
            guidance_scale: request.guidance_scale,
            scheduler: request.scheduler,
            seed: request.seed,
            width: request.width,
            height: request.height,
            eta: request.eta,
            guidance_rescale: request.guidance_rescale,
            // Decoded by the route (`run_generate`), which knows the pixel limit.
            init_image: None,
            strength: request.strength,
            aesthetic_score: request.aesthetic_score,
            negative_aesthetic_score: request.negative_aesthetic_score,
        }
    }
}

impl GenerateRequest {
    pub fn selection_input(&self) -> SelectionInput {
        SelectionInput {
            best_of: self.best_of,
            min_reward: self.min_reward,
            max_candidates: self.max_candidates,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImageOut {
    pub index: usize,
    /// The seed this image's noise came from.
    #[schema(example = 42)]
    pub seed: u64,
    /// The PNG file, base64-encoded.
    #[schema(example = "iVBORw0KGgoAAAANSUhEUgAA...")]
    pub png_base64: String,
    /// The reward model's score of this image for the prompt; null when no reward model is loaded.
    #[schema(example = 0.93)]
    pub reward: Option<f32>,
    /// Pass it to `/score` or `/rerank` as `image_ids` instead of the bytes; null when storing is off.
    #[schema(example = "img_5d41402abc4b2a76b9719d911017c592")]
    pub image_id: Option<String>,
}

/// How the reward model chose the returned images.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SelectionOut {
    pub reward_model: String,
    /// `best_of` as applied (1 when the request asked for none), or null with `min_reward`.
    pub best_of: Option<usize>,
    pub min_reward: Option<f32>,
    /// Candidates generated and scored.
    pub candidates: usize,
    /// With `min_reward`: candidates that reached it. With `best_of`: the images returned.
    pub accepted: usize,
    /// Every candidate's score in seed order, when `return_candidate_scores` was true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate_scores: Option<Vec<f32>>,
}

/// Milliseconds spent in each stage of this request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Timings {
    pub queue_ms: f64,
    pub text_encode_ms: f64,
    pub denoise_ms: f64,
    /// VAE decode.
    pub decode_ms: f64,
    pub png_encode_ms: f64,
    /// Reward scoring of the candidates (preprocessing and the reward model's ONNX calls).
    pub score_ms: f64,
    /// Time inside ONNX Runtime `run` calls of the generation pipeline, all stages together.
    pub inference_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "gen-4f9c2a7e",
    "model": "shapes-sd",
    "images": [{"index": 0, "seed": 45, "png_base64": "iVBORw0KGgo...", "reward": 0.93,
                "image_id": "img_5d41402abc4b2a76b9719d911017c592"}],
    "selection": {"reward_model": "shapes-reward", "best_of": 8, "min_reward": null, "candidates": 8,
                  "accepted": 1},
    "timings": {"queue_ms": 0.1, "text_encode_ms": 3.2, "denoise_ms": 520.5, "decode_ms": 18.1,
                "png_encode_ms": 0.4, "score_ms": 4.2, "inference_ms": 538.9, "total_ms": 546.6},
    "warnings": []
}))]
pub struct GenerateResponse {
    pub id: String,
    /// The model version that generated the images: while a rollout is under way, replicas may serve different
    /// versions.
    pub model: String,
    /// Best first when a reward model chose them (`best_of` above 1, or `min_reward`); in seed order otherwise.
    pub images: Vec<ImageOut>,
    /// Null when no reward model is loaded.
    pub selection: Option<SelectionOut>,
    pub timings: Timings,
    /// Things the caller should know, e.g. that the prompt was cut to 77 tokens.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"status": "ok", "ready": true, "model": "shapes-sd", "device": "cpu",
                         "execution_provider": "CPUExecutionProvider", "version": "0.1.0"}))]
pub struct HealthResponse {
    /// Always `ok` while the process serves.
    pub status: String,
    /// Whether the models are loaded and warmed up.
    pub ready: bool,
    pub model: String,
    /// The device asked for: `cpu`, `cuda:N` or `auto`.
    pub device: String,
    /// The execution provider that runs the sessions; null until they are loaded.
    pub execution_provider: Option<String>,
    pub version: String,
}

/// One prompt for every image, or one prompt per image.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged, expecting = "a prompt (string), or a list of prompts with one per image")]
pub enum Prompts {
    One(String),
    Each(Vec<String>),
}

/// The longest prompt the document states: the default `--max-prompt-bytes` (a server states its own).
pub const MAX_PROMPT_LENGTH: usize = 4096;

/// A prompt's schema: not blank, at most `--max-prompt-bytes`.
fn prompt_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some(r"\S"))
        .min_length(Some(1))
        .max_length(Some(MAX_PROMPT_LENGTH))
        .build()
}

impl utoipa::PartialSchema for Prompts {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::{ArrayBuilder, OneOfBuilder};
        OneOfBuilder::new()
            .description(Some("One prompt for every image, or a list with one prompt per image."))
            .item(prompt_schema())
            .item(
                ArrayBuilder::new()
                    .items(prompt_schema())
                    .min_items(Some(1))
                    .max_items(Some(64)),
            )
            .into()
    }
}

impl ToSchema for Prompts {}

/// Fields of type `u64`: the document says `format: uint64` and the full range, where utoipa says `int64`.
pub const U64_FIELDS: &[(&str, &str)] = &[
    ("GenerateRequest", "seed"),
    ("FineTuneRequest", "seed"),
    ("FineTuneRequest", "eval_seed"),
    ("PromptGenerator", "seed"),
];

/// The `allOf` a schema's fields keep together, which its field attributes cannot say: `GenerateRequest`'s
/// `max_candidates` only with `min_reward`, and `best_of` at most 1 with `min_reward` (as
/// `reward::best_of::validate_selection` checks); `FeedbackRequest`'s `image_id` alone, or `image` with
/// `prompt`; `images` or `image_ids`, one of them. Written into the document by `openapi::spec`.
pub fn field_rules() -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::json;
    let present = |field: &str, kind: &str| json!({"required": [field], "properties": {field: {"type": kind}}});
    let absent = |field: &str| json!({"properties": {field: {"type": "null"}}});
    // Images are sent or named by id, never both.
    let images_or_ids = json!([{"oneOf": [
        {"allOf": [present("images", "array"), absent("image_ids")]},
        {"allOf": [present("image_ids", "array"), absent("images")]}
    ]}]);
    let form_images_or_ids = json!([{"oneOf": [
        {"required": ["image"], "not": {"required": ["image_id"]}},
        {"required": ["image_id"], "not": {"required": ["image"]}}
    ]}]);
    vec![
        (
            "GenerateRequest",
            json!([
                {"if": present("max_candidates", "integer"), "then": present("min_reward", "number")},
                {"if": present("strength", "number"), "then": present("init_image", "string")},
                {"if": present("min_reward", "number"),
                 "then": {"properties": {"best_of": {"oneOf": [{"type": "null"}, {"const": 1}]}}}}
            ]),
        ),
        (
            "FeedbackRequest",
            json!([{"oneOf": [
                {"allOf": [present("image_id", "string"), absent("image"), absent("prompt")]},
                {"allOf": [present("image", "string"), present("prompt", "string"), absent("image_id")]}
            ]}]),
        ),
        ("ScoreRequest", images_or_ids.clone()),
        ("RerankRequest", images_or_ids),
        ("ScoreForm", form_images_or_ids.clone()),
        ("RerankForm", form_images_or_ids),
    ]
    .into_iter()
    .chain(crate::jobs::spec::schema_rules())
    .collect()
}

/// Images to score: base64 PNG or JPEG (`data:` URLs too), or ids of images this server generated.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"prompt": "two blue stars on a white background", "images": [FEEDBACK_EXAMPLE_PNG]}))]
pub struct ScoreRequest {
    pub prompt: Prompts,
    /// Base64 PNG or JPEG files, 1 to `--max-score-images`. Send these or `image_ids`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<ImageBase64>>, min_items = 1, max_items = 64)]
    pub images: Option<Vec<String>>,
    /// `image_id`s from `/generate` responses, 1 to `--max-score-images`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<ImageId>>, min_items = 1, max_items = 64)]
    pub image_ids: Option<Vec<String>>,
    /// A loaded reward model's name. Default: the first `--reward-model`.
    #[serde(default)]
    #[schema(value_type = Option<RewardModelName>)]
    pub model: Option<String>,
}

/// Milliseconds spent on a scoring request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScoreTimings {
    /// Base64 and image decoding, resizing and normalisation.
    pub decode_ms: f64,
    /// Waiting for the scorer thread.
    pub queue_ms: f64,
    /// The reward model's ONNX calls that carried these images.
    pub score_ms: f64,
    pub total_ms: f64,
    /// Images in each ONNX call that carried these images; above the request's count when other requests
    /// shared the call.
    pub batch_sizes: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"scores": [0.91, 0.07], "model": "shapes-reward",
    "timings": {"decode_ms": 0.4, "queue_ms": 0.1, "score_ms": 2.3, "total_ms": 3.1, "batch_sizes": [2]}}))]
pub struct ScoreResponse {
    /// One score per image, in request order.
    pub scores: Vec<f32>,
    pub model: String,
    pub timings: ScoreTimings,
}

/// The id of an image this server generated and still keeps (`image_id` in `/generate` answers).
#[derive(ToSchema)]
#[schema(value_type = String, format = "image-id")]
#[allow(dead_code)]
pub struct ImageId(String);

/// A model version's id (`GET /models`, kind `diffusion`).
#[derive(ToSchema)]
#[schema(value_type = String, format = "model-version")]
#[allow(dead_code)]
pub struct ModelVersion(String);

/// A loaded reward model's name (the first `--reward-model` is the default).
#[derive(ToSchema)]
#[schema(value_type = String, format = "reward-model")]
#[allow(dead_code)]
pub struct RewardModelName(String);

/// The id of a stored rating (`id` in `POST /feedback` answers).
#[derive(ToSchema)]
#[schema(value_type = String, format = "rating-id")]
#[allow(dead_code)]
pub struct RatingId(String);

/// A PNG or JPEG file as base64, or as a `data:image/png;base64,...` URL.
#[derive(ToSchema)]
#[schema(value_type = String, format = "image-base64")]
#[allow(dead_code)]
pub struct ImageBase64(String);

/// A PNG or JPEG file, sent as a form part.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct ImageFile(Vec<u8>);

/// `POST /score` as `multipart/form-data`: the image files themselves, no base64. The document's description
/// of the form that `scoring::read_multipart` reads.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ScoreForm {
    /// The prompt of every image (the form may also repeat `prompt`, once per image, in order).
    #[schema(pattern = r"\S", min_length = 1, max_length = 4096)]
    pub prompt: String,
    /// PNG or JPEG files, 1 to `--max-score-images` (`image`, `images` and `file` are the same field).
    #[serde(default)]
    #[schema(value_type = Vec<ImageFile>, min_items = 1, max_items = 64)]
    pub image: Vec<Vec<u8>>,
    /// Or ids from `/generate` responses.
    #[serde(default)]
    #[schema(value_type = Vec<ImageId>, min_items = 1, max_items = 64)]
    pub image_id: Vec<String>,
    #[serde(default)]
    #[schema(value_type = RewardModelName)]
    pub model: String,
}

/// `POST /rerank` as `multipart/form-data`: the image files themselves, no base64.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct RerankForm {
    #[schema(pattern = r"\S", min_length = 1, max_length = 4096)]
    pub prompt: String,
    /// PNG or JPEG files, 1 to `--max-score-images` (`image`, `images` and `file` are the same field).
    #[serde(default)]
    #[schema(value_type = Vec<ImageFile>, min_items = 1, max_items = 64)]
    pub image: Vec<Vec<u8>>,
    /// Or ids from `/generate` responses.
    #[serde(default)]
    #[schema(value_type = Vec<ImageId>, min_items = 1, max_items = 64)]
    pub image_id: Vec<String>,
    /// Return only the best `top_k`. Default: all.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub top_k: i64,
    /// Include each image (base64) in the answer. Default false.
    #[serde(default)]
    pub return_images: bool,
    #[serde(default)]
    #[schema(value_type = RewardModelName)]
    pub model: String,
}

/// Rank images for one prompt, best first (the shape of text-embeddings-inference's `/rerank`).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"prompt": "three red circles", "images": [FEEDBACK_EXAMPLE_PNG], "top_k": 1}))]
pub struct RerankRequest {
    #[schema(pattern = r"\S", min_length = 1, max_length = 4096)]
    pub prompt: String,
    /// Base64 PNG or JPEG files, 1 to `--max-score-images`. Send these or `image_ids`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<ImageBase64>>, min_items = 1, max_items = 64)]
    pub images: Option<Vec<String>>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<ImageId>>, min_items = 1, max_items = 64)]
    pub image_ids: Option<Vec<String>>,
    /// Return only the best `top_k`. Default: all.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub top_k: Option<i64>,
    /// Include each image (base64) in the answer. Default false.
    #[serde(default)]
    pub return_images: Option<bool>,
    #[serde(default)]
    #[schema(value_type = Option<RewardModelName>)]
    pub model: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RerankResult {
    /// The image's position in the request.
    pub index: usize,
    pub score: f32,
    /// The image as sent (base64), when `return_images` was true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// OpenAI's `POST /v1/images/generations` body. Only `b64_json` answers are supported.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"prompt": "two blue stars on a white background", "n": 1,
                         "response_format": "b64_json", "best_of": 2}))]
pub struct OpenAiImageRequest {
    #[schema(pattern = r"\S", min_length = 1, max_length = 4096)]
    pub prompt: String,
    /// A model version (`GET /models`); an unknown one gets a 400 naming `model`. Default: the active version.
    #[serde(default)]
    #[schema(value_type = Option<ModelVersion>)]
    pub model: Option<String>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 8)]
    pub n: Option<i64>,
    /// `WIDTHxHEIGHT`, e.g. `64x64`, each as `width` and `height` of `/generate`, or `auto`. Default: the
    /// model's native size.
    #[serde(default)]
    pub size: Option<String>,
    /// Only `b64_json` (the default here).
    #[serde(default)]
    #[schema(value_type = Option<ResponseFormat>)]
    pub response_format: Option<String>,
    /// Accepted and logged, as OpenAI does for abuse monitoring.
    #[serde(default)]
    pub user: Option<String>,
    /// This server's extension: rejection sampling with the reward model, as in `/generate`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 16)]
    pub best_of: Option<i64>,
}

/// OpenAI's `POST /v1/images/edits` form (`client.images.edit`): img2img from the `image` file. The
/// document's description of what `openai::openai_edits` reads; `mask` (inpainting) is refused. A form has no
/// null: a field is sent or left out.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct OpenAiImageEditForm {
    /// The image to start from, PNG or JPEG (at most `--max-image-pixels` pixels).
    #[schema(value_type = ImageFile)]
    pub image: Vec<u8>,
    #[schema(pattern = r"\S", min_length = 1, max_length = 4096)]
    pub prompt: String,
    /// A model version (`GET /models`). Default: the active version.
    #[serde(default)]
    #[schema(value_type = ModelVersion)]
    pub model: String,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 8)]
    pub n: i64,
    /// `WIDTHxHEIGHT` or `auto`. Default: the image's own size, rounded down to the model's size multiple.
    #[serde(default)]
    pub size: String,
    /// Only `b64_json` (the default here).
    #[serde(default)]
    #[schema(value_type = ResponseFormat)]
    pub response_format: String,
    /// Accepted and logged.
    #[serde(default)]
    pub user: String,
    /// This server's extension: how much of the image is noised away, in (0, 1], as `/generate`'s. Default 0.8.
    #[serde(default)]
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub strength: f64,
}

/// The answer formats of `/v1/images/generations`: base64 only.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ResponseFormat {
    B64Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OpenAiImage {
    pub b64_json: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revised_prompt: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"created": 1764460800, "data": [{"b64_json": "iVBORw0KGgo..."}], "model": "shapes-sd"}))]
pub struct OpenAiImagesResponse {
    /// Unix seconds.
    pub created: u64,
    pub data: Vec<OpenAiImage>,
    /// The model version that generated the images (an addition to OpenAI's shape, which its clients ignore):
    /// while a rollout is under way, replicas may serve different versions.
    pub model: String,
}

/// A 1×1 PNG, the example of an image sent with its prompt.
const FEEDBACK_EXAMPLE_PNG: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==";

/// A rating: of an image this server generated (`image_id`), or of an image sent with its prompt.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"image": FEEDBACK_EXAMPLE_PNG, "prompt": "a red circle", "label": "good", "rater": "ann"}))]
pub struct FeedbackRequest {
    /// An `image_id` from `/generate`; its prompt is the one rated against.
    #[serde(default)]
    #[schema(value_type = Option<ImageId>)]
    pub image_id: Option<String>,
    /// Or a base64 PNG or JPEG, with `prompt`.
    #[serde(default)]
    #[schema(value_type = Option<ImageBase64>)]
    pub image: Option<String>,
    #[serde(default)]
    #[schema(pattern = r"\S", min_length = 1, max_length = 4096)]
    pub prompt: Option<String>,
    #[schema(value_type = LabelName)]
    pub label: String,
    /// Who rated (free text, at most 128 characters).
    #[serde(default)]
    #[schema(max_length = 128)]
    pub rater: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": "fb_0c2f4e0b8f7a4b1e9d1d2c3b4a596877", "created_at": 1764460800000_i64,
    "image_id": "img_5d41402abc4b2a76b9719d911017c592", "prompt": "three red circles", "label": "good",
    "rater": "ann"}))]
pub struct FeedbackOut {
    pub id: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub image_id: Option<String>,
    /// The version that generated the image; null for images sent with their prompt.
    pub model: Option<String>,
    pub prompt: String,
    pub label: String,
    pub rater: Option<String>,
    /// The tenant whose key gave the rating.
    pub tenant: String,
    /// The rated image as base64, in `/feedback/export?include_images=true` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_base64: Option<String>,
}

/// A page of ratings, oldest first. Pass `last_id` as `after` for the next page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FeedbackPage {
    pub data: Vec<FeedbackOut>,
    pub has_more: bool,
    pub last_id: Option<String>,
}

/// Filters and paging for `GET /feedback` and `GET /feedback/export`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FeedbackParams {
    #[param(value_type = Option<LabelName>)]
    pub label: Option<String>,
    pub rater: Option<String>,
    pub image_id: Option<String>,
    /// Only ratings of images this version generated (a `GET /models` id).
    pub model: Option<String>,
    /// The last id of the previous page.
    #[param(value_type = Option<RatingId>)]
    pub after: Option<String>,
    /// Ratings per page, 1 to 1000 (default 100). The export checks it but streams every match.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Export only: include each image as base64.
    pub include_images: Option<bool>,
}

/// A stored generated image, without its bytes (`GET /images/{id}` returns the PNG).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImageRecordOut {
    pub id: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub prompt: String,
    pub seed: u64,
    pub model: String,
    pub reward: Option<f32>,
}

/// A page of stored images, oldest first. Pass `last_id` as `after` for the next page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImagePage {
    pub data: Vec<ImageRecordOut>,
    pub has_more: bool,
    pub last_id: Option<String>,
}

/// Paging for `GET /images`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImageParams {
    /// The last id of the previous page.
    #[param(value_type = Option<ImageId>)]
    pub after: Option<String>,
    /// Images per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A duration in milliseconds, to the microsecond, as the responses' timings give it.
pub fn millis(duration: std::time::Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}
