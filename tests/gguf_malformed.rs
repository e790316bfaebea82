//! Malformed GGUF files, generated from two fixtures (the real tiny-mixtral Q4_K_M file and a
//! writer-made file carrying every metadata value type), must each be refused with an error of
//! the right kind whose message names the problem, without a panic and without an allocation
//! sized by an unchecked count: the cases run in a child process limited to 2 GiB of address
//! space, so such an allocation would fail there and abort the child.
//!
//! Field boundaries come from a walk of the layout written here, independent of the reader.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use xdan::gguf::{parse_header, Array, Gguf, GgufWriter, Value, MAX_ARRAY_LEN, MAX_STRING_LEN};
use xdan::quant::GgmlType;
use xdan::{Error, ErrorKind};

const CHILD_ENV: &str = "XDAN_GGUF_MALFORMED_CHILD";
const ADDRESS_SPACE_LIMIT: u64 = 2 << 30;

fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

// ---------------------------------------------------------------------------------------------
// An independent walk of the GGUF layout: every field with its offset, size and owner.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Magic,
    Version,
    NTensors,
    NKv,
    KeyLen,
    Key,
    ValueType,
    Scalar(u32),
    StrLen,
    Str,
    ArrType,
    ArrLen,
    /// Array element `i` of value type `ty`.
    Elem {
        ty: u32,
        i: usize,
    },
    /// Length of string element `i` of an array.
    ElemLen(usize),
    NameLen,
    Name,
    NDims,
    Dim(usize),
    TensorType,
    Offset,
}

#[derive(Clone, Debug)]
struct Field {
    at: usize,
    len: usize,
    kind: Kind,
    /// The key (for metadata fields) or tensor name (for tensor-info fields).
    owner: String,
    /// Index of the key or tensor.
    index: usize,
}

#[derive(Clone, Debug)]
struct Tensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    offset: u64,
    n_bytes: u64,
}

struct Layout {
    fields: Vec<Field>,
    tensors: Vec<Tensor>,
    alignment: u64,
    header_end: usize,
    data_offset: u64,
}

impl Layout {
    fn find(&self, pred: impl Fn(&Field) -> bool) -> Vec<Field> {
        self.fields.iter().filter(|f| pred(f)).cloned().collect()
    }
    /// The end of the last tensor's bytes: cutting anywhere before it breaks the file.
    fn data_end(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| self.data_offset + t.offset + t.n_bytes)
            .max()
            .unwrap_or(0)
    }
}

fn fixed_size(ty: u32) -> Option<usize> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

fn walk(b: &[u8]) -> Layout {
    let mut fields = Vec::new();
    let mut pos = 0usize;
    let mut field = |pos: &mut usize, len: usize, kind: Kind, owner: &str, index: usize| {
        fields.push(Field {
            at: *pos,
            len,
            kind,
            owner: owner.to_string(),
            index,
        });
        let v = &b[*pos..*pos + len];
        *pos += len;
        let mut x = [0u8; 8];
        x[..len.min(8)].copy_from_slice(&v[..len.min(8)]);
        u64::from_le_bytes(x)
    };
    field(&mut pos, 4, Kind::Magic, "", 0);
    field(&mut pos, 4, Kind::Version, "", 0);
    let n_tensors = field(&mut pos, 8, Kind::NTensors, "", 0) as usize;
    let n_kv = field(&mut pos, 8, Kind::NKv, "", 0) as usize;
    let mut alignment = 32;
    for i in 0..n_kv {
        let n = field(&mut pos, 8, Kind::KeyLen, "", i) as usize;
        let key = String::from_utf8(b[pos..pos + n].to_vec()).unwrap();
        field(&mut pos, n, Kind::Key, &key, i);
        let ty = field(&mut pos, 4, Kind::ValueType, &key, i) as u32;
        match ty {
            8 => {
                let n = field(&mut pos, 8, Kind::StrLen, &key, i) as usize;
                field(&mut pos, n, Kind::Str, &key, i);
            }
            9 => {
                let ety = field(&mut pos, 4, Kind::ArrType, &key, i) as u32;
                let len = field(&mut pos, 8, Kind::ArrLen, &key, i) as usize;
                for e in 0..len {
                    if ety == 8 {
                        let n = field(&mut pos, 8, Kind::ElemLen(e), &key, i) as usize;
                        field(&mut pos, n, Kind::Elem { ty: 8, i: e }, &key, i);
                    } else {
                        field(
                            &mut pos,
                            fixed_size(ety).unwrap(),
                            Kind::Elem { ty: ety, i: e },
                            &key,
                            i,
                        );
                    }
                }
            }
            t => {
                let v = field(&mut pos, fixed_size(t).unwrap(), Kind::Scalar(t), &key, i);
                if key == "general.alignment" {
                    alignment = v;
                }
            }
        }
    }
    let mut tensors = Vec::new();
    for i in 0..n_tensors {
        let n = field(&mut pos, 8, Kind::NameLen, "", i) as usize;
        let name = String::from_utf8(b[pos..pos + n].to_vec()).unwrap();
        field(&mut pos, n, Kind::Name, &name, i);
        let n_dims = field(&mut pos, 4, Kind::NDims, &name, i) as usize;
        let dims: Vec<u64> = (0..n_dims)
            .map(|d| field(&mut pos, 8, Kind::Dim(d), &name, i))
            .collect();
        let ty = GgmlType::from_id(field(&mut pos, 4, Kind::TensorType, &name, i) as u32).unwrap();
        let offset = field(&mut pos, 8, Kind::Offset, &name, i);
        let n: u64 = dims.iter().product();
        let n_bytes = n / ty.block_elems() as u64 * ty.block_bytes() as u64;
        tensors.push(Tensor {
            name,
            dims,
            ty,
            offset,
            n_bytes,
        });
    }
    let data_offset = (pos as u64).div_ceil(alignment) * alignment;
    Layout {
        fields,
        tensors,
        alignment,
        header_end: pos,
        data_offset,
    }
}

// ---------------------------------------------------------------------------------------------
// The fixtures.

/// A writer-made file with every scalar type, an array of every element type, an alignment key
/// and tensors of several types and shapes.
fn all_types_fixture() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set_str("general.architecture", "llama")
        .set_u32("general.alignment", 32)
        .set("t.u8", Value::U8(200))
        .set("t.i8", Value::I8(-100))
        .set("t.u16", Value::U16(60000))
        .set("t.i16", Value::I16(-30000))
        .set_u32("t.u32", 4_000_000_000)
        .set("t.i32", Value::I32(-2_000_000_000))
        .set_f32("t.f32", 1.5)
        .set_bool("t.bool", true)
        .set_bool("t.bfal", false)
        .set_str("t.str", "héllo")
        .set("t.u64", Value::U64(u64::MAX - 1))
        .set("t.i64", Value::I64(i64::MIN + 1))
        .set("t.f64", Value::F64(-0.125))
        .set_array("a.u8", Array::U8(vec![1, 2, 3]))
        .set_array("a.i8", Array::I8(vec![-1, 0, 1]))
        .set_array("a.u16", Array::U16(vec![1, 65535]))
        .set_array("a.i16", Array::I16(vec![-32768, 32767]))
        .set_array("a.u32", Array::U32(vec![7, 8, 9]))
        .set_array("a.i32", Array::I32(vec![-7, 8]))
        .set_array("a.f32", Array::F32(vec![0.5, -0.25]))
        .set_array("a.boo", Array::Bool(vec![true, false, true]))
        .set_array(
            "a.str",
            Array::String(vec![b"x".to_vec(), b"".to_vec(), b"\xff\xfe".to_vec()]),
        )
        .set_array("a.u64", Array::U64(vec![u64::MAX]))
        .set_array("a.i64", Array::I64(vec![i64::MIN, 5]))
        .set_array("a.f64", Array::F64(vec![1e300, -1e-300]))
        .set_array("a.emp", Array::F32(vec![]));
    let f32s: Vec<f32> = (0..24).map(|i| i as f32).collect();
    w.add_f32("tok.weight", &[4, 3, 2], &f32s).unwrap();
    w.add_f32("nrm.weight", &[8], &f32s[..8]).unwrap();
    w.add_tensor(
        "blk.q8",
        &[64, 2],
        GgmlType::Q8_0,
        (0..136).map(|i| i as u8).collect(),
    )
    .unwrap();
    w.add_tensor("blk.qk", &[256, 1, 1, 1], GgmlType::Q4_K, vec![3; 144])
        .unwrap();
    w.add_tensor("blk.f16", &[2, 2], GgmlType::F16, vec![0; 8])
        .unwrap();
    w.to_bytes()
}

fn tiny_mixtral() -> Vec<u8> {
    std::fs::read(data("tiny-mixtral/Q4_K_M/tiny-mixtral-Q4_K_M.gguf")).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Cases.

/// Where a case's bytes come from, made only when the case runs: a few hundred patched copies
/// of a 4 MiB fixture held at once would not fit in the address-space limit.
enum Src {
    /// The first `.1` bytes of fixture `.0`.
    Cut(usize, usize),
    /// Fixture `.0` with bytes replaced at the given offsets.
    Patch(usize, Vec<(usize, Vec<u8>)>),
    Own(Vec<u8>),
}

impl Src {
    fn bytes(&self, fixtures: &[Vec<u8>]) -> Vec<u8> {
        match self {
            Src::Cut(f, n) => fixtures[*f][..*n].to_vec(),
            Src::Patch(f, patches) => {
                let mut v = fixtures[*f].clone();
                for (at, new) in patches {
                    v[*at..*at + new.len()].copy_from_slice(new);
                }
                v
            }
            Src::Own(v) => v.clone(),
        }
    }
}

struct Case {
    name: String,
    src: Src,
    kind: ErrorKind,
    /// A piece of text the message must contain: what the problem is.
    keyword: String,
    /// For truncations: no offset the message names may lie at or past the cut.
    cut: Option<usize>,
}

struct Cases {
    list: Vec<Case>,
    categories: Vec<(String, usize)>,
}

impl Cases {
    fn category(&mut self, name: &str) {
        self.categories.push((name.to_string(), 0));
    }
    fn add(&mut self, name: String, src: Src, kind: ErrorKind, keyword: impl Into<String>) {
        self.categories.last_mut().unwrap().1 += 1;
        let cut = match src {
            Src::Cut(_, n) => Some(n),
            _ => None,
        };
        self.list.push(Case {
            name,
            src,
            kind,
            keyword: keyword.into(),
            cut,
        });
    }
    fn format(&mut self, name: String, src: Src, keyword: impl Into<String>) {
        self.add(name, src, ErrorKind::Format, keyword)
    }
}

/// A tiny xorshift generator: seeded, so every run builds the same cases.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Hand-serialized headers for what the writer refuses to write.
fn raw_file(
    kvs: &[(&[u8], u32, Vec<u8>)],
    tensors: &[(&[u8], &[u64], u32, u64)],
    data: usize,
) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kvs.len() as u64).to_le_bytes());
    for (k, ty, v) in kvs {
        b.extend((k.len() as u64).to_le_bytes());
        b.extend(*k);
        b.extend(ty.to_le_bytes());
        b.extend(v);
    }
    for (name, dims, ty, offset) in tensors {
        b.extend((name.len() as u64).to_le_bytes());
        b.extend(*name);
        b.extend((dims.len() as u32).to_le_bytes());
        for d in *dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
    }
    b.resize(b.len().div_ceil(32) * 32 + data, 0);
    b
}

fn build_cases(cases: &mut Cases, tag: &str, fi: usize, b: &[u8]) {
    let patched = |_: &[u8], at: usize, new: &[u8]| Src::Patch(fi, vec![(at, new.to_vec())]);
    let l = walk(b);
    let len = b.len();
    let header_end = l.header_end;

    // Truncation at every field boundary and in the middle of every multi-byte field.
    cases.category(&format!(
        "{tag}: truncation at every field boundary and mid-field"
    ));
    let mut cuts: Vec<usize> = Vec::new();
    for f in &l.fields {
        cuts.push(f.at);
        if f.len > 1 {
            cuts.push(f.at + f.len / 2);
        }
    }
    cuts.push(header_end);
    cuts.sort_unstable();
    cuts.dedup();
    let data_end = l.data_end() as usize;
    for cut in cuts {
        if cut >= data_end {
            continue; // nothing the file needs is cut off
        }
        let keyword = if cut < header_end {
            "left in the file"
        } else {
            "exceeds file size"
        };
        cases.format(format!("{tag}: cut at {cut}"), Src::Cut(fi, cut), keyword);
    }

    cases.category(&format!("{tag}: truncation at seeded random points"));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..60 {
        let cut = rng.below(data_end as u64) as usize;
        let keyword = if cut < header_end {
            "left in the file"
        } else {
            "exceeds file size"
        };
        cases.format(
            format!("{tag}: random cut at {cut}"),
            Src::Cut(fi, cut),
            keyword,
        );
    }

    cases.category(&format!("{tag}: bad magic"));
    for m in [b"GGML", b"ggjt", b"\0\0\0\0", b"GGUG", b"gguf"] {
        cases.format(format!("{tag}: magic {m:?}"), patched(b, 0, m), "bad magic");
    }
    cases.add(
        format!("{tag}: byte-swapped magic"),
        patched(b, 0, b"FUGG"),
        ErrorKind::Unsupported,
        "big-endian",
    );

    cases.category(&format!("{tag}: bad versions"));
    let v = |x: u32| patched(b, 4, &x.to_le_bytes());
    cases.format(format!("{tag}: version 0"), v(0), "invalid version 0");
    cases.add(
        format!("{tag}: version 1"),
        v(1),
        ErrorKind::Unsupported,
        "version 1",
    );
    cases.add(
        format!("{tag}: version 4"),
        v(4),
        ErrorKind::Unsupported,
        "version 4",
    );
    cases.add(
        format!("{tag}: version 65535"),
        v(65535),
        ErrorKind::Unsupported,
        "version 65535",
    );
    cases.add(
        format!("{tag}: big-endian v3"),
        v(3u32.swap_bytes()),
        ErrorKind::Unsupported,
        "big-endian",
    );
    cases.add(
        format!("{tag}: big-endian v2"),
        v(2u32.swap_bytes()),
        ErrorKind::Unsupported,
        "big-endian",
    );
    cases.format(
        format!("{tag}: version 0x01000000"),
        v(1u32.swap_bytes()),
        "invalid version",
    );
    cases.format(
        format!("{tag}: version u32::MAX"),
        v(u32::MAX),
        "invalid version",
    );

    // Counts and lengths: near u64::MAX, over ggml's limits, and just over what is left.
    cases.category(&format!("{tag}: huge tensor and key/value counts"));
    let n_tensors = l.tensors.len() as u64;
    let left = (len - 24) as u64;
    for n in [
        u64::MAX,
        u64::MAX / 33 + 1,
        i64::MAX as u64,
        1 << 40,
        left / 33 + 1,
    ] {
        cases.format(
            format!("{tag}: n_tensors {n}"),
            patched(b, 8, &n.to_le_bytes()),
            "tensor count",
        );
    }
    for n in [
        u64::MAX,
        u64::MAX / 14 + 1,
        1 << 40,
        (left - n_tensors * 33) / 14 + 1,
    ] {
        cases.format(
            format!("{tag}: n_kv {n}"),
            patched(b, 16, &n.to_le_bytes()),
            "key/value count",
        );
    }

    cases.category(&format!("{tag}: huge string lengths"));
    for f in l.find(|f| {
        matches!(
            f.kind,
            Kind::KeyLen | Kind::StrLen | Kind::ElemLen(_) | Kind::NameLen
        )
    }) {
        // An element's string: only the first and last of each array, to keep the count sane.
        if let Kind::ElemLen(e) = f.kind {
            let last = l
                .fields
                .iter()
                .filter(|g| g.index == f.index && matches!(g.kind, Kind::ElemLen(_)))
                .count()
                - 1;
            if e != 0 && e != last {
                continue;
            }
        }
        let keyword = match f.kind {
            Kind::KeyLen => format!("length of metadata key #{}", f.index),
            Kind::StrLen => format!("length of value of metadata key '{}'", f.owner),
            Kind::ElemLen(e) => format!("length of element {e} of metadata array '{}'", f.owner),
            _ => format!("length of name of tensor #{}", f.index),
        };
        let left = (len - f.at - 8) as u64;
        for n in [u64::MAX, MAX_STRING_LEN + 1, left + 1] {
            cases.format(
                format!("{tag}: {keyword} = {n}"),
                patched(b, f.at, &n.to_le_bytes()),
                keyword.clone(),
            );
        }
    }

    cases.category(&format!("{tag}: huge array lengths"));
    for f in l.find(|f| f.kind == Kind::ArrLen) {
        let ety = u32::from_le_bytes(b[f.at - 4..f.at].try_into().unwrap());
        let size = if ety == 8 {
            8
        } else {
            fixed_size(ety).unwrap()
        } as u64;
        let left = (len - f.at - 8) as u64;
        let keyword = format!("length of metadata array '{}'", f.owner);
        for n in [
            u64::MAX,
            (u64::MAX / size).saturating_add(1),
            MAX_ARRAY_LEN + 1,
            left / size + 1,
        ] {
            cases.format(
                format!("{tag}: {keyword} = {n}"),
                patched(b, f.at, &n.to_le_bytes()),
                keyword.clone(),
            );
        }
    }

    cases.category(&format!("{tag}: unknown value types"));
    for f in l.find(|f| f.kind == Kind::ValueType) {
        for t in [13u32, 255, u32::MAX] {
            let keyword = format!("metadata key '{}': unknown value type {t}", f.owner);
            cases.format(
                format!("{tag}: {keyword}"),
                patched(b, f.at, &t.to_le_bytes()),
                keyword,
            );
        }
    }
    for f in l.find(|f| f.kind == Kind::ArrType) {
        let keyword = format!("metadata array '{}': unknown element type 13", f.owner);
        cases.format(
            format!("{tag}: {keyword}"),
            patched(b, f.at, &13u32.to_le_bytes()),
            keyword,
        );
        let keyword = format!("metadata array '{}': arrays of arrays", f.owner);
        cases.add(
            format!("{tag}: {keyword}"),
            patched(b, f.at, &9u32.to_le_bytes()),
            ErrorKind::Unsupported,
            keyword,
        );
    }

    cases.category(&format!("{tag}: bool bytes over 1"));
    for f in l.find(|f| f.kind == Kind::Scalar(7) || matches!(f.kind, Kind::Elem { ty: 7, .. })) {
        for v in [2u8, 0xff] {
            let keyword = match f.kind {
                Kind::Elem { i, .. } => {
                    format!("metadata array '{}': bool element {i} is {v}", f.owner)
                }
                _ => format!("metadata key '{}': bool byte is {v}", f.owner),
            };
            cases.format(format!("{tag}: {keyword}"), patched(b, f.at, &[v]), keyword);
        }
    }

    cases.category(&format!("{tag}: non-UTF-8 keys and tensor names"));
    for f in l.find(|f| f.kind == Kind::Key).into_iter().take(4) {
        cases.format(
            format!("{tag}: key #{} not UTF-8", f.index),
            patched(b, f.at, &[0xff]),
            format!("metadata key #{} is not valid UTF-8", f.index),
        );
    }
    for f in l.find(|f| f.kind == Kind::Name).into_iter().take(4) {
        cases.format(
            format!("{tag}: tensor #{} not UTF-8", f.index),
            patched(b, f.at, &[0xc3]),
            format!("name of tensor #{} is not valid UTF-8", f.index),
        );
    }

    cases.category(&format!("{tag}: duplicate keys and tensor names"));
    for kind in [Kind::Key, Kind::Name] {
        let names = l.find(|f| f.kind == kind);
        let mut made = 0;
        for (i, a) in names.iter().enumerate() {
            for c in &names[i + 1..] {
                if a.len == c.len && made < 6 {
                    made += 1;
                    let what = if kind == Kind::Key {
                        "metadata key"
                    } else {
                        "tensor name"
                    };
                    let keyword = format!("duplicate {what} '{}'", a.owner);
                    cases.format(
                        format!("{tag}: {keyword} at #{}", c.index),
                        patched(b, c.at, a.owner.as_bytes()),
                        keyword,
                    );
                }
            }
        }
    }

    if let Some(f) = l
        .find(|f| f.kind == Kind::Scalar(4) && f.owner == "general.alignment")
        .first()
    {
        cases.category(&format!("{tag}: bad alignment values"));
        for a in [0u32, 3, 48, 0x8000_0001, u32::MAX] {
            cases.format(
                format!("{tag}: alignment {a}"),
                patched(b, f.at, &a.to_le_bytes()),
                format!("'general.alignment': must be a non-zero power of two u32, found u32 {a}"),
            );
        }
        // The same four bytes as an i32 or f32: the right size, the wrong type.
        for (t, name) in [(5u32, "i32"), (6, "f32")] {
            cases.format(
                format!("{tag}: alignment as {name}"),
                patched(b, f.at - 4, &t.to_le_bytes()),
                format!("'general.alignment': must be a non-zero power of two u32, found {name}"),
            );
        }
        // A larger power of two that some tensor offsets are not a multiple of.
        if let Some(t) = l.tensors.iter().find(|t| t.offset % 64 != 0) {
            cases.format(
                format!("{tag}: alignment 64"),
                patched(b, f.at, &64u32.to_le_bytes()),
                format!(
                    "'{}': data offset {} is not a multiple of the alignment 64",
                    t.name, t.offset
                ),
            );
        }
    }

    cases.category(&format!("{tag}: n_dims 0, 5 and u32::MAX"));
    for f in l.find(|f| f.kind == Kind::NDims).into_iter().take(6) {
        for n in [0u32, 5, u32::MAX] {
            let keyword = format!(
                "tensor #{} '{}': n_dims {n} is outside 1..=4",
                f.index, f.owner
            );
            cases.format(
                format!("{tag}: {keyword}"),
                patched(b, f.at, &n.to_le_bytes()),
                keyword,
            );
        }
    }

    cases.category(&format!("{tag}: zero, huge and overflowing dims"));
    let dim_fields = l.find(|f| matches!(f.kind, Kind::Dim(_)));
    for (ti, t) in l.tensors.iter().enumerate().take(8) {
        let dims: Vec<&Field> = dim_fields.iter().filter(|f| f.index == ti).collect();
        let label = format!("tensor #{ti} '{}'", t.name);
        for (d, f) in dims.iter().enumerate() {
            cases.format(
                format!("{tag}: {label} dim {d} = 0"),
                patched(b, f.at, &0u64.to_le_bytes()),
                format!("{label}: dim {d} is 0"),
            );
            cases.format(
                format!("{tag}: {label} dim {d} = u64::MAX"),
                patched(b, f.at, &u64::MAX.to_le_bytes()),
                format!("{label}: dim {d} is {}, over i64::MAX", u64::MAX),
            );
        }
        if dims.len() >= 2 {
            // 2^32 × 2^32 elements: past i64 at the second dim.
            let big = (1u64 << 32).to_le_bytes().to_vec();
            let v = Src::Patch(fi, vec![(dims[0].at, big.clone()), (dims[1].at, big)]);
            cases.format(
                format!("{tag}: {label} 2^32 x 2^32"),
                v,
                format!("{label}: element count overflows i64 at dim 1"),
            );
        } else if t.ty.block_elems() == 1 {
            // Within i64 elements but past u64 bytes.
            let n = (i64::MAX as u64) & !0xff;
            cases.format(
                format!("{tag}: {label} dim 0 = {n}"),
                patched(b, dims[0].at, &n.to_le_bytes()),
                format!("{label}: byte size of {}", t.ty),
            );
        }
        // Big but representable: the data no longer fits in the file.
        let big = 1u64 << 40;
        cases.format(
            format!("{tag}: {label} dim 0 = 2^40"),
            patched(b, dims[0].at, &big.to_le_bytes()),
            "exceeds file size",
        );
        if t.ty.block_elems() > 1 {
            let n = t.dims[0] + 1;
            cases.format(
                format!("{tag}: {label} row {n}"),
                patched(b, dims[0].at, &n.to_le_bytes()),
                format!(
                    "{label}: row length {n} is not a multiple of {}'s block size",
                    t.ty
                ),
            );
        }
    }

    cases.category(&format!("{tag}: unknown tensor types"));
    for f in l.find(|f| f.kind == Kind::TensorType).into_iter().take(6) {
        for t in [4u32, 5, 31, 36, 40, 1000, u32::MAX] {
            let keyword = format!(
                "tensor #{} '{}': unknown tensor type id {t}",
                f.index, f.owner
            );
            cases.format(
                format!("{tag}: {keyword}"),
                patched(b, f.at, &t.to_le_bytes()),
                keyword,
            );
        }
    }

    cases.category(&format!(
        "{tag}: data offsets past the end, misaligned or overlapping"
    ));
    let offsets = l.find(|f| f.kind == Kind::Offset);
    let end_aligned = (len as u64).div_ceil(l.alignment) * l.alignment;
    for (ti, f) in offsets.iter().enumerate().take(8) {
        let t = &l.tensors[ti];
        let label = format!("tensor '{}'", t.name);
        for off in [
            u64::MAX / l.alignment * l.alignment,
            end_aligned,
            end_aligned - l.data_offset,
        ] {
            cases.format(
                format!("{tag}: {label} offset {off}"),
                patched(b, f.at, &off.to_le_bytes()),
                format!("{label}: data offset {off}"),
            );
            cases
                .list
                .last_mut()
                .unwrap()
                .keyword
                .push_str(&format!(" + {} bytes ends at", t.n_bytes));
        }
        for delta in [1u64, l.alignment / 2] {
            let off = t.offset + delta;
            cases.format(
                format!("{tag}: {label} offset {off}"),
                patched(b, f.at, &off.to_le_bytes()),
                format!(
                    "data offset {off} is not a multiple of the alignment {}",
                    l.alignment
                ),
            );
        }
    }
    // Overlap: move a tensor onto the start of the previous one's bytes (it still fits there).
    for (ti, pair) in l.tensors.windows(2).enumerate().take(7) {
        let (prev, t) = (&pair[0], &pair[1]);
        if prev.offset < t.offset {
            let keyword = format!(
                "tensor '{}': data [{}, {}) overlaps tensor '{}'",
                t.name,
                prev.offset,
                prev.offset + t.n_bytes,
                prev.name
            );
            cases.format(
                format!("{tag}: {keyword}"),
                patched(b, offsets[ti + 1].at, &prev.offset.to_le_bytes()),
                keyword,
            );
        }
    }
}

fn crafted_cases(cases: &mut Cases) {
    cases.category("crafted headers");
    let f32_ty = GgmlType::F32.id();
    let one = |v: u8| vec![v];
    cases.format(
        "empty file".into(),
        Src::Own(Vec::new()),
        "magic needs 4 bytes",
    );
    cases.format(
        "empty key".into(),
        Src::Own(raw_file(&[(b"", 0, one(1))], &[], 0)),
        "metadata key #0 is empty",
    );
    cases.format(
        "empty tensor name".into(),
        Src::Own(raw_file(&[], &[(b"", &[4], f32_ty, 0)], 16)),
        "name of tensor #0 is empty",
    );
    let long = [b'n'; 64];
    cases.format(
        "64-byte tensor name".into(),
        Src::Own(raw_file(&[], &[(&long, &[4], f32_ty, 0)], 16)),
        "name of tensor #0 is too long: 64 bytes",
    );
    cases.format(
        "second key empty".into(),
        Src::Own(raw_file(&[(b"a", 0, one(1)), (b"", 0, one(1))], &[], 0)),
        "metadata key #1 is empty",
    );
    cases.format(
        "tensor after the data".into(),
        Src::Own(raw_file(&[], &[(b"w", &[8], f32_ty, 32)], 32)),
        "exceeds file size",
    );
    cases.format(
        "same offset twice".into(),
        Src::Own(raw_file(
            &[],
            &[(b"a", &[8], f32_ty, 0), (b"b", &[4], f32_ty, 0)],
            32,
        )),
        "tensor 'b': data [0, 16) overlaps tensor 'a' data [0, 32)",
    );
    cases.format(
        "partial overlap".into(),
        Src::Own(raw_file(
            &[],
            &[(b"a", &[16], f32_ty, 0), (b"b", &[8], f32_ty, 32)],
            96,
        )),
        "tensor 'b': data [32, 64) overlaps tensor 'a' data [0, 64)",
    );
    cases.format(
        "nested array elem count".into(),
        Src::Own(raw_file(
            &[(
                b"k",
                9,
                [9u32.to_le_bytes().as_slice(), &u64::MAX.to_le_bytes()].concat(),
            )],
            &[],
            0,
        )),
        "arrays of arrays",
    );
    cases.list.last_mut().unwrap().kind = ErrorKind::Unsupported;
    cases.format(
        "alignment key as string".into(),
        Src::Own(raw_file(
            &[(
                b"general.alignment",
                8,
                [1u64.to_le_bytes().as_slice(), b"8"].concat(),
            )],
            &[],
            0,
        )),
        "'general.alignment': must be a non-zero power of two u32, found string 8",
    );
    // A big-endian v3 file in full: magic as bytes, every number big-endian.
    let mut be = b"GGUF".to_vec();
    be.extend(3u32.to_be_bytes());
    be.extend(0u64.to_be_bytes());
    be.extend(1u64.to_be_bytes());
    be.extend(1u64.to_be_bytes());
    be.extend(b"k");
    be.extend(4u32.to_be_bytes());
    be.extend(7u32.to_be_bytes());
    cases.add(
        "big-endian file".into(),
        Src::Own(be),
        ErrorKind::Unsupported,
        "big-endian GGUF files are unsupported",
    );
}

fn check(case: &Case, bytes: &[u8]) -> Result<(), String> {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let header = parse_header(bytes).map(|_| ());
        let opened = Gguf::from_bytes(bytes.to_vec()).map(|_| ());
        (header, opened)
    }));
    let (header, opened) = outcome.map_err(|_| format!("{}: the reader panicked", case.name))?;
    let e: Error = match (header, opened) {
        (Err(a), Err(b)) if a == b => a,
        (a, b) => {
            return Err(format!(
                "{}: accepted or inconsistent: {a:?} / {b:?}",
                case.name
            ))
        }
    };
    if e.kind != case.kind || !e.message.contains(&case.keyword) {
        return Err(format!(
            "{}: expected {:?} naming {:?}, got {:?}: {}",
            case.name, case.kind, case.keyword, e.kind, e.message
        ));
    }
    if let Some(cut) = case.cut {
        // The offset the refusal points at must be inside what is left.
        let n: String = e
            .message
            .strip_prefix("offset ")
            .unwrap_or("")
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        match n.parse::<usize>() {
            Ok(at) if at <= cut => {}
            _ => {
                return Err(format!(
                    "{}: message points at no offset within the cut: {}",
                    case.name, e.message
                ))
            }
        }
    }
    Ok(())
}

/// Also through files, mapped and read, for a sample of the cases.
fn check_file(case: &Case, bytes: &[u8], dir: &std::path::Path, i: usize) -> Result<(), String> {
    let path = dir.join(format!("case-{i}.gguf"));
    std::fs::write(&path, bytes).unwrap();
    for mmap in [true, false] {
        let r = catch_unwind(AssertUnwindSafe(|| Gguf::open(&path, mmap).map(|_| ())))
            .map_err(|_| format!("{}: open(mmap={mmap}) panicked", case.name))?;
        match r {
            Err(e)
                if e.kind == case.kind
                    && e.message.contains(&case.keyword)
                    && e.message.starts_with(&path.display().to_string()) => {}
            other => return Err(format!("{}: open(mmap={mmap}) gave {other:?}", case.name)),
        }
    }
    std::fs::remove_file(&path).unwrap();
    Ok(())
}

fn run_cases() {
    let fixtures = vec![tiny_mixtral(), all_types_fixture()];
    // The unmodified fixtures open: every refusal below comes from the change made to them.
    for b in &fixtures {
        let g = Gguf::from_bytes(b.to_vec()).unwrap();
        assert_eq!(g.tensors().len(), walk(b).tensors.len());
    }
    let mut cases = Cases {
        list: Vec::new(),
        categories: Vec::new(),
    };
    build_cases(&mut cases, "tiny-mixtral", 0, &fixtures[0]);
    build_cases(&mut cases, "all-types", 1, &fixtures[1]);
    crafted_cases(&mut cases);

    let dir = std::env::temp_dir().join(format!("xdan-gguf-malformed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Keep the panic hook quiet: a panic is reported as a failed case below.
    std::panic::set_hook(Box::new(|_| {}));
    let mut failures = Vec::new();
    for (i, case) in cases.list.iter().enumerate() {
        let bytes = case.src.bytes(&fixtures);
        let mut r = check(case, &bytes);
        if r.is_ok() && i % 16 == 0 {
            r = check_file(case, &bytes, &dir, i);
        }
        if let Err(e) = r {
            failures.push(e);
        }
    }
    let _ = std::panic::take_hook();
    let _ = std::fs::remove_dir_all(&dir);
    for (name, n) in &cases.categories {
        println!("  {n:5}  {name}");
    }
    println!(
        "malformed GGUF cases: {} in {} categories, {} failed",
        cases.list.len(),
        cases.categories.len(),
        failures.len()
    );
    for f in failures.iter().take(40) {
        println!("FAILED {f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} malformed cases failed",
        failures.len(),
        cases.list.len()
    );
    assert!(cases.list.len() >= 200);
}

#[test]
fn malformed_files_are_refused_within_2gib_of_address_space() {
    if std::env::var_os(CHILD_ENV).is_some() {
        let lim = libc::rlimit {
            rlim_cur: ADDRESS_SPACE_LIMIT,
            rlim_max: ADDRESS_SPACE_LIMIT,
        };
        // SAFETY: setrlimit only reads the struct passed to it.
        assert_eq!(
            unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) },
            0,
            "setrlimit failed"
        );
        // Prove the limit is in force: an allocation over it must fail.
        let mut probe: Vec<u8> = Vec::new();
        assert!(
            probe
                .try_reserve_exact(ADDRESS_SPACE_LIMIT as usize)
                .is_err(),
            "RLIMIT_AS not in force"
        );
        run_cases();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "malformed_files_are_refused_within_2gib_of_address_space",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    // The count goes to the real stdout, past the harness's capture, so every run shows it.
    if let Some(line) = stdout.lines().find(|l| l.starts_with("malformed GGUF cases:")) {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "{line}");
    }
    assert!(
        out.status.success(),
        "the child running the cases under RLIMIT_AS failed: {:?}",
        out.status
    );
    assert!(
        stdout.contains("malformed GGUF cases:") && stdout.contains(" 0 failed"),
        "the child ran no cases"
    );
}
