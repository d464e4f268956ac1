//! t2i-align: serve text-to-image diffusion models aligned with human feedback, through ONNX Runtime.
//!
//! Modules own one concern each: `http` (routes, errors, OpenAPI), `pipeline` (tokenizer, schedulers, denoising
//! loop), `reward` (reward models, the scorer thread and best-of-n), `runtime` (the ONNX Runtime environment and
//! sessions), `batching` (the queue and the worker threads that own the sessions), `storage` (generated images),
//! `metrics`, and `server`/`cli` that wire them together.

pub mod batching;
pub mod cli;
pub mod error;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod reward;
pub mod runtime;
pub mod server;
pub mod storage;

pub use error::{Error, Result};
