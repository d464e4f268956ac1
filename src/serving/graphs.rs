//! Graphs rewritten by ONNX Runtime's transformer optimiser (#29), loaded in place of an export's own.
//!
//! `t2i_trainer.build.optimize_graphs` fuses each graph's attention, layer norms and activations, checks the
//! result against the original on the same inputs, and writes the graphs it kept to `<folder>/optimized/` with
//! `optimized.json`. That file records each component's verdict and the sha256 of the original graph it was
//! made from. A load uses a kept graph only while the original's sha256 still matches: a folder whose graphs
//! changed since is served from its own files, and under `--optimize-graphs on` optimised again.
//!
//! The optimiser is Python: the loader gets it as an [`Optimizer`] from above (`jobs::graphs` runs the
//! trainer's Python), so this module never starts a process itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::pipeline::ModelFolder;
use crate::registry::sha256_file;

/// The folder, inside a model folder, that the optimiser writes.
pub const FOLDER: &str = "optimized";
/// Its record of what was kept.
pub const MANIFEST: &str = "optimized.json";
/// The manifest format this build reads (`FORMAT` in optimize_graphs.py).
const FORMAT: u64 = 1;

/// `--optimize-graphs`: whether loads use, and make, optimised graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphMode {
    /// Load every export's own graphs.
    Off,
    /// Load the optimised graphs a folder already has (matching its graphs); never run the optimiser.
    Cached,
    /// As `cached`, and run the optimiser first for a folder that has none, or whose graphs changed.
    On,
}

/// Runs the optimiser over one model folder, writing `<folder>/optimized/`.
pub type Optimizer = Arc<dyn Fn(&Path) -> Result<()> + Send + Sync>;

/// How the loader treats graphs.
#[derive(Clone)]
pub struct GraphSettings {
    pub mode: GraphMode,
    /// Needed for `on`; without one, `on` acts as `cached`.
    pub optimizer: Option<Optimizer>,
}

impl std::fmt::Debug for GraphSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphSettings")
            .field("mode", &self.mode)
            .field("optimizer", &self.optimizer.is_some())
            .finish()
    }
}

#[derive(Debug, Deserialize)]
struct Manifest {
    format: u64,
    components: BTreeMap<String, ComponentRecord>,
}

#[derive(Debug, Deserialize)]
struct ComponentRecord {
    kept: bool,
    sha256: String,
}

/// What a folder's `optimized/` offers, as read against the folder's graphs now.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// No manifest, or one this build cannot read.
    Missing(String),
    /// A graph the manifest was made from has changed since.
    Stale(String),
    /// The kept graphs, by their path in the export (`unet/model.onnx`).
    Current(BTreeMap<String, PathBuf>),
}

/// Opens `folder` as a model, with its optimised graphs in place of the originals when `settings` allow it
/// and they are current. An optimiser that fails is logged and the export's own graphs are served: an
/// optimisation never stands between a model and its users.
pub fn open_model(folder: &Path, settings: &GraphSettings) -> Result<ModelFolder> {
    let mut model = ModelFolder::open(folder)?;
    if settings.mode == GraphMode::Off {
        return Ok(model);
    }
    let mut verdict = read_verdict(folder);
    if let (GraphMode::On, Some(optimizer), Verdict::Missing(_) | Verdict::Stale(_)) =
        (settings.mode, &settings.optimizer, &verdict)
    {
        let started = Instant::now();
        tracing::info!(folder = %folder.display(), reason = %verdict.reason(), "optimising the graphs");
        match optimizer(folder) {
            Ok(()) => {
                verdict = read_verdict(folder);
                tracing::info!(
                    folder = %folder.display(),
                    seconds = started.elapsed().as_secs_f64(),
                    "graphs optimised"
                );
            }
            Err(err) => tracing::warn!(
                folder = %folder.display(),
                error = %err,
                "the graph optimiser failed; serving the export's own graphs"
            ),
        }
    }
    match verdict {
        Verdict::Current(replacements) => {
            if !replacements.is_empty() {
                tracing::info!(
                    folder = %folder.display(),
                    graphs = ?replacements.keys().collect::<Vec<_>>(),
                    "loading the optimised graphs"
                );
            }
            model.replacements = replacements;
        }
        Verdict::Stale(reason) => tracing::warn!(
            folder = %folder.display(),
            %reason,
            "the optimised graphs are stale; serving the export's own (--optimize-graphs on makes new ones)"
        ),
        Verdict::Missing(_) => {}
    }
    Ok(model)
}

impl Verdict {
    fn reason(&self) -> String {
        match self {
            Verdict::Missing(reason) | Verdict::Stale(reason) => reason.clone(),
            Verdict::Current(_) => "current".into(),
        }
    }
}

/// Reads `<folder>/optimized/optimized.json` against the folder's graphs.
pub fn read_verdict(folder: &Path) -> Verdict {
    let path = folder.join(FOLDER).join(MANIFEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) => return Verdict::Missing(format!("{}: {err}", path.display())),
    };
    let manifest: Manifest = match serde_json::from_str(&text) {
        Ok(manifest) => manifest,
        Err(err) => return Verdict::Missing(format!("{}: {err}", path.display())),
    };
    if manifest.format != FORMAT {
        return Verdict::Missing(format!(
            "{}: format {} (this build reads {FORMAT})",
            path.display(),
            manifest.format
        ));
    }
    let mut replacements = BTreeMap::new();
    for (component, record) in &manifest.components {
        let relative = format!("{component}/model.onnx");
        let original = folder.join(&relative);
        match sha256_file(&original) {
            Ok(digest) if digest == record.sha256 => {}
            Ok(_) => return Verdict::Stale(format!("{relative} changed since it was optimised")),
            Err(err) => return Verdict::Stale(format!("{relative}: {err}")),
        }
        let optimized = folder.join(FOLDER).join(&relative);
        if record.kept {
            if !optimized.is_file() {
                return Verdict::Stale(format!("{} is missing", optimized.display()));
            }
            replacements.insert(relative, optimized);
        }
    }
    Verdict::Current(replacements)
}

/// The error an optimiser reports when it cannot run or fails.
pub fn optimizer_error(folder: &Path, message: impl std::fmt::Display) -> Error {
    Error::Runtime(format!(
        "cannot optimise the graphs of `{}`: {message}",
        folder.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_manifest(folder: &Path, digest: &str, kept: bool) {
        std::fs::create_dir_all(folder.join(FOLDER).join("unet")).unwrap();
        std::fs::write(folder.join(FOLDER).join("unet/model.onnx"), b"fused").unwrap();
        let manifest = serde_json::json!({
            "format": FORMAT,
            "components": {"unet": {"kept": kept, "sha256": digest, "relative_error": 1e-7}},
        });
        std::fs::write(folder.join(FOLDER).join(MANIFEST), manifest.to_string()).unwrap();
    }

    #[test]
    fn a_kept_graph_replaces_its_original_only_while_the_original_matches() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("unet")).unwrap();
        std::fs::write(dir.path().join("unet/model.onnx"), b"original").unwrap();
        assert!(matches!(read_verdict(dir.path()), Verdict::Missing(_)));

        let digest = sha256_file(&dir.path().join("unet/model.onnx")).unwrap();
        write_manifest(dir.path(), &digest, true);
        let Verdict::Current(replacements) = read_verdict(dir.path()) else {
            panic!("expected a current verdict");
        };
        assert_eq!(
            replacements.get("unet/model.onnx"),
            Some(&dir.path().join("optimized/unet/model.onnx"))
        );

        write_manifest(dir.path(), &digest, false);
        assert_eq!(read_verdict(dir.path()), Verdict::Current(BTreeMap::new()));

        write_manifest(dir.path(), &digest, true);
        std::fs::write(dir.path().join("unet/model.onnx"), b"fine-tuned").unwrap();
        assert!(matches!(read_verdict(dir.path()), Verdict::Stale(reason) if reason.contains("changed")));
    }

    #[test]
    fn a_manifest_of_another_format_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(FOLDER)).unwrap();
        std::fs::write(
            dir.path().join(FOLDER).join(MANIFEST),
            r#"{"format": 99, "components": {}}"#,
        )
        .unwrap();
        assert!(matches!(read_verdict(dir.path()), Verdict::Missing(reason) if reason.contains("format 99")));
    }
}
