//! Text-to-image generation: tokenizer, schedulers, the denoising loop and image output. Knows nothing of HTTP.

pub mod generate;
pub mod image;
pub mod model;
pub mod noise;
pub mod request;
pub mod scheduler;
pub mod tokenizer;

pub use generate::{
    GenerateOutput, GeneratedImage, Pipeline, Progress, Sampled, SampledImage, SelectionReport, StageTimings,
};
pub use model::ModelFolder;
pub use request::{GenerateInput, GenerateParams, ModelLimits, RequestLimits};
