//! What a session expects: input and output names, element types and ranks, read from the session's metadata
//! rather than assumed, because exporters differ (Optimum ≥1.24 exports the UNet timestep as a float scalar,
//! older exports as int64 `[B]`; text encoders take int64 or int32 ids).

use ort::session::Session;
use ort::value::{TensorElementType, ValueType};

use crate::error::{Error, Result};

/// The element types we can feed or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    Float32,
    Float16,
    Int32,
    Int64,
}

impl ElementType {
    fn from_ort(ty: TensorElementType) -> Option<Self> {
        match ty {
            TensorElementType::Float32 => Some(ElementType::Float32),
            TensorElementType::Float16 => Some(ElementType::Float16),
            TensorElementType::Int32 => Some(ElementType::Int32),
            TensorElementType::Int64 => Some(ElementType::Int64),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            ElementType::Float32 => "float32",
            ElementType::Float16 => "float16",
            ElementType::Int32 => "int32",
            ElementType::Int64 => "int64",
        }
    }
}

/// One input or output: its name, element type and shape (`-1` for a dynamic dimension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub element: ElementType,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn describe(&self) -> String {
        format!("`{}` {}{:?}", self.name, self.element.name(), self.shape)
    }
}

/// All inputs and outputs of one session.
#[derive(Debug, Clone)]
pub struct SessionContract {
    pub component: &'static str,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl SessionContract {
    pub fn read(component: &'static str, session: &Session) -> Result<Self> {
        let specs = |outlets: &[ort::value::Outlet]| -> Result<Vec<TensorSpec>> {
            outlets
                .iter()
                .map(|outlet| tensor_spec(component, outlet.name(), outlet.dtype()))
                .collect()
        };
        Ok(SessionContract {
            component,
            inputs: specs(session.inputs())?,
            outputs: specs(session.outputs())?,
        })
    }

    /// The input called `name`, or an error listing what the model has.
    pub fn input(&self, name: &str) -> Result<&TensorSpec> {
        self.inputs.iter().find(|spec| spec.name == name).ok_or_else(|| {
            Error::Runtime(format!(
                "the {} model has no input `{name}`; its inputs are: {}",
                self.component,
                describe_all(&self.inputs)
            ))
        })
    }

    /// The output called `name`, falling back to the first output for exporters that name it differently.
    pub fn output_or_first(&self, name: &str) -> Result<&TensorSpec> {
        self.outputs
            .iter()
            .find(|spec| spec.name == name)
            .or_else(|| self.outputs.first())
            .ok_or_else(|| Error::Runtime(format!("the {} model has no outputs", self.component)))
    }

    /// Fails when the model has inputs beyond `known`: we could not fill them.
    pub fn reject_unknown_inputs(&self, known: &[&str]) -> Result<()> {
        let unknown: Vec<String> = self
            .inputs
            .iter()
            .filter(|spec| !known.contains(&spec.name.as_str()))
            .map(TensorSpec::describe)
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(Error::Runtime(format!(
                "the {} model needs inputs this server cannot provide: {} (supported: {})",
                self.component,
                unknown.join(", "),
                known.join(", ")
            )))
        }
    }
}

fn describe_all(specs: &[TensorSpec]) -> String {
    specs.iter().map(TensorSpec::describe).collect::<Vec<_>>().join(", ")
}

fn tensor_spec(component: &'static str, name: &str, dtype: &ValueType) -> Result<TensorSpec> {
    let (ty, shape) = match dtype {
        ValueType::Tensor { ty, shape, .. } => (*ty, shape.to_vec()),
        other => {
            return Err(Error::Runtime(format!(
                "the {component} model's `{name}` is not a tensor ({other:?})"
            )))
        }
    };
    let element = ElementType::from_ort(ty).ok_or_else(|| {
        Error::Runtime(format!(
            "the {component} model's `{name}` has element type {ty:?}; supported: float32, float16, int32, int64"
        ))
    })?;
    Ok(TensorSpec {
        name: name.to_string(),
        element,
        shape,
    })
}
