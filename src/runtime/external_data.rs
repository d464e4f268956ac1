//! ONNX files whose weights live beside them (`model.onnx` + `model.onnx_data`): protobuf caps one file at
//! 2 GB, so every real Stable Diffusion UNet ships this way. ONNX Runtime loads them itself, from paths relative
//! to the model file; this module finds which files a model needs before a session is built, so that a missing
//! or truncated one is reported by name instead of as a failure deep inside the session's construction.
//!
//! It reads only the protobuf framing (ModelProto.graph → GraphProto.initializer → TensorProto.external_data),
//! seeking past everything else, so a 2 GB file with its weights inline costs a few hundred small reads.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

// Field numbers from onnx.proto3.
const MODEL_GRAPH: u64 = 7;
const GRAPH_INITIALIZER: u64 = 5;
const TENSOR_NAME: u64 = 8;
const TENSOR_EXTERNAL_DATA: u64 = 13;
const TENSOR_DATA_LOCATION: u64 = 14;
const ENTRY_KEY: u64 = 1;
const ENTRY_VALUE: u64 = 2;
const DATA_LOCATION_EXTERNAL: u64 = 1;

/// The longest string this reader keeps (a tensor name, a key or a value); longer ones are not paths.
const MAX_STRING: u64 = 64 * 1024;

/// One data file a model refers to, and the end of the furthest byte range its tensors read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    /// As written in the model, relative to the model's folder.
    pub location: String,
    /// The largest `offset + length` of a tensor stored in it (0 when no tensor states a length).
    pub needed_bytes: u64,
    /// A tensor stored in it, for messages.
    pub tensor: String,
}

/// The external data files `model` refers to, in name order. Empty for a model with its weights inline.
pub fn data_files(model: &Path) -> std::result::Result<Vec<DataFile>, String> {
    let file = File::open(model).map_err(|err| format!("cannot open: {err}"))?;
    let size = file
        .metadata()
        .map_err(|err| format!("cannot read its size: {err}"))?
        .len();
    let mut reader = Reader {
        inner: BufReader::with_capacity(64 * 1024, file),
        position: 0,
    };
    let mut files: BTreeMap<String, DataFile> = BTreeMap::new();
    while reader.position < size {
        let (field, wire) = reader.key()?;
        if field == MODEL_GRAPH && wire == WIRE_LEN {
            let end = reader.length_end(size)?;
            read_graph(&mut reader, end, &mut files)?;
        } else {
            reader.skip(wire, size)?;
        }
    }
    Ok(files.into_values().collect())
}

/// Fails, naming the file, when a data file `model` needs is missing or shorter than its tensors say.
pub fn check(model: &Path) -> std::result::Result<(), String> {
    let folder = model.parent().unwrap_or(Path::new("."));
    let name = model
        .file_name()
        .map_or_else(|| model.display().to_string(), |name| name.to_string_lossy().into());
    for file in data_files(model).map_err(|err| format!("`{}` is not a readable ONNX file: {err}", model.display()))? {
        let path: PathBuf = folder.join(&file.location);
        match std::fs::metadata(&path) {
            Err(_) => {
                return Err(format!(
                    "`{}` keeps its weights in the external data file `{}` (tensor `{}` and others), which is \
                     missing: copy `{}` into `{}` beside `{name}`; an export over 2 GB is always both files",
                    model.display(),
                    file.location,
                    file.tensor,
                    file.location,
                    folder.display()
                ))
            }
            Ok(meta) if meta.len() < file.needed_bytes => {
                return Err(format!(
                    "the external data file `{}` has {} bytes, but `{}`'s tensors read up to byte {}: it is \
                     truncated or from another export",
                    path.display(),
                    meta.len(),
                    model.display(),
                    file.needed_bytes
                ))
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

fn read_graph(
    reader: &mut Reader,
    end: u64,
    files: &mut BTreeMap<String, DataFile>,
) -> std::result::Result<(), String> {
    while reader.position < end {
        let (field, wire) = reader.key()?;
        if field == GRAPH_INITIALIZER && wire == WIRE_LEN {
            let tensor_end = reader.length_end(end)?;
            if let Some((location, needed, tensor)) = read_tensor(reader, tensor_end)? {
                let entry = files.entry(location.clone()).or_insert(DataFile {
                    location,
                    needed_bytes: 0,
                    tensor,
                });
                entry.needed_bytes = entry.needed_bytes.max(needed);
            }
        } else {
            reader.skip(wire, end)?;
        }
    }
    Ok(())
}

/// An initializer's external location, the end of its byte range and its name; `None` when it is inline.
fn read_tensor(reader: &mut Reader, end: u64) -> std::result::Result<Option<(String, u64, String)>, String> {
    let (mut name, mut external, mut entries) = (String::new(), false, Vec::new());
    while reader.position < end {
        let (field, wire) = reader.key()?;
        match (field, wire) {
            (TENSOR_NAME, WIRE_LEN) => name = reader.string(end)?,
            (TENSOR_DATA_LOCATION, WIRE_VARINT) => external = reader.varint()? == DATA_LOCATION_EXTERNAL,
            (TENSOR_EXTERNAL_DATA, WIRE_LEN) => {
                let entry_end = reader.length_end(end)?;
                let (mut key, mut value) = (String::new(), String::new());
                while reader.position < entry_end {
                    match reader.key()? {
                        (ENTRY_KEY, WIRE_LEN) => key = reader.string(entry_end)?,
                        (ENTRY_VALUE, WIRE_LEN) => value = reader.string(entry_end)?,
                        (_, wire) => reader.skip(wire, entry_end)?,
                    }
                }
                entries.push((key, value));
            }
            (_, wire) => reader.skip(wire, end)?,
        }
    }
    if !external {
        return Ok(None);
    }
    let get = |wanted: &str| {
        entries
            .iter()
            .find(|(key, _)| key == wanted)
            .map(|(_, value)| value.as_str())
    };
    let location = get("location").ok_or_else(|| format!("tensor `{name}` is external but names no location"))?;
    let number = |key: &str| -> std::result::Result<u64, String> {
        get(key).map_or(Ok(0), |value| {
            value
                .parse()
                .map_err(|_| format!("tensor `{name}` has a {key} of `{value}`, not a byte count"))
        })
    };
    let needed = number("offset")?.saturating_add(number("length")?);
    Ok(Some((location.to_string(), needed, name)))
}

const WIRE_VARINT: u8 = 0;
const WIRE_I64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_I32: u8 = 5;

/// A protobuf reader over a file that keeps its position, so that nested messages end where their length says.
struct Reader {
    inner: BufReader<File>,
    position: u64,
}

impl Reader {
    fn byte(&mut self) -> std::result::Result<u8, String> {
        let mut byte = [0u8; 1];
        self.inner
            .read_exact(&mut byte)
            .map_err(|err| format!("ends early at byte {} ({err})", self.position))?;
        self.position += 1;
        Ok(byte[0])
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("has a malformed varint at byte {}", self.position))
    }

    fn key(&mut self) -> std::result::Result<(u64, u8), String> {
        let key = self.varint()?;
        Ok((key >> 3, (key & 7) as u8))
    }

    /// Reads a length and returns where the field ends, which must be within `limit`.
    fn length_end(&mut self, limit: u64) -> std::result::Result<u64, String> {
        let length = self.varint()?;
        let end = self.position.checked_add(length).filter(|&end| end <= limit);
        end.ok_or_else(|| {
            format!(
                "has a field of {length} bytes at byte {} that overruns its message",
                self.position
            )
        })
    }

    fn string(&mut self, limit: u64) -> std::result::Result<String, String> {
        let end = self.length_end(limit)?;
        let length = end - self.position;
        if length > MAX_STRING {
            self.seek_to(end)?;
            return Ok(String::new());
        }
        let mut bytes = vec![0u8; length as usize];
        self.inner
            .read_exact(&mut bytes)
            .map_err(|err| format!("ends early at byte {} ({err})", self.position))?;
        self.position = end;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn skip(&mut self, wire: u8, limit: u64) -> std::result::Result<(), String> {
        let end = match wire {
            WIRE_VARINT => return self.varint().map(drop),
            WIRE_I64 => self.position + 8,
            WIRE_I32 => self.position + 4,
            WIRE_LEN => self.length_end(limit)?,
            other => {
                return Err(format!(
                    "has wire type {other} at byte {}, which ONNX does not use",
                    self.position
                ))
            }
        };
        if end > limit {
            return Err(format!(
                "has a field at byte {} that overruns its message",
                self.position
            ));
        }
        self.seek_to(end)
    }

    fn seek_to(&mut self, end: u64) -> std::result::Result<(), String> {
        let offset = (end - self.position) as i64;
        self.inner
            .seek_relative(offset)
            .map_err(|err| format!("cannot seek to byte {end} ({err})"))?;
        self.position = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut value: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn field(number: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(number << 3 | u64::from(WIRE_LEN), out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    fn entry(key: &str, value: &str) -> Vec<u8> {
        let mut out = Vec::new();
        field(ENTRY_KEY, key.as_bytes(), &mut out);
        field(ENTRY_VALUE, value.as_bytes(), &mut out);
        out
    }

    /// A ModelProto with an ir_version, one inline initializer (with raw data) and two external ones.
    fn model() -> Vec<u8> {
        let mut inline = Vec::new();
        field(TENSOR_NAME, b"inline", &mut inline);
        field(9, &[7u8; 300], &mut inline);
        let external = |name: &str, offset: &str, length: &str| {
            let mut tensor = Vec::new();
            field(TENSOR_NAME, name.as_bytes(), &mut tensor);
            field(TENSOR_EXTERNAL_DATA, &entry("location", "model.onnx_data"), &mut tensor);
            field(TENSOR_EXTERNAL_DATA, &entry("offset", offset), &mut tensor);
            field(TENSOR_EXTERNAL_DATA, &entry("length", length), &mut tensor);
            varint(TENSOR_DATA_LOCATION << 3, &mut tensor);
            varint(DATA_LOCATION_EXTERNAL, &mut tensor);
            tensor
        };
        let mut graph = Vec::new();
        field(1, b"a node we skip", &mut graph);
        field(GRAPH_INITIALIZER, &inline, &mut graph);
        field(GRAPH_INITIALIZER, &external("w1", "0", "64"), &mut graph);
        field(GRAPH_INITIALIZER, &external("w2", "64", "36"), &mut graph);
        let mut model = Vec::new();
        varint(1 << 3, &mut model);
        varint(8, &mut model);
        field(MODEL_GRAPH, &graph, &mut model);
        model
    }

    #[test]
    fn finds_the_data_file_and_how_much_of_it_the_tensors_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, model()).unwrap();
        let files = data_files(&path).unwrap();
        assert_eq!(
            files,
            vec![DataFile {
                location: "model.onnx_data".into(),
                needed_bytes: 100,
                tensor: "w1".into(),
            }]
        );

        let missing = check(&path).unwrap_err();
        assert!(
            missing.contains("`model.onnx_data`") && missing.contains("missing"),
            "{missing}"
        );
        std::fs::write(dir.path().join("model.onnx_data"), [0u8; 99]).unwrap();
        let short = check(&path).unwrap_err();
        assert!(short.contains("has 99 bytes") && short.contains("byte 100"), "{short}");
        std::fs::write(dir.path().join("model.onnx_data"), [0u8; 100]).unwrap();
        check(&path).unwrap();
    }

    #[test]
    fn a_truncated_model_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        let bytes = model();
        for cut in [1, 5, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let error = data_files(&path).unwrap_err();
            assert!(error.contains("byte"), "cut at {cut}: {error}");
        }
    }
}
