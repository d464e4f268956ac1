//! Small ONNX graphs written here, in memory, for the work around a model's own sessions that should run where
//! its tensors live (the device-resident denoising loop's step graphs, see `pipeline::resident`).
//!
//! [`GraphBuilder`] writes the ModelProto's protobuf directly: a handful of nodes, their inputs and outputs
//! with a rank and symbolic dimensions, and int64 constants. The field numbers are onnx.proto3's.

use crate::runtime::contract::ElementType;

/// The opset every built graph imports (the default domain).
pub const OPSET: i64 = 17;
/// ONNX IR version 8 (ONNX 1.10+), which ONNX Runtime 1.31 reads.
const IR_VERSION: i64 = 8;

// ModelProto
const MODEL_IR_VERSION: u32 = 1;
const MODEL_PRODUCER: u32 = 2;
const MODEL_GRAPH: u32 = 7;
const MODEL_OPSET_IMPORT: u32 = 8;
// OperatorSetIdProto
const OPSET_VERSION: u32 = 2;
// GraphProto
const GRAPH_NODE: u32 = 1;
const GRAPH_NAME: u32 = 2;
const GRAPH_INITIALIZER: u32 = 5;
const GRAPH_INPUT: u32 = 11;
const GRAPH_OUTPUT: u32 = 12;
// NodeProto
const NODE_INPUT: u32 = 1;
const NODE_OUTPUT: u32 = 2;
const NODE_NAME: u32 = 3;
const NODE_OP_TYPE: u32 = 4;
const NODE_ATTRIBUTE: u32 = 5;
// AttributeProto
const ATTRIBUTE_NAME: u32 = 1;
const ATTRIBUTE_I: u32 = 3;
const ATTRIBUTE_INTS: u32 = 8;
const ATTRIBUTE_TYPE: u32 = 20;
const ATTRIBUTE_TYPE_INT: u64 = 2;
const ATTRIBUTE_TYPE_INTS: u64 = 7;
// ValueInfoProto, TypeProto, TypeProto.Tensor, TensorShapeProto(.Dimension)
const VALUE_NAME: u32 = 1;
const VALUE_TYPE: u32 = 2;
const TYPE_TENSOR: u32 = 1;
const TENSOR_ELEM_TYPE: u32 = 1;
const TENSOR_SHAPE: u32 = 2;
const SHAPE_DIM: u32 = 1;
const DIM_PARAM: u32 = 2;
// TensorProto
const PROTO_DIMS: u32 = 1;
const PROTO_DATA_TYPE: u32 = 2;
const PROTO_NAME: u32 = 8;
const PROTO_RAW_DATA: u32 = 9;

const WIRE_VARINT: u32 = 0;
const WIRE_LEN: u32 = 2;

/// ONNX's TensorProto.DataType code.
fn data_type(element: ElementType) -> u64 {
    match element {
        ElementType::Float32 => 1,
        ElementType::Int32 => 6,
        ElementType::Int64 => 7,
        ElementType::Float16 => 10,
    }
}

/// A node attribute.
pub enum Attribute<'a> {
    Int(&'a str, i64),
    Ints(&'a str, &'a [i64]),
}

/// One graph being written: add inputs, constants and nodes, name the outputs, then [`GraphBuilder::finish`].
pub struct GraphBuilder {
    name: String,
    nodes: Vec<Vec<u8>>,
    inputs: Vec<Vec<u8>>,
    outputs: Vec<Vec<u8>>,
    initializers: Vec<Vec<u8>>,
    next_id: usize,
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        GraphBuilder {
            name: name.to_owned(),
            nodes: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            initializers: Vec::new(),
            next_id: 0,
        }
    }

    /// A graph input of `rank` dimensions, each symbolic. Returns its name.
    pub fn input(&mut self, name: &str, element: ElementType, rank: usize) -> String {
        let info = value_info(name, element, rank);
        self.inputs.push(info);
        name.to_owned()
    }

    /// Names `value` (a node's output, renamed through an Identity when it is not already called `name`) as a
    /// graph output.
    pub fn output(&mut self, value: &str, name: &str, element: ElementType, rank: usize) {
        if value != name {
            self.node_to("Identity", &[value], name, &[]);
        }
        self.outputs.push(value_info(name, element, rank));
    }

    /// A 1-D int64 constant. Returns its name.
    pub fn ints(&mut self, values: &[i64]) -> String {
        let name = self.fresh("const");
        let mut tensor = Vec::new();
        varint_field(&mut tensor, PROTO_DIMS, values.len() as u64);
        varint_field(&mut tensor, PROTO_DATA_TYPE, data_type(ElementType::Int64));
        bytes_field(&mut tensor, PROTO_NAME, name.as_bytes());
        let raw: Vec<u8> = values.iter().flat_map(|value| value.to_le_bytes()).collect();
        bytes_field(&mut tensor, PROTO_RAW_DATA, &raw);
        self.initializers.push(tensor);
        name
    }

    /// A scalar int64 constant (rank 0). Returns its name.
    pub fn int_scalar(&mut self, value: i64) -> String {
        let name = self.fresh("const");
        let mut tensor = Vec::new();
        varint_field(&mut tensor, PROTO_DATA_TYPE, data_type(ElementType::Int64));
        bytes_field(&mut tensor, PROTO_NAME, name.as_bytes());
        bytes_field(&mut tensor, PROTO_RAW_DATA, &value.to_le_bytes());
        self.initializers.push(tensor);
        name
    }

    /// A node with one output, named here. Returns the output's name.
    pub fn node(&mut self, op_type: &str, inputs: &[&str], attributes: &[Attribute<'_>]) -> String {
        let output = self.fresh(&op_type.to_ascii_lowercase());
        self.node_to(op_type, inputs, &output, attributes);
        output
    }

    /// `Cast` to `element`, or `value` itself when it already is one.
    pub fn cast(&mut self, value: &str, from: ElementType, to: ElementType) -> String {
        if from == to {
            return value.to_owned();
        }
        self.node("Cast", &[value], &[Attribute::Int("to", data_type(to) as i64)])
    }

    fn node_to(&mut self, op_type: &str, inputs: &[&str], output: &str, attributes: &[Attribute<'_>]) {
        let mut node = Vec::new();
        for input in inputs {
            bytes_field(&mut node, NODE_INPUT, input.as_bytes());
        }
        bytes_field(&mut node, NODE_OUTPUT, output.as_bytes());
        let name = self.fresh("node");
        bytes_field(&mut node, NODE_NAME, name.as_bytes());
        bytes_field(&mut node, NODE_OP_TYPE, op_type.as_bytes());
        for attribute in attributes {
            let mut proto = Vec::new();
            match attribute {
                Attribute::Int(name, value) => {
                    bytes_field(&mut proto, ATTRIBUTE_NAME, name.as_bytes());
                    varint_field(&mut proto, ATTRIBUTE_I, *value as u64);
                    varint_field(&mut proto, ATTRIBUTE_TYPE, ATTRIBUTE_TYPE_INT);
                }
                Attribute::Ints(name, values) => {
                    bytes_field(&mut proto, ATTRIBUTE_NAME, name.as_bytes());
                    for value in values.iter() {
                        varint_field(&mut proto, ATTRIBUTE_INTS, *value as u64);
                    }
                    varint_field(&mut proto, ATTRIBUTE_TYPE, ATTRIBUTE_TYPE_INTS);
                }
            }
            bytes_field(&mut node, NODE_ATTRIBUTE, &proto);
        }
        self.nodes.push(node);
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_{}", self.next_id)
    }

    /// The serialised ModelProto.
    pub fn finish(self) -> Vec<u8> {
        let mut graph = Vec::new();
        for node in &self.nodes {
            bytes_field(&mut graph, GRAPH_NODE, node);
        }
        bytes_field(&mut graph, GRAPH_NAME, self.name.as_bytes());
        for initializer in &self.initializers {
            bytes_field(&mut graph, GRAPH_INITIALIZER, initializer);
        }
        for input in &self.inputs {
            bytes_field(&mut graph, GRAPH_INPUT, input);
        }
        for output in &self.outputs {
            bytes_field(&mut graph, GRAPH_OUTPUT, output);
        }
        let mut opset = Vec::new();
        varint_field(&mut opset, OPSET_VERSION, OPSET as u64);
        let mut model = Vec::new();
        varint_field(&mut model, MODEL_IR_VERSION, IR_VERSION as u64);
        bytes_field(&mut model, MODEL_PRODUCER, b"t2i-align");
        bytes_field(&mut model, MODEL_GRAPH, &graph);
        bytes_field(&mut model, MODEL_OPSET_IMPORT, &opset);
        model
    }
}

fn value_info(name: &str, element: ElementType, rank: usize) -> Vec<u8> {
    let mut shape = Vec::new();
    for axis in 0..rank {
        let mut dim = Vec::new();
        bytes_field(&mut dim, DIM_PARAM, format!("{name}_d{axis}").as_bytes());
        bytes_field(&mut shape, SHAPE_DIM, &dim);
    }
    let mut tensor = Vec::new();
    varint_field(&mut tensor, TENSOR_ELEM_TYPE, data_type(element));
    bytes_field(&mut tensor, TENSOR_SHAPE, &shape);
    let mut ty = Vec::new();
    bytes_field(&mut ty, TYPE_TENSOR, &tensor);
    let mut info = Vec::new();
    bytes_field(&mut info, VALUE_NAME, name.as_bytes());
    bytes_field(&mut info, VALUE_TYPE, &ty);
    info
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
    varint(out, u64::from(field << 3 | WIRE_VARINT));
    varint(out, value);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    varint(out, u64::from(field << 3 | WIRE_LEN));
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_little_endian_base_128() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        out.clear();
        // Negative int64 attributes are ten bytes, as protobuf writes them.
        varint(&mut out, -1i64 as u64);
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn a_graph_names_its_parts() {
        let mut graph = GraphBuilder::new("probe");
        let x = graph.input("x", ElementType::Float32, 2);
        let axes = graph.ints(&[1]);
        let y = graph.node("Unsqueeze", &[&x, &axes], &[]);
        graph.output(&y, "y", ElementType::Float32, 3);
        let bytes = graph.finish();
        let text = String::from_utf8_lossy(&bytes);
        for part in ["probe", "Unsqueeze", "Identity", "x_d1", "y_d2", "t2i-align"] {
            assert!(text.contains(part), "{part} missing");
        }
    }
}
