//! The GGUF v2/v3 reader.
//!
//! Every count and length read from the file is checked against the bytes that are left (and
//! against ggml's own limits) before anything is allocated or looped over, so a hostile header
//! cannot make the reader allocate more than a small multiple of the file's own size; what is
//! allocated is reserved fallibly, so a failure is an `OutOfMemory` error, not an abort. Every
//! refusal names the offset, the key or tensor involved, and the value found.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::value::{Array, Value, ValueType};
use crate::error::{Error, ErrorKind, Result};
use crate::quant::GgmlType;

/// "GGUF" read as a little-endian u32.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// `general.alignment` when the file does not set it.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: usize = 4;
/// Longest string (key, value, array element, tensor name) accepted: ggml's GGUF_MAX_STRING_LENGTH.
pub const MAX_STRING_LEN: u64 = 1 << 30;
/// Most elements in one metadata array: ggml's GGUF_MAX_ARRAY_ELEMENTS.
pub const MAX_ARRAY_LEN: u64 = 1 << 30;
/// Longest tensor name: ggml keeps names in 64 bytes with a terminating NUL (GGML_MAX_NAME).
pub const MAX_TENSOR_NAME_LEN: usize = 63;

// The fewest bytes a key/value takes: key length, a one-byte key, value type, a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
// The fewest bytes a tensor info takes: name length, one-byte name, n_dims, one dim, type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 1 + 4 + 8 + 4 + 8;

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
        let file = File::open(path).map_err(|e| Error::io(format!("{shown}: cannot open: {e}")))?;
        let backing = if mmap {
            let len = file
                .metadata()
                .map_err(|e| Error::io(format!("{shown}: {e}")))?
                .len();
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
        let meta_index = header
            .metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        let tensor_index = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Gguf {
            backing,
            header,
            meta_index,
            tensor_index,
            path: None,
        })
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
        self.meta_index
            .get(key)
            .map(|&i| &self.header.metadata[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index
            .get(name)
            .map(|&i| &self.header.tensors[i])
    }

    /// The bytes of a tensor of this file (its range was checked to lie inside the file when
    /// the file was opened). Panics if `t` is not one of this file's tensors.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.header.data_offset + t.offset) as usize;
        &self.backing.bytes()[start..start + t.n_bytes as usize]
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| Error::format(format!("metadata key '{key}' is missing")))
    }

    fn wrong(key: &str, want: &str, v: &Value) -> Error {
        Error::format(format!(
            "metadata key '{key}': expected {want}, found {} {}",
            v.type_name(),
            v.to_text(4)
        ))
    }

    /// An integer key of any width that fits in u32 (llama.cpp's converters vary the width).
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        let v = self.require(key)?;
        let n = v
            .as_u64()
            .ok_or_else(|| Self::wrong(key, "an unsigned integer", v))?;
        u32::try_from(n).map_err(|_| {
            Error::format(format!(
                "metadata key '{key}': value {n} does not fit in u32"
            ))
        })
    }
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| Self::wrong(key, "an unsigned integer", v))
    }
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        let v = self.require(key)?;
        v.as_i64().ok_or_else(|| Self::wrong(key, "an integer", v))
    }
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| Self::wrong(key, "a float", v))
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

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.left() as u64 {
            return Err(Error::format(format!(
                "offset {}: {} needs {n} bytes, only {} left in the file",
                self.pos,
                what(),
                self.left()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64, what)?);
        Ok(a)
    }
    fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &dyn Fn() -> String) -> Result<u16> {
        self.array(what).map(u16::from_le_bytes)
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A count of items of at least `min_size` bytes each, refused when it is over `max` or
    /// when that many items could not fit in what is left of the file.
    fn count(&mut self, min_size: u64, max: u64, what: &dyn Fn() -> String) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        if n > max {
            return Err(Error::format(format!(
                "offset {at}: {} is {n}, over the limit of {max}",
                what()
            )));
        }
        match n.checked_mul(min_size) {
            Some(need) if need <= self.left() as u64 => Ok(n as usize),
            need => Err(Error::format(format!(
                "offset {at}: {} is {n} (at least {} bytes), but only {} bytes are left in the \
                 file",
                what(),
                need.map_or_else(|| format!("{n} × {min_size}"), |b| b.to_string()),
                self.left()
            ))),
        }
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<Vec<u8>> {
        let n = self.count(1, MAX_STRING_LEN, &|| format!("length of {}", what()))?;
        let bytes = self.take(n as u64, what)?;
        let mut v = Vec::new();
        reserve(&mut v, n, what)?;
        v.extend_from_slice(bytes);
        Ok(v)
    }
}

/// Reserves room for `n` items or reports that the memory is not there: Rust aborts the process
/// on a failed allocation, and a large but well-formed file must not be able to do that.
fn reserve<T>(v: &mut Vec<T>, n: usize, what: &dyn Fn() -> String) -> Result<()> {
    v.try_reserve_exact(n).map_err(|_| {
        Error::new(
            ErrorKind::OutOfMemory,
            format!(
                "cannot allocate {n} × {} bytes for {}",
                std::mem::size_of::<T>(),
                what()
            ),
        )
    })
}

/// Parses and validates the header of a GGUF image: everything but the tensor bytes, whose
/// ranges are checked to lie inside `buf`, aligned and without overlap.
pub fn parse_header(buf: &[u8]) -> Result<Header> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.u32(&|| "magic".into())?;
    if magic == GGUF_MAGIC.swap_bytes() {
        return Err(Error::unsupported(
            "offset 0: magic \"FUGG\" is \"GGUF\" byte-swapped: big-endian GGUF files are \
             unsupported",
        ));
    }
    if magic != GGUF_MAGIC {
        return Err(Error::format(format!(
            "offset 0: bad magic {:?} (bytes {:02x?}), expected \"GGUF\"",
            String::from_utf8_lossy(&magic.to_le_bytes()),
            magic.to_le_bytes()
        )));
    }
    let version = c.u32(&|| "version".into())?;
    if version == 0 || version > 0xffff {
        // A big-endian writer stores the small version number in the high bytes.
        let swapped = version.swap_bytes();
        if (2..=3).contains(&swapped) {
            return Err(Error::unsupported(format!(
                "offset 4: version field {version:#010x} is version {swapped} written big-endian; \
                 big-endian GGUF files are unsupported"
            )));
        }
        return Err(Error::format(format!(
            "offset 4: invalid version {version} ({version:#x})"
        )));
    }
    if version == 1 {
        return Err(Error::unsupported(
            "offset 4: GGUF version 1 (32-bit counts) is unsupported; convert the model with a \
             current llama.cpp",
        ));
    }
    if version > 3 {
        return Err(Error::unsupported(format!(
            "offset 4: GGUF version {version} is newer than the supported 2 and 3"
        )));
    }

    // Both tables follow the counts, so together they must fit in what is left.
    let n_tensors_raw = c.u64(&|| "tensor count".into())?;
    let n_kv_raw = c.u64(&|| "metadata key/value count".into())?;
    let left = c.left() as u64;
    let tensor_table_min = n_tensors_raw
        .checked_mul(MIN_TENSOR_INFO_BYTES)
        .filter(|&b| b <= left);
    let Some(tensor_table_min) = tensor_table_min else {
        return Err(Error::format(format!(
            "offset 8: tensor count is {n_tensors_raw}, but only {left} bytes are left in the \
             file (a tensor info takes at least {MIN_TENSOR_INFO_BYTES})"
        )));
    };
    let kv_table_min = n_kv_raw.checked_mul(MIN_KV_BYTES);
    if kv_table_min.map_or(true, |b| b > left - tensor_table_min) {
        return Err(Error::format(format!(
            "offset 16: metadata key/value count is {n_kv_raw}, but only {left} bytes are left \
             in the file for it and {n_tensors_raw} tensor infos (a key/value takes at least \
             {MIN_KV_BYTES}, a tensor info {MIN_TENSOR_INFO_BYTES})"
        )));
    }
    let (n_tensors, n_kv) = (n_tensors_raw as usize, n_kv_raw as usize);

    let mut metadata: Vec<(String, Value)> = Vec::new();
    reserve(&mut metadata, n_kv, &|| "the metadata table".into())?;
    let mut seen_keys: HashMap<String, usize> = HashMap::new();
    for i in 0..n_kv {
        let at = c.pos;
        let key = c.string(&|| format!("metadata key #{i}"))?;
        let key = String::from_utf8(key).map_err(|e| {
            Error::format(format!(
                "offset {at}: metadata key #{i} is not valid UTF-8 ({e}): {:?}",
                String::from_utf8_lossy(e.as_bytes())
            ))
        })?;
        if key.is_empty() {
            return Err(Error::format(format!(
                "offset {at}: metadata key #{i} is empty"
            )));
        }
        if let Some(j) = seen_keys.insert(key.clone(), i) {
            return Err(Error::format(format!(
                "offset {at}: duplicate metadata key '{key}' (key #{j} and #{i})"
            )));
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

    let mut tensors: Vec<TensorInfo> = Vec::new();
    reserve(&mut tensors, n_tensors, &|| "the tensor-info table".into())?;
    // Where each tensor's info starts, to point refusals found after the table at it.
    let mut info_at: Vec<usize> = Vec::new();
    reserve(&mut info_at, n_tensors, &|| "the tensor-info table".into())?;
    let mut seen_names: HashMap<String, usize> = HashMap::new();
    for i in 0..n_tensors {
        let entry_at = c.pos;
        let name = c.string(&|| format!("name of tensor #{i}"))?;
        let name = String::from_utf8(name).map_err(|e| {
            Error::format(format!(
                "offset {entry_at}: name of tensor #{i} is not valid UTF-8 ({e}): {:?}",
                String::from_utf8_lossy(e.as_bytes())
            ))
        })?;
        if name.is_empty() {
            return Err(Error::format(format!(
                "offset {entry_at}: name of tensor #{i} is empty"
            )));
        }
        if name.len() > MAX_TENSOR_NAME_LEN {
            return Err(Error::format(format!(
                "offset {entry_at}: name of tensor #{i} is too long: {} bytes, ggml allows \
                 {MAX_TENSOR_NAME_LEN} ('{name}')",
                name.len()
            )));
        }
        if let Some(j) = seen_names.insert(name.clone(), i) {
            return Err(Error::format(format!(
                "offset {entry_at}: duplicate tensor name '{name}' (tensor #{j} and #{i})"
            )));
        }
        let label = format!("tensor #{i} '{name}'");
        let at = c.pos;
        let n_dims = c.u32(&|| format!("{label}: n_dims"))?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(Error::format(format!(
                "offset {at}: {label}: n_dims {n_dims} is outside 1..={MAX_DIMS}"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        let mut n_elements: u64 = 1;
        for d in 0..n_dims as usize {
            let at = c.pos;
            let v = c.u64(&|| format!("{label}: dim {d}"))?;
            if v == 0 {
                return Err(Error::format(format!("offset {at}: {label}: dim {d} is 0")));
            }
            if v > i64::MAX as u64 {
                return Err(Error::format(format!(
                    "offset {at}: {label}: dim {d} is {v}, over i64::MAX"
                )));
            }
            n_elements = match n_elements.checked_mul(v).filter(|&n| n <= i64::MAX as u64) {
                Some(n) => n,
                None => {
                    return Err(Error::format(format!(
                        "offset {at}: {label}: element count overflows i64 at dim {d} (shape \
                         {:?} then {v})",
                        dims
                    )))
                }
            };
            dims.push(v);
        }
        let at = c.pos;
        let type_id = c.u32(&|| format!("{label}: type"))?;
        let ty = GgmlType::from_id(type_id).ok_or_else(|| {
            Error::format(format!(
                "offset {at}: {label}: unknown tensor type id {type_id}"
            ))
        })?;
        let block = ty.block_elems() as u64;
        if dims[0] % block != 0 {
            return Err(Error::format(format!(
                "offset {at}: {label}: row length {} is not a multiple of {ty}'s block size \
                 {block}",
                dims[0]
            )));
        }
        let n_bytes = (n_elements / block).checked_mul(ty.block_bytes() as u64).ok_or_else(|| {
            Error::format(format!(
                "offset {at}: {label}: byte size of {ty} {dims:?} overflows u64"
            ))
        })?;
        let at = c.pos;
        let offset = c.u64(&|| format!("{label}: data offset"))?;
        if offset % alignment != 0 {
            return Err(Error::format(format!(
                "offset {at}: {label}: data offset {offset} is not a multiple of the alignment \
                 {alignment}"
            )));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
            n_bytes,
            n_elements,
        });
        info_at.push(entry_at);
    }

    // As in ggml: the data section starts at the next multiple of the alignment, and a file
    // without tensors has none (it may end right after its metadata, unpadded).
    let data_offset = match n_tensors {
        0 => c.pos as u64,
        _ => (c.pos as u64).div_ceil(alignment) * alignment,
    };
    let file_len = buf.len() as u64;
    for (t, &at) in tensors.iter().zip(&info_at) {
        let start = data_offset.checked_add(t.offset);
        match start.and_then(|s| s.checked_add(t.n_bytes)) {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(Error::format(format!(
                    "offset {at}: tensor '{}': data offset {} + {} bytes ends at byte {} of the \
                     file, which exceeds file size {file_len} (the data section starts at byte \
                     {data_offset})",
                    t.name,
                    t.offset,
                    t.n_bytes,
                    (data_offset as u128) + (t.offset as u128) + (t.n_bytes as u128),
                )))
            }
        }
    }
    // Ranges that share bytes mean a corrupt table; ggml's writer never produces them.
    let mut order: Vec<usize> = Vec::new();
    reserve(&mut order, n_tensors, &|| "the tensor-info table".into())?;
    order.extend(0..n_tensors);
    order.sort_unstable_by_key(|&i| (tensors[i].offset, i));
    for w in order.windows(2) {
        let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
        if b.offset < a.offset + a.n_bytes {
            return Err(Error::format(format!(
                "offset {}: tensor '{}': data [{}, {}) overlaps tensor '{}' data [{}, {})",
                info_at[w[1]],
                b.name,
                b.offset,
                b.offset + b.n_bytes,
                a.name,
                a.offset,
                a.offset + a.n_bytes
            )));
        }
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

fn read_value(c: &mut Cursor, key: &str) -> Result<Value> {
    let at = c.pos;
    let type_id = c.u32(&|| format!("type of metadata key '{key}'"))?;
    let ty = ValueType::from_id(type_id).ok_or_else(|| {
        Error::format(format!(
            "offset {at}: metadata key '{key}': unknown value type {type_id}"
        ))
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
            let at = c.pos;
            let b = c.u8(&what)?;
            if b > 1 {
                return Err(Error::format(format!(
                    "offset {at}: metadata key '{key}': bool byte is {b}, not 0 or 1"
                )));
            }
            Value::Bool(b == 1)
        }
        ValueType::String => Value::String(c.string(&what)?),
        ValueType::Array => Value::Array(read_array(c, key)?),
    })
}

/// `n` fixed-size little-endian elements from `bytes` (exactly `n * N` of them).
fn decode<T, const N: usize>(
    bytes: &[u8],
    n: usize,
    what: &dyn Fn() -> String,
    f: fn([u8; N]) -> T,
) -> Result<Vec<T>> {
    let mut v = Vec::new();
    reserve(&mut v, n, what)?;
    v.extend(bytes.chunks_exact(N).map(|b| {
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        f(a)
    }));
    Ok(v)
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
    let n = c.count(ty.min_size() as u64, MAX_ARRAY_LEN, &|| {
        format!("length of metadata array '{key}' ({})", ty.name())
    })?;
    let what = || format!("elements of metadata array '{key}'");
    if ty == ValueType::String {
        let mut v = Vec::new();
        reserve(&mut v, n, &what)?;
        for i in 0..n {
            v.push(c.string(&|| format!("element {i} of metadata array '{key}'"))?);
        }
        return Ok(Array::String(v));
    }
    // Every other element type has a fixed size: n was checked to fit in what is left.
    let size = ty.min_size();
    let start = c.pos;
    let bytes = c.take((n * size) as u64, &what)?;
    Ok(match ty {
        ValueType::U8 => Array::U8(decode(bytes, n, &what, |[b]| b)?),
        ValueType::I8 => Array::I8(decode(bytes, n, &what, |[b]| b as i8)?),
        ValueType::U16 => Array::U16(decode(bytes, n, &what, u16::from_le_bytes)?),
        ValueType::I16 => Array::I16(decode(bytes, n, &what, i16::from_le_bytes)?),
        ValueType::U32 => Array::U32(decode(bytes, n, &what, u32::from_le_bytes)?),
        ValueType::I32 => Array::I32(decode(bytes, n, &what, i32::from_le_bytes)?),
        ValueType::F32 => Array::F32(decode(bytes, n, &what, f32::from_le_bytes)?),
        ValueType::U64 => Array::U64(decode(bytes, n, &what, u64::from_le_bytes)?),
        ValueType::I64 => Array::I64(decode(bytes, n, &what, i64::from_le_bytes)?),
        ValueType::F64 => Array::F64(decode(bytes, n, &what, f64::from_le_bytes)?),
        ValueType::Bool => {
            if let Some(i) = bytes.iter().position(|&b| b > 1) {
                return Err(Error::format(format!(
                    "offset {}: metadata array '{key}': bool element {i} is {}, not 0 or 1",
                    start + i,
                    bytes[i]
                )));
            }
            Array::Bool(decode(bytes, n, &what, |[b]| b == 1)?)
        }
        ValueType::String | ValueType::Array => unreachable!("handled above"),
    })
}
