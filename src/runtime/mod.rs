//! ONNX Runtime: the one process-wide environment, the execution-provider choice and session construction.
//!
//! Nothing else in the crate touches `ort::init_from` or `SessionBuilder`; the pipeline asks this module for
//! sessions and reads their input/output contract through [`contract`].

pub mod contract;
pub mod external_data;
pub mod graph;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::ep;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights};
use ort::session::Session;

use crate::error::{Error, Result};

/// The ONNX Runtime version this build is written against (`ort` feature `api-31`).
pub const ORT_VERSION: &str = "1.31.1";

const FIX_LIBRARY: &str =
    "install the library with `make venv` (pip install onnxruntime==1.31.1, or onnxruntime-gpu==1.31.1 for CUDA) \
     and point ORT_DYLIB_PATH (or --ort-dylib) at its onnxruntime/capi/libonnxruntime.so.1.31.1";

/// Which hardware runs the sessions, as the user asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// CUDA on this device id; fails start-up if the CUDA execution provider cannot be registered.
    Cuda(i32),
    /// CUDA device 0 when it registers, else CPU with a warning.
    Auto,
}

impl FromStr for Device {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        let text = text.trim().to_ascii_lowercase();
        match text.as_str() {
            "cpu" => Ok(Device::Cpu),
            "auto" => Ok(Device::Auto),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match text.strip_prefix("cuda:").map(str::parse::<i32>) {
                Some(Ok(id)) if id >= 0 => Ok(Device::Cuda(id)),
                _ => Err(format!("`{text}` is not a device; expected cpu, cuda, cuda:N or auto")),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(id) => write!(f, "cuda:{id}"),
            Device::Auto => f.write_str("auto"),
        }
    }
}

/// The execution provider that actually runs the sessions, after any fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionProvider {
    Cpu,
    Cuda(i32),
}

impl ExecutionProvider {
    /// The label used in `/health`, logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "CPUExecutionProvider",
            ExecutionProvider::Cuda(_) => "CUDAExecutionProvider",
        }
    }
}

impl fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecutionProvider::Cpu => f.write_str("cpu"),
            ExecutionProvider::Cuda(id) => write!(f, "cuda:{id}"),
        }
    }
}

/// Graph optimisation level, as ONNX Runtime names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OptimizationLevel {
    Disable,
    Basic,
    Extended,
    All,
}

impl From<OptimizationLevel> for GraphOptimizationLevel {
    fn from(level: OptimizationLevel) -> Self {
        match level {
            OptimizationLevel::Disable => GraphOptimizationLevel::Disable,
            OptimizationLevel::Basic => GraphOptimizationLevel::Level1,
            OptimizationLevel::Extended => GraphOptimizationLevel::Level2,
            OptimizationLevel::All => GraphOptimizationLevel::All,
        }
    }
}

/// Where the denoising loop keeps its tensors between UNet calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResidentLoop {
    /// On the device for CUDA, on the host for the CPU provider: there the device is host memory, and the
    /// loop's small graphs cost more ONNX Runtime calls than the host's arithmetic (BENCHMARKS.md).
    Auto,
    On,
    Off,
}

/// Per-session settings shared by every session this runtime builds.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Threads inside one operator (0 lets ONNX Runtime choose, usually one per core).
    pub intra_threads: usize,
    /// Threads across independent operators; only used with parallel execution.
    pub inter_threads: usize,
    pub optimization_level: OptimizationLevel,
    /// One intra-op thread pool for every session of the process, instead of one per session. A pipeline runs
    /// its sessions one after another; with a pool each, the idle pools' threads keep spinning and steal the
    /// cores from the one that works.
    pub shared_thread_pool: bool,
    /// Let ONNX Runtime plan each run's memory from the last run of the same input shapes.
    pub memory_pattern: bool,
    /// One container of pre-packed weights for every session: the copies of a model that several workers load
    /// share their pre-packed (re-laid-out) weight buffers instead of each holding its own.
    pub share_prepacked_weights: bool,
    /// Let the shared pool's threads spin between operators instead of sleeping: faster under steady load, but
    /// idle threads burn CPU for a moment after each run.
    pub spin: bool,
    /// Whether each request's latents, embeddings and scheduler history stay on the execution device between
    /// UNet calls (`pipeline::resident`) instead of on the host.
    pub resident_loop: ResidentLoop,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            intra_threads: 0,
            inter_threads: 1,
            optimization_level: OptimizationLevel::All,
            shared_thread_pool: true,
            memory_pattern: true,
            share_prepacked_weights: true,
            spin: true,
            resident_loop: ResidentLoop::Auto,
        }
    }
}

/// The loaded ONNX Runtime library and the environment every session is created in.
pub struct Runtime {
    env: Environment,
    provider: ExecutionProvider,
    requested: Device,
    settings: SessionSettings,
    library: PathBuf,
    /// Shared by every session when `share_prepacked_weights` is set.
    prepacked: Option<PrepackedWeights>,
}

impl Runtime {
    /// Loads the shared library, creates the process's one environment and settles the execution provider.
    ///
    /// `auto` is settled later, by the first session: a CUDA EP that fails to register there falls back to CPU.
    pub fn init(library: Option<&Path>, device: Device, settings: SessionSettings) -> Result<Self> {
        let library = resolve_library(library)?;
        let env = environment(&library, &settings)?;
        let provider = match device {
            Device::Cuda(id) => ExecutionProvider::Cuda(id),
            Device::Auto => ExecutionProvider::Cuda(0),
            Device::Cpu => ExecutionProvider::Cpu,
        };
        let prepacked = settings.share_prepacked_weights.then(PrepackedWeights::new);
        Ok(Runtime {
            env,
            provider,
            requested: device,
            settings,
            library,
            prepacked,
        })
    }

    /// The provider sessions run on now; after an `auto` fallback this is CPU.
    pub fn provider(&self) -> ExecutionProvider {
        self.provider
    }

    pub fn requested_device(&self) -> Device {
        self.requested
    }

    pub fn library(&self) -> &Path {
        &self.library
    }

    pub fn settings(&self) -> &SessionSettings {
        &self.settings
    }

    /// Whether pipelines keep the denoising loop's tensors on the device, `auto` settled by the provider.
    pub fn resident_loop(&self) -> bool {
        match self.settings.resident_loop {
            ResidentLoop::On => true,
            ResidentLoop::Off => false,
            ResidentLoop::Auto => self.provider != ExecutionProvider::Cpu,
        }
    }

    /// Builds a session for one ONNX file on the settled provider. `component` names it in errors.
    ///
    /// For `auto`, the first CUDA failure switches this runtime to CPU for good, with a warning.
    pub fn session(&mut self, component: &'static str, path: &Path) -> Result<Session> {
        external_data::check(path).map_err(|reason| {
            let folder = path.parent().and_then(Path::parent).unwrap_or(Path::new("."));
            Error::model(folder, format!("{component}: {reason}"))
        })?;
        let prepacked = self.prepacked.as_ref();
        match build_session(&self.env, &self.settings, prepacked, self.provider, Source::File(path)) {
            Ok(session) => Ok(session),
            Err(err) if self.requested == Device::Auto && self.provider != ExecutionProvider::Cpu => {
                tracing::warn!(
                    component,
                    error = %err,
                    "--device auto: the CUDA execution provider could not be registered; falling back to CPU"
                );
                self.provider = ExecutionProvider::Cpu;
                build_session(&self.env, &self.settings, prepacked, self.provider, Source::File(path))
                    .map_err(|err| session_error(component, path, self.provider, err))
            }
            Err(err) => Err(session_error(component, path, self.provider, err)),
        }
    }
}

impl Runtime {
    /// What builds sessions for graphs written in memory (see [`graph`]) later, on this runtime's settled
    /// provider and with its settings, without the runtime at hand.
    pub fn graph_sessions(&self) -> GraphSessions {
        GraphSessions {
            env: self.env.clone(),
            settings: self.settings.clone(),
            provider: self.provider,
        }
    }
}

/// Builds sessions for small graphs written in memory, as [`Runtime::session`] builds a model's.
#[derive(Clone)]
pub struct GraphSessions {
    env: Environment,
    settings: SessionSettings,
    provider: ExecutionProvider,
}

impl GraphSessions {
    pub fn provider(&self) -> ExecutionProvider {
        self.provider
    }

    /// A session for `model` (a serialised ModelProto). `component` names it in errors.
    pub fn session(&self, component: &str, model: &[u8]) -> Result<Session> {
        build_session(&self.env, &self.settings, None, self.provider, Source::Memory(model)).map_err(|err| {
            Error::Runtime(format!(
                "cannot create the {component} graph's session on {}: {err}",
                self.provider
            ))
        })
    }
}

impl ExecutionProvider {
    /// Where this provider's sessions keep their tensors: host memory for the CPU, the GPU's for CUDA.
    pub fn memory_info(&self) -> ort::Result<MemoryInfo<'static>> {
        match self {
            ExecutionProvider::Cpu => {
                MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default)
            }
            ExecutionProvider::Cuda(id) => {
                MemoryInfo::new(AllocationDevice::CUDA, *id, AllocatorType::Device, MemoryType::Default)
            }
        }
    }
}

/// Host memory, where results a caller reads come back to.
pub fn host_memory() -> ort::Result<MemoryInfo<'static>> {
    MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default)
}

/// ONNX Runtime allows one environment per process; every `Runtime` in the process shares it.
static ENVIRONMENT: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

/// The thread settings of the first `Runtime` in a process are the ones the shared pool keeps.
fn environment(library: &Path, settings: &SessionSettings) -> Result<Environment> {
    let mut slot = ENVIRONMENT
        .lock()
        .map_err(|_| Error::Internal("the ONNX Runtime environment lock is poisoned".into()))?;
    if let Some((loaded, env)) = slot.as_ref() {
        if loaded == library {
            return Ok(env.clone());
        }
        return Err(Error::Runtime(format!(
            "ONNX Runtime is already loaded from `{}` in this process; cannot also load `{}`",
            loaded.display(),
            library.display()
        )));
    }
    let builder = ort::init_from(library).map_err(|err| {
        Error::Runtime(format!(
            "cannot load ONNX Runtime from `{}` ({err}): {FIX_LIBRARY}",
            library.display()
        ))
    })?;
    let env_error = |err: ort::Error| Error::Runtime(format!("cannot create the ONNX Runtime environment: {err}"));
    let mut builder = builder.with_name("t2i-align").with_telemetry(false);
    if settings.shared_thread_pool {
        let pool = GlobalThreadPoolOptions::default()
            .with_intra_threads(settings.intra_threads)
            .and_then(|pool| pool.with_inter_threads(settings.inter_threads.max(1)))
            .and_then(|pool| pool.with_spin_control(settings.spin))
            .map_err(env_error)?;
        builder = builder.with_global_thread_pool(pool);
    }
    let env = builder.build().map_err(env_error)?;
    *slot = Some((library.to_path_buf(), env.clone()));
    Ok(env)
}

fn resolve_library(library: Option<&Path>) -> Result<PathBuf> {
    let library = match library {
        Some(path) => path.to_path_buf(),
        None => std::env::var_os("ORT_DYLIB_PATH")
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| Error::Runtime(format!("ONNX Runtime library not configured: {FIX_LIBRARY}")))?,
    };
    if !library.is_file() {
        return Err(Error::Runtime(format!(
            "ONNX Runtime library `{}` does not exist: {FIX_LIBRARY}",
            library.display()
        )));
    }
    Ok(library)
}

fn session_error(component: &str, path: &Path, provider: ExecutionProvider, err: ort::Error) -> Error {
    let hint = match provider {
        ExecutionProvider::Cuda(_) => {
            " (the CUDA execution provider needs onnxruntime-gpu==1.31.1 with CUDA 13 and cuDNN 9 libraries on \
             LD_LIBRARY_PATH; use --device cpu or --device auto to run without it)"
        }
        ExecutionProvider::Cpu => "",
    };
    Error::Runtime(format!(
        "cannot create the {component} session from `{}` on {provider}: {err}{hint}",
        path.display()
    ))
}

/// Builds a session, registering exactly one execution provider and failing if it does not register: we never
/// let ONNX Runtime fall back silently, so the provider we report is the one that runs.
fn build_session(
    env: &Environment,
    settings: &SessionSettings,
    prepacked: Option<&PrepackedWeights>,
    provider: ExecutionProvider,
    source: Source<'_>,
) -> ort::Result<Session> {
    let dispatch = match provider {
        ExecutionProvider::Cpu => ep::CPU::default().build().error_on_failure(),
        ExecutionProvider::Cuda(id) => ep::CUDA::default()
            .with_device_id(id)
            .with_conv_algorithm_search(ep::cuda::ConvAlgorithmSearch::Heuristic)
            .with_arena_extend_strategy(ep::ArenaExtendStrategy::SameAsRequested)
            .build()
            .error_on_failure(),
    };
    let mut builder = Session::builder(env)?
        .with_optimization_level(settings.optimization_level.into())?
        .with_intra_threads(settings.intra_threads)?
        .with_inter_threads(settings.inter_threads.max(1))?
        .with_memory_pattern(settings.memory_pattern)?
        .with_execution_providers([dispatch])?;
    if let Some(prepacked) = prepacked {
        builder = builder.with_prepacked_weights(prepacked)?;
    }
    match source {
        Source::File(path) => builder.commit_from_file(path),
        Source::Memory(model) => builder.commit_from_memory(model),
    }
}

/// Where a session's graph comes from.
enum Source<'a> {
    File(&'a Path),
    Memory(&'a [u8]),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("CUDA".parse::<Device>(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse::<Device>(), Ok(Device::Cuda(3)));
        assert_eq!("auto".parse::<Device>(), Ok(Device::Auto));
        assert!("cuda:-1".parse::<Device>().is_err());
        assert!("tpu"
            .parse::<Device>()
            .unwrap_err()
            .contains("cpu, cuda, cuda:N or auto"));
    }

    #[test]
    fn missing_library_says_how_to_fix_it() {
        let err = resolve_library(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/nonexistent/libonnxruntime.so"), "{text}");
        assert!(text.contains("ORT_DYLIB_PATH"), "{text}");
        assert!(text.contains("onnxruntime==1.31.1"), "{text}");
    }
}
