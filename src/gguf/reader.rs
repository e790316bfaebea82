//! The GGUF v2/v3 reader.
//!
//! Every count and length read from the file is checked against the bytes that are left before
//! anything is allocated or looped over, so a hostile header cannot make the reader allocate more
//! than the file's own size, and every refusal names the offset and the key or tensor involved.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::value::{Array, Value, ValueType};
use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// "GGUF" read as a little-endian u32.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// `general.alignment` when the file does not set it.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: usize = 4;

/// One tensor's entry in the tensor-info table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in GGML order: `dims[0]` is the row length (fastest varying).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    /// Bytes of data, from the type's block size and the dims.
    pub n_bytes: u64,
    /// Number of elements (product of the dims).
    pub n_elements: u64,
}

impl TensorInfo {
    /// Number of rows (product of every dim but the first).
    pub fn n_rows(&self) -> u64 {
        self.n_elements / self.dims[0]
    }
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        (self.n_bytes / self.n_rows()) as usize
    }
}

/// The parsed header: everything but the tensor bytes.
#[derive(Clone, Debug)]
pub struct Header {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
}

/// Where the file's bytes live: a read-only memory map, or an owned copy (`use_mmap = false`,
/// or bytes handed in by a caller).
enum Backing {
    Map(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// An open, validated GGUF file.
pub struct Gguf {
    backing: Backing,
    header: Header,
    meta_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
    path: Option<PathBuf>,
}

impl Gguf {
    /// Opens and validates `path`, mapping it (`mmap = true`) or reading it into memory.
    pub fn open(path: impl AsRef<Path>, mmap: bool) -> Result<Gguf> {
        let path = path.as_ref();
        let shown = path.display();
        let file =
            File::open(path).map_err(|e| Error::io(format!("{shown}: cannot open: {e}")))?;
        let backing = if mmap {
            let len = file.metadata().map_err(|e| Error::io(format!("{shown}: {e}")))?.len();
            if len == 0 {
                Backing::Owned(Vec::new())
            } else {
                // SAFETY: the map is read-only; a file truncated under us by another process is
                // outside what any mmap-based loader (llama.cpp included) can defend against.
                let map = unsafe { memmap2::Mmap::map(&file) }
                    .map_err(|e| Error::io(format!("{shown}: cannot map: {e}")))?;
                Backing::Map(map)
            }
        } else {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut &file, &mut v)
                .map_err(|e| Error::io(format!("{shown}: cannot read: {e}")))?;
            Backing::Owned(v)
        };
        let mut g = Gguf::from_backing(backing).map_err(|e| e.context(shown))?;
        g.path = Some(path.to_path_buf());
        Ok(g)
    }

    /// Validates a GGUF image held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Gguf> {
        Gguf::from_backing(Backing::Owned(bytes))
    }

    fn from_backing(backing: Backing) -> Result<Gguf> {
        let header = parse_header(backing.bytes())?;
        let meta_index =
            header.metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        let tensor_index =
            header.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(Gguf { backing, header, meta_index, tensor_index, path: None })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
    pub fn header(&self) -> &Header {
        &self.header
    }
    pub fn version(&self) -> u32 {
        self.header.version
    }
    pub fn file_bytes(&self) -> u64 {
        self.backing.bytes().len() as u64
    }
    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.header.metadata
    }
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.header.metadata[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.header.tensors[i])
    }

    /// The bytes of a tensor (already checked to lie inside the file).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.header.data_offset + t.offset) as usize;
        &self.backing.bytes()[start..start + t.n_bytes as usize]
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| Error::format(format!("metadata key '{key}' is missing")))
    }

    fn wrong(key: &str, want: &str, v: &Value) -> Error {
        Error::format(format!("metadata key '{key}': expected {want}, found {}", v.type_name()))
    }

    /// An integer key of any width that fits in u32 (llama.cpp's converters vary the width).
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        let v = self.require(key)?;
        let n = v.as_u64().ok_or_else(|| Self::wrong(key, "an unsigned integer", v))?;
        u32::try_from(n).map_err(|_| {
            Error::format(format!("metadata key '{key}': value {n} does not fit in u32"))
        })
    }
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| Self::wrong(key, "an unsigned integer", v))
    }
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        let v = self.require(key)?;
        v.as_i64().ok_or_else(|| Self::wrong(key, "an integer", v))
    }
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_f64().map(|x| x as f32).ok_or_else(|| Self::wrong(key, "a float", v))
    }
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.require(key)? {
            Value::Bool(b) => Ok(*b),
            v => Err(Self::wrong(key, "bool", v)),
        }
    }
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.require(key)? {
            Value::String(s) => std::str::from_utf8(s).map_err(|e| {
                Error::format(format!("metadata key '{key}': string is not UTF-8 ({e})"))
            }),
            v => Err(Self::wrong(key, "string", v)),
        }
    }
    pub fn get_array(&self, key: &str) -> Result<&Array> {
        match self.require(key)? {
            Value::Array(a) => Ok(a),
            v => Err(Self::wrong(key, "array", v)),
        }
    }
    pub fn get_str_array(&self, key: &str) -> Result<&[Vec<u8>]> {
        match self.get_array(key)? {
            Array::String(v) => Ok(v),
            a => Err(Error::format(format!(
                "metadata key '{key}': expected array[string], found array[{}]",
                a.elem_type().name()
            ))),
        }
    }
    pub fn get_f32_array(&self, key: &str) -> Result<&[f32]> {
        match self.get_array(key)? {
            Array::F32(v) => Ok(v),
            a => Err(Error::format(format!(
                "metadata key '{key}': expected array[f32], found array[{}]",
                a.elem_type().name()
            ))),
        }
    }
    pub fn get_i32_array(&self, key: &str) -> Result<&[i32]> {
        match self.get_array(key)? {
            Array::I32(v) => Ok(v),
            a => Err(Error::format(format!(
                "metadata key '{key}': expected array[i32], found array[{}]",
                a.elem_type().name()
            ))),
        }
    }
}

/// A bounds-checked little-endian cursor that knows its absolute offset.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(Error::format(format!(
                "offset {}: {} needs {n} bytes, only {} left in the file",
                self.pos,
                what(),
                self.left()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &dyn Fn() -> String) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }

    /// A count of items of at least `min_size` bytes each, refused if they could not all fit in
    /// what is left of the file.
    fn count(&mut self, min_size: usize, what: &dyn Fn() -> String) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let need = n.checked_mul(min_size as u64);
        match need {
            Some(need) if need <= self.left() as u64 => Ok(n as usize),
            _ => Err(Error::format(format!(
                "offset {at}: {} is {n}, but only {} bytes are left in the file",
                what(),
                self.left()
            ))),
        }
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<Vec<u8>> {
        let n = self.count(1, &|| format!("length of {}", what()))?;
        Ok(self.take(n, what)?.to_vec())
    }
}

/// Parses and validates the header of a GGUF image.
pub fn parse_header(buf: &[u8]) -> Result<Header> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.u32(&|| "magic".into())?;
    if magic != GGUF_MAGIC {
        return Err(Error::format(format!(
            "offset 0: bad magic {:02x?} (expected \"GGUF\")",
            magic.to_le_bytes()
        )));
    }
    let version = c.u32(&|| "version".into())?;
    if version == 0 || version > 0xffff {
        // A big-endian writer stores small numbers in the high bytes.
        if version.swap_bytes() <= 3 && version != 0 {
            return Err(Error::unsupported(format!(
                "offset 4: version field {version:#x} looks like a big-endian GGUF (version {}); \
                 big-endian files are unsupported",
                version.swap_bytes()
            )));
        }
        return Err(Error::format(format!("offset 4: invalid version {version}")));
    }
    if version == 1 {
        return Err(Error::unsupported(
            "offset 4: GGUF version 1 (32-bit counts) is unsupported; convert with a current llama.cpp",
        ));
    }
    if version > 3 {
        return Err(Error::unsupported(format!(
            "offset 4: GGUF version {version} is newer than the supported 2 and 3"
        )));
    }

    // Minimum on-disk sizes: a tensor info is name length + n_dims + type + offset; a key/value
    // is key length + value type + one byte of value.
    let n_tensors = c.count(8 + 4 + 4 + 8, &|| "tensor count".into())?;
    let n_kv = c.count(8 + 4 + 1, &|| "metadata key/value count".into())?;

    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv);
    let mut seen_keys = std::collections::HashSet::with_capacity(n_kv);
    for i in 0..n_kv {
        let at = c.pos;
        let key = c.string(&|| format!("metadata key #{i}"))?;
        let key = String::from_utf8(key).map_err(|_| {
            Error::format(format!("offset {at}: metadata key #{i} is not valid UTF-8"))
        })?;
        if key.is_empty() {
            return Err(Error::format(format!("offset {at}: metadata key #{i} is empty")));
        }
        if !seen_keys.insert(key.clone()) {
            return Err(Error::format(format!("offset {at}: duplicate metadata key '{key}'")));
        }
        let value = read_value(&mut c, &key)?;
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) if *a != 0 && a.is_power_of_two() => *a as u64,
        Some((_, v)) => {
            return Err(Error::format(format!(
                "metadata key 'general.alignment': must be a non-zero power of two u32, found {} {}",
                v.type_name(),
                v.to_text(4)
            )))
        }
    };

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors);
    let mut seen_names = std::collections::HashSet::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let at = c.pos;
        let name = c.string(&|| format!("name of tensor #{i}"))?;
        let name = String::from_utf8(name).map_err(|_| {
            Error::format(format!("offset {at}: name of tensor #{i} is not valid UTF-8"))
        })?;
        let label = format!("tensor #{i} '{name}'");
        if !seen_names.insert(name.clone()) {
            return Err(Error::format(format!("offset {at}: duplicate tensor name '{name}'")));
        }
        let at = c.pos;
        let n_dims = c.u32(&|| format!("{label}: n_dims"))? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(Error::format(format!(
                "offset {at}: {label}: n_dims {n_dims} is outside 1..={MAX_DIMS}"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims);
        let mut n_elements: u64 = 1;
        for d in 0..n_dims {
            let at = c.pos;
            let v = c.u64(&|| format!("{label}: dim {d}"))?;
            if v == 0 || v > i64::MAX as u64 {
                return Err(Error::format(format!("offset {at}: {label}: dim {d} is {v}")));
            }
            n_elements = n_elements.checked_mul(v).filter(|&n| n <= i64::MAX as u64).ok_or_else(
                || {
                    Error::format(format!(
                        "offset {at}: {label}: element count overflows at dim {d} ({v})"
                    ))
                },
            )?;
            dims.push(v);
        }
        let at = c.pos;
        let type_id = c.u32(&|| format!("{label}: type"))?;
        let ty = GgmlType::from_id(type_id).ok_or_else(|| {
            Error::format(format!("offset {at}: {label}: unknown tensor type id {type_id}"))
        })?;
        let row_bytes = ty.row_bytes(dims[0]).ok_or_else(|| {
            Error::format(format!(
                "{label}: row length {} is not a multiple of {ty}'s block size {}",
                dims[0],
                ty.block_elems()
            ))
        })?;
        let n_bytes = row_bytes
            .checked_mul(n_elements / dims[0])
            .ok_or_else(|| Error::format(format!("{label}: byte size overflows")))?;
        let at = c.pos;
        let offset = c.u64(&|| format!("{label}: data offset"))?;
        if offset % alignment != 0 {
            return Err(Error::format(format!(
                "offset {at}: {label}: data offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        tensors.push(TensorInfo { name, dims, ty, offset, n_bytes, n_elements });
    }

    let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    for t in &tensors {
        let end = data_offset.checked_add(t.offset).and_then(|s| s.checked_add(t.n_bytes));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(Error::format(format!(
                    "tensor '{}': data range [{}, {}) exceeds file size {file_len}",
                    t.name,
                    data_offset.saturating_add(t.offset),
                    data_offset.saturating_add(t.offset).saturating_add(t.n_bytes)
                )))
            }
        }
    }
    Ok(Header { version, metadata, tensors, alignment, data_offset })
}

fn read_value(c: &mut Cursor, key: &str) -> Result<Value> {
    let at = c.pos;
    let type_id = c.u32(&|| format!("type of metadata key '{key}'"))?;
    let ty = ValueType::from_id(type_id).ok_or_else(|| {
        Error::format(format!("offset {at}: metadata key '{key}': unknown value type {type_id}"))
    })?;
    let what = || format!("value of metadata key '{key}'");
    Ok(match ty {
        ValueType::U8 => Value::U8(c.u8(&what)?),
        ValueType::I8 => Value::I8(c.u8(&what)? as i8),
        ValueType::U16 => Value::U16(c.u16(&what)?),
        ValueType::I16 => Value::I16(c.u16(&what)? as i16),
        ValueType::U32 => Value::U32(c.u32(&what)?),
        ValueType::I32 => Value::I32(c.u32(&what)? as i32),
        ValueType::F32 => Value::F32(f32::from_bits(c.u32(&what)?)),
        ValueType::U64 => Value::U64(c.u64(&what)?),
        ValueType::I64 => Value::I64(c.u64(&what)? as i64),
        ValueType::F64 => Value::F64(f64::from_bits(c.u64(&what)?)),
        ValueType::Bool => {
            let b = c.u8(&what)?;
            if b > 1 {
                return Err(Error::format(format!(
                    "offset {}: metadata key '{key}': bool byte is {b}",
                    c.pos - 1
                )));
            }
            Value::Bool(b == 1)
        }
        ValueType::String => Value::String(c.string(&what)?),
        ValueType::Array => Value::Array(read_array(c, key)?),
    })
}

fn read_array(c: &mut Cursor, key: &str) -> Result<Array> {
    let at = c.pos;
    let type_id = c.u32(&|| format!("element type of metadata array '{key}'"))?;
    let ty = ValueType::from_id(type_id).ok_or_else(|| {
        Error::format(format!(
            "offset {at}: metadata array '{key}': unknown element type {type_id}"
        ))
    })?;
    if ty == ValueType::Array {
        return Err(Error::unsupported(format!(
            "offset {at}: metadata array '{key}': arrays of arrays are unsupported"
        )));
    }
    let n = c.count(ty.min_size(), &|| format!("length of metadata array '{key}'"))?;
    let what = || format!("elements of metadata array '{key}'");
    macro_rules! fixed {
        ($variant:ident, $t:ty, $size:expr) => {{
            let bytes = c.take(n * $size, &what)?;
            Array::$variant(
                bytes.chunks_exact($size).map(|b| <$t>::from_le_bytes(b.try_into().unwrap())).collect(),
            )
        }};
    }
    Ok(match ty {
        ValueType::U8 => Array::U8(c.take(n, &what)?.to_vec()),
        ValueType::I8 => Array::I8(c.take(n, &what)?.iter().map(|&b| b as i8).collect()),
        ValueType::U16 => fixed!(U16, u16, 2),
        ValueType::I16 => fixed!(I16, i16, 2),
        ValueType::U32 => fixed!(U32, u32, 4),
        ValueType::I32 => fixed!(I32, i32, 4),
        ValueType::F32 => fixed!(F32, f32, 4),
        ValueType::U64 => fixed!(U64, u64, 8),
        ValueType::I64 => fixed!(I64, i64, 8),
        ValueType::F64 => fixed!(F64, f64, 8),
        ValueType::Bool => {
            let bytes = c.take(n, &what)?;
            if let Some(i) = bytes.iter().position(|&b| b > 1) {
                return Err(Error::format(format!(
                    "offset {}: metadata array '{key}': bool element {i} is {}",
                    c.pos - n + i,
                    bytes[i]
                )));
            }
            Array::Bool(bytes.iter().map(|&b| b == 1).collect())
        }
        ValueType::String => {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(c.string(&|| format!("element {i} of metadata array '{key}'"))?);
            }
            Array::String(v)
        }
        ValueType::Array => unreachable!("refused above"),
    })
}
