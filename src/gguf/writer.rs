//! The GGUF writer (v3, or v2 on request): any metadata, any tensors, laid out with the file's
//! alignment. Tests, benchmarks (random-weight models of any shape) and examples build their
//! files with it.

use std::path::Path;

use super::reader::{DEFAULT_ALIGNMENT, MAX_DIMS, MAX_TENSOR_NAME_LEN};
use super::value::{Array, Value};
use crate::error::{Error, Result};
use crate::quant::GgmlType;

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    bytes: u64,
    /// None: deferred, produced by the fill callback of [`GgufWriter::write_to_with`].
    data: Option<Vec<u8>>,
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
        self.push(name, dims, ty, Some(data))
    }

    /// Declares a tensor whose bytes are produced only while writing, by the callback of
    /// [`write_to_with`](Self::write_to_with): a file larger than memory streams out one tensor
    /// at a time. [`to_bytes`](Self::to_bytes) and [`write_to`](Self::write_to) write zeros.
    pub fn add_tensor_deferred(&mut self, name: &str, dims: &[u64], ty: GgmlType) -> Result<&mut Self> {
        self.push(name, dims, ty, None)
    }

    fn push(&mut self, name: &str, dims: &[u64], ty: GgmlType, data: Option<Vec<u8>>) -> Result<&mut Self> {
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
        let Some(bytes) = want else {
            return Err(Error::invalid_arg(format!(
                "tensor '{name}': {ty} {dims:?} is not a whole number of blocks per row or too large"
            )));
        };
        if let Some(d) = &data {
            if d.len() as u64 != bytes {
                return Err(Error::invalid_arg(format!(
                    "tensor '{name}': {} bytes given, {ty} {dims:?} needs {bytes}",
                    d.len()
                )));
            }
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(Error::invalid_arg(format!("tensor '{name}' added twice")));
        }
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            ty,
            bytes,
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

    /// Everything before the first tensor's bytes (header, metadata, tensor infos, padding).
    fn head(&self) -> Vec<u8> {
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
        for t in &self.tensors {
            put_str(&mut out, t.name.as_bytes());
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + t.bytes).div_ceil(align) * align;
        }
        // Like ggml's writer: a file without tensors has no data section, so no padding.
        if !self.tensors.is_empty() {
            pad(&mut out, align);
        }
        out
    }

    /// The whole file as bytes (deferred tensors as zeros).
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = self.alignment();
        let mut out = self.head();
        for t in &self.tensors {
            match &t.data {
                Some(d) => out.extend_from_slice(d),
                None => out.resize(out.len() + t.bytes as usize, 0),
            }
            pad(&mut out, align);
        }
        out
    }

    /// The total file size in bytes.
    pub fn file_bytes(&self) -> u64 {
        let align = self.alignment();
        self.head().len() as u64 + self.tensors.iter().map(|t| t.bytes.div_ceil(align) * align).sum::<u64>()
    }

    pub fn write_to(&self, path: impl AsRef<Path>) -> Result<()> {
        self.write_to_with(path, &|_, _, buf| {
            buf.fill(0);
            Ok(())
        })
    }

    /// Writes the file, streaming: the bytes of deferred tensor `i` are made by
    /// `fill(i, offset, piece)` in pieces (of at most 8 MiB, whole blocks, `offset` bytes into
    /// the tensor) on all cores, straight into the file mapped in memory — no copy and no buffer
    /// beyond the file's own pages, which matters for a model of tens of GB in tmpfs. An error
    /// from `fill` stops the write and is returned (the partial file is left for the caller to
    /// remove).
    pub fn write_to_with(
        &self,
        path: impl AsRef<Path>,
        fill: &(dyn Fn(usize, u64, &mut [u8]) -> Result<()> + Sync),
    ) -> Result<()> {
        use rayon::prelude::*;
        const PIECE: u64 = 8 << 20;
        let path = path.as_ref();
        let io = |e: std::io::Error| Error::io(format!("{}: cannot write: {e}", path.display()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io(format!("{}: cannot create: {e}", path.display())))?;
        // Sized first: padding reads as zeros.
        let total = self.file_bytes();
        f.set_len(total).map_err(io)?;
        let head = self.head();
        // SAFETY: the file was just created by us and sized; nothing else maps or truncates it
        // while the map lives.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&f) }.map_err(io)?;
        let (h, mut rest) = map.split_at_mut(head.len());
        h.copy_from_slice(&head);
        let align = self.alignment();
        let mut pieces = Vec::new();
        for (i, t) in self.tensors.iter().enumerate() {
            let padded = t.bytes.div_ceil(align) * align;
            let (region, tail) = std::mem::take(&mut rest).split_at_mut(padded as usize);
            rest = tail;
            let data = &mut region[..t.bytes as usize];
            match &t.data {
                Some(d) => data.copy_from_slice(d),
                None => {
                    let step = (PIECE / t.ty.block_bytes() as u64).max(1) * t.ty.block_bytes() as u64;
                    for (k, p) in data.chunks_mut(step as usize).enumerate() {
                        pieces.push((i, k as u64 * step, p));
                    }
                }
            }
        }
        pieces.into_par_iter().try_for_each(|(i, o, p)| fill(i, o, p))?;
        // The pages are the file's (tmpfs) or written back by the kernel; readers of the path see
        // them either way.
        drop(map);
        Ok(())
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

    /// A streamed file equals the in-memory image of the same tensors, the callback sees each
    /// deferred tensor's bytes once, and its error stops the write. (Pieces: see `pieces_cover`.)
    #[test]
    fn streamed_write_equals_in_memory() {
        let dir = std::env::temp_dir().join(format!("xdan-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.gguf");
        let q: Vec<u8> = (0..68u8).collect();
        let mut eager = GgufWriter::new();
        eager.set_u32("general.alignment", 64).set_str("general.architecture", "llama");
        eager.add_f32("a", &[3], &[1., 2., 3.]).unwrap();
        eager.add_tensor("q", &[64], GgmlType::Q8_0, q.clone()).unwrap();
        eager.add_f32("z", &[2], &[0., 0.]).unwrap();
        let mut lazy = GgufWriter::new();
        lazy.set_u32("general.alignment", 64).set_str("general.architecture", "llama");
        lazy.add_f32("a", &[3], &[1., 2., 3.]).unwrap();
        lazy.add_tensor_deferred("q", &[64], GgmlType::Q8_0).unwrap();
        lazy.add_tensor_deferred("z", &[2], GgmlType::F32).unwrap();
        assert!(lazy.add_tensor_deferred("bad", &[33], GgmlType::Q8_0).is_err());
        let seen = std::sync::Mutex::new(Vec::new());
        lazy.write_to_with(&path, &|i, o, buf| {
            seen.lock().unwrap().push((i, o, buf.len()));
            if i == 1 {
                buf.copy_from_slice(&q);
            }
            Ok(())
        })
        .unwrap();
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        assert_eq!(seen, vec![(1, 0, 68), (2, 0, 8)]);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes, eager.to_bytes());
        assert_eq!(lazy.file_bytes(), bytes.len() as u64);
        assert_eq!(lazy.to_bytes().len(), bytes.len());
        let g = Gguf::from_bytes(bytes).unwrap();
        assert_eq!(g.tensor_data(g.tensor("q").unwrap()), &q[..]);
        let e = lazy
            .write_to_with(&path, &|_, _, _| Err(Error::invalid_arg("stop here")))
            .unwrap_err();
        assert!(e.message.contains("stop here"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A deferred tensor over the piece size is cut into whole blocks whose offsets cover it
    /// exactly once, each landing at its place in the file.
    #[test]
    fn pieces_cover() {
        let dir = std::env::temp_dir().join(format!("xdan-writer-p-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.gguf");
        let n_blocks = (17u64 << 20) / 34 + 5; // three pieces, the last one short
        let mut w = GgufWriter::new();
        w.add_tensor_deferred("big", &[32 * n_blocks], GgmlType::Q8_0).unwrap();
        let seen = std::sync::Mutex::new(Vec::new());
        w.write_to_with(&path, &|_, o, buf| {
            assert_eq!(o % 34, 0);
            assert_eq!(buf.len() % 34, 0);
            seen.lock().unwrap().push((o, buf.len() as u64));
            for (j, b) in buf.iter_mut().enumerate() {
                *b = ((o + j as u64) % 251) as u8;
            }
            Ok(())
        })
        .unwrap();
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        assert_eq!(seen.len(), 3);
        let mut next = 0;
        for (o, len) in seen {
            assert_eq!(o, next);
            next += len;
        }
        assert_eq!(next, 34 * n_blocks);
        let g = Gguf::open(&path, false).unwrap();
        let d = g.tensor_data(g.tensor("big").unwrap());
        assert!(d.iter().enumerate().all(|(j, &b)| b == (j % 251) as u8));
        drop(g);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
