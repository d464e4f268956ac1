//! Request and response bodies of the HTTP API, with the examples the OpenAPI spec shows.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::pipeline::GenerateInput;

/// A text-to-image request. Absent fields take the server's defaults; unknown fields are rejected.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "prompt": "two blue stars on a white background",
    "negative_prompt": "blurry",
    "n": 1,
    "steps": 20,
    "guidance_scale": 7.5,
    "scheduler": "ddim",
    "seed": 42,
    "width": 64,
    "height": 64
}))]
pub struct GenerateRequest {
    /// What to draw. Must not be empty; cut to the text encoder's 77 tokens with a warning.
    pub prompt: String,
    /// What to steer away from (classifier-free guidance's unconditional side). Default: empty.
    #[serde(default)]
    pub negative_prompt: Option<String>,
    /// Images to generate for the prompt. Default 1; at most the server's `--max-images`.
    #[serde(default)]
    pub n: Option<i64>,
    /// Denoising steps. Default: the server's `--default-steps`.
    #[serde(default)]
    pub steps: Option<i64>,
    /// Classifier-free guidance scale; 1 or less turns guidance off. Default 7.5.
    #[serde(default)]
    pub guidance_scale: Option<f64>,
    /// One of `ddim`, `euler`, `euler_a`, `dpm++2m`, `pndm`. Default: the model's own scheduler.
    #[serde(default)]
    pub scheduler: Option<String>,
    /// Seed of image 0; image i uses seed + i. Default: random, and returned in the response.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Pixels; a multiple of the model's size multiple. Default: the model's native size.
    #[serde(default)]
    pub width: Option<i64>,
    /// Pixels; a multiple of the model's size multiple. Default: the model's native size.
    #[serde(default)]
    pub height: Option<i64>,
    /// DDIM's eta in [0, 1] (0 is deterministic DDIM). Ignored by other schedulers. Default 0.
    #[serde(default)]
    pub eta: Option<f64>,
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
    /// Time inside ONNX Runtime `run` calls, all stages together.
    pub inference_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "gen-4f9c2a7e",
    "model": "shapes-sd",
    "images": [{"index": 0, "seed": 42, "png_base64": "iVBORw0KGgo..."}],
    "timings": {"queue_ms": 0.1, "text_encode_ms": 3.2, "denoise_ms": 120.5, "decode_ms": 8.1,
                "png_encode_ms": 0.4, "inference_ms": 128.9, "total_ms": 132.6},
    "warnings": []
}))]
pub struct GenerateResponse {
    pub id: String,
    pub model: String,
    pub images: Vec<ImageOut>,
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
