//! The GGUF writer (v3, or v2 on request): any metadata, any tensors, laid out with the file's
//! alignment. Tests, benchmarks (random-weight models of any shape) and examples build their
//! files with it.

use std::io::Write;
use std::path::Path;

use super::reader::{DEFAULT_ALIGNMENT, MAX_DIMS, MAX_TENSOR_NAME_LEN};
use super::value::{Array, Value};
use crate::error::{Error, Result};
use crate::quant::GgmlType;

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// Collects metadata and tensors, then writes a GGUF image (v3 unless told otherwise).
pub struct GgufWriter {
    version: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufWriter {
    fn default() -> GgufWriter {
        GgufWriter {
            version: 3,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    /// The version written in the header. Little-endian v2 and v3 files are laid out the same
    /// (v3 only added big-endian files), so this is all it takes to write a v2 file.
    pub fn set_version(&mut self, version: u32) -> &mut Self {
        self.version = version;
        self
    }

    /// Sets `key` (replacing an earlier value of the same key, keeping its position).
    pub fn set(&mut self, key: &str, value: Value) -> &mut Self {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
        self
    }
    pub fn set_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.set(key, Value::U32(v))
    }
    pub fn set_f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.set(key, Value::F32(v))
    }
    pub fn set_bool(&mut self, key: &str, v: bool) -> &mut Self {
        self.set(key, Value::Bool(v))
    }
    pub fn set_str(&mut self, key: &str, v: &str) -> &mut Self {
        self.set(key, Value::String(v.as_bytes().to_vec()))
    }
    pub fn set_array(&mut self, key: &str, v: Array) -> &mut Self {
        self.set(key, Value::Array(v))
    }

    /// Adds a tensor with dims in GGML order (`dims[0]` = row length) and its raw block bytes.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Result<&mut Self> {
        if dims.is_empty() || dims.len() > MAX_DIMS || dims.contains(&0) {
            return Err(Error::invalid_arg(format!(
                "tensor '{name}': shape {dims:?} needs 1 to {MAX_DIMS} non-zero dims"
            )));
        }
        if name.is_empty() || name.len() > MAX_TENSOR_NAME_LEN {
            return Err(Error::invalid_arg(format!(
                "tensor '{name}': a name takes 1 to {MAX_TENSOR_NAME_LEN} bytes"
            )));
        }
        let n = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        let want = n.and_then(|n| {
            ty.row_bytes(dims[0])
                .and_then(|r| r.checked_mul(n / dims[0]))
        });
        if want != Some(data.len() as u64) {
            return Err(Error::invalid_arg(format!(
                "tensor '{name}': {} bytes given, {ty} {dims:?} needs {want:?}",
                data.len()
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(Error::invalid_arg(format!("tensor '{name}' added twice")));
        }
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            ty,
            data,
        });
        Ok(self)
    }

    /// Adds an F32 tensor from values.
    pub fn add_f32(&mut self, name: &str, dims: &[u64], values: &[f32]) -> Result<&mut Self> {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor(name, dims, GgmlType::F32, data)
    }

    fn alignment(&self) -> u64 {
        match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            Some((_, Value::U32(a))) if *a > 0 => *a as u64,
            _ => DEFAULT_ALIGNMENT,
        }
    }

    /// The whole file as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = self.alignment();
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k.as_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            put_str(&mut out, t.name.as_bytes());
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len() as u64).div_ceil(align) * align;
        }
        // Like ggml's writer: a file without tensors has no data section, so no padding.
        if !self.tensors.is_empty() {
            pad(&mut out, align);
        }
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            pad(&mut out, align);
        }
        out
    }

    pub fn write_to(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut f = std::fs::File::create(path)
            .map_err(|e| Error::io(format!("{}: cannot create: {e}", path.display())))?;
        f.write_all(&self.to_bytes())
            .map_err(|e| Error::io(format!("{}: cannot write: {e}", path.display())))
    }
}

fn pad(out: &mut Vec<u8>, align: u64) {
    let len = out.len() as u64;
    out.resize((len.div_ceil(align) * align) as usize, 0);
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    out.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(a) => {
            out.extend_from_slice(&(a.elem_type() as u32).to_le_bytes());
            out.extend_from_slice(&(a.len() as u64).to_le_bytes());
            macro_rules! each {
                ($v:expr) => {
                    for x in $v {
                        out.extend_from_slice(&x.to_le_bytes());
                    }
                };
            }
            match a {
                Array::U8(v) => out.extend_from_slice(v),
                Array::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
                Array::U16(v) => each!(v),
                Array::I16(v) => each!(v),
                Array::U32(v) => each!(v),
                Array::I32(v) => each!(v),
                Array::F32(v) => each!(v),
                Array::U64(v) => each!(v),
                Array::I64(v) => each!(v),
                Array::F64(v) => each!(v),
                Array::Bool(v) => out.extend(v.iter().map(|&x| x as u8)),
                Array::String(v) => {
                    for s in v {
                        put_str(out, s);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Gguf;

    #[test]
    fn round_trip() {
        let mut w = GgufWriter::new();
        w.set_str("general.architecture", "llama")
            .set_u32("llama.block_count", 2)
            .set("x.i64", Value::I64(-5))
            .set("x.f64", Value::F64(0.25))
            .set_bool("x.b", true)
            .set_array("x.s", Array::String(vec![b"a".to_vec(), b"\xff".to_vec()]))
            .set_array("x.f", Array::F32(vec![1.0, -2.0]));
        w.add_f32("a", &[4, 2], &[1., 2., 3., 4., 5., 6., 7., 8.])
            .unwrap();
        w.add_tensor("b", &[32], GgmlType::Q8_0, vec![7u8; 34])
            .unwrap();
        let g = Gguf::from_bytes(w.to_bytes()).unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(g.get_u32("llama.block_count").unwrap(), 2);
        assert_eq!(g.get_i64("x.i64").unwrap(), -5);
        assert!(g.get_bool("x.b").unwrap());
        assert_eq!(g.get_f32_array("x.f").unwrap(), &[1.0, -2.0]);
        assert_eq!(g.get_str_array("x.s").unwrap()[1], b"\xff");
        let a = g.tensor("a").unwrap();
        assert_eq!(a.dims, vec![4, 2]);
        assert_eq!(g.tensor_data(a)[4..8], 2f32.to_le_bytes());
        let b = g.tensor("b").unwrap();
        assert_eq!(b.offset % 32, 0);
        assert_eq!(g.tensor_data(b), &[7u8; 34][..]);
        let e = g.get_u32("general.architecture").unwrap_err();
        assert!(e.message.contains("general.architecture") && e.message.contains("string"));
    }
}
