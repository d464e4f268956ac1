//! t2i-align: serve text-to-image diffusion models aligned with human feedback, through ONNX Runtime.
//!
//! Modules own one concern each: `http` (routes, errors, OpenAPI), `pipeline` (tokenizer, schedulers, denoising
//! loop), `reward` (reward models, the scorer thread and best-of-n), `runtime` (the ONNX Runtime environment and
//! sessions), `batching` (the queue and the worker threads that own the sessions), `storage` (the database: images,
//! feedback, jobs, versions), `jobs` (fine-tune jobs and their runner), `registry` (model versions and the loaded
//! engines), `metrics`, and `cli` that wires them together: one file per command, `serve`'s start-up and shutdown
//! included.

pub mod batching;
pub mod cli;
pub mod error;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod pipeline;
pub mod registry;
pub mod reward;
pub mod runtime;
pub mod serving;
pub mod storage;

pub use error::{Error, Result};
