//! Text-to-image generation: tokenizer, schedulers, the denoising loop and image output. Knows nothing of HTTP.

pub mod contract;
pub mod denoise;
pub mod image;
pub mod model;
pub mod noise;
pub mod output;
pub mod request;
pub mod resample;
mod resident;
pub mod scheduler;
pub mod tokenizer;

pub use denoise::Pipeline;
pub use model::ModelFolder;
pub use output::{GenerateOutput, GeneratedImage, Progress, Sampled, SampledImage, SelectionReport, StageTimings};
pub use request::{GenerateInput, GenerateParams, ModelLimits, RequestLimits};
