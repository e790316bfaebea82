//! The GGUF reader on well-formed files: the writer's v2 and v3 output with every metadata type,
//! the typed accessors' errors, and every GGUF fixture (tiny-mixtral variants checked against
//! llama.cpp's tensor table in refs.json, the vocab-only files), mapped and read alike.

use std::path::{Path, PathBuf};

use xdan::gguf::{Array, Gguf, GgufWriter, Value, ValueType};
use xdan::quant::GgmlType;
use xdan::ErrorKind;

fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

/// One key per scalar type, one array per element type, with the edge values of each.
fn every_value() -> Vec<(String, Value)> {
    let v = vec![
        ("s.u8", Value::U8(u8::MAX)),
        ("s.i8", Value::I8(i8::MIN)),
        ("s.u16", Value::U16(u16::MAX)),
        ("s.i16", Value::I16(i16::MIN)),
        ("s.u32", Value::U32(u32::MAX)),
        ("s.i32", Value::I32(i32::MIN)),
        ("s.f32", Value::F32(f32::MIN_POSITIVE)),
        ("s.bool.t", Value::Bool(true)),
        ("s.bool.f", Value::Bool(false)),
        ("s.str", Value::String("naïve ✓".as_bytes().to_vec())),
        ("s.str.empty", Value::String(Vec::new())),
        ("s.str.bytes", Value::String(vec![0xff, 0x00, 0x80])),
        ("s.u64", Value::U64(u64::MAX)),
        ("s.i64", Value::I64(i64::MIN)),
        ("s.f64", Value::F64(f64::MAX)),
        ("a.u8", Value::Array(Array::U8(vec![0, 1, 255]))),
        ("a.i8", Value::Array(Array::I8(vec![-128, 0, 127]))),
        ("a.u16", Value::Array(Array::U16(vec![0, 65535]))),
        ("a.i16", Value::Array(Array::I16(vec![-32768, 32767]))),
        ("a.u32", Value::Array(Array::U32(vec![0, u32::MAX]))),
        (
            "a.i32",
            Value::Array(Array::I32(vec![i32::MIN, -1, i32::MAX])),
        ),
        (
            "a.f32",
            Value::Array(Array::F32(vec![-0.0, 1e-40, f32::INFINITY])),
        ),
        (
            "a.bool",
            Value::Array(Array::Bool(vec![true, false, false, true])),
        ),
        (
            "a.str",
            Value::Array(Array::String(vec![b"".to_vec(), b"x".to_vec(), vec![0xc3]])),
        ),
        ("a.u64", Value::Array(Array::U64(vec![0, u64::MAX]))),
        ("a.i64", Value::Array(Array::I64(vec![i64::MIN, i64::MAX]))),
        (
            "a.f64",
            Value::Array(Array::F64(vec![f64::MIN, f64::EPSILON])),
        ),
        ("a.empty.u8", Value::Array(Array::U8(vec![]))),
        ("a.empty.str", Value::Array(Array::String(vec![]))),
    ];
    v.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn every_value_file(version: u32, alignment: Option<u32>) -> (Vec<u8>, Vec<(String, Value)>) {
    let mut w = GgufWriter::new();
    w.set_version(version);
    let mut meta = every_value();
    if let Some(a) = alignment {
        meta.insert(0, ("general.alignment".to_string(), Value::U32(a)));
    }
    for (k, v) in &meta {
        w.set(k, v.clone());
    }
    let f32s: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
    w.add_f32("a", &[3, 4], &f32s).unwrap();
    w.add_tensor("b", &[32, 2], GgmlType::Q8_0, (0..68).collect())
        .unwrap();
    w.add_tensor("c", &[256, 1, 1, 2], GgmlType::Q6_K, vec![9; 420])
        .unwrap();
    w.add_tensor("d", &[1], GgmlType::I8, vec![0x7f]).unwrap();
    (w.to_bytes(), meta)
}

#[test]
fn every_value_type_round_trips_in_v2_and_v3() {
    let mut kinds_seen = std::collections::HashSet::new();
    for version in [2, 3] {
        for alignment in [None, Some(1), Some(64)] {
            let (bytes, meta) = every_value_file(version, alignment);
            let g = Gguf::from_bytes(bytes).unwrap();
            assert_eq!(g.version(), version);
            assert_eq!(g.alignment(), alignment.unwrap_or(32) as u64);
            assert_eq!(
                g.metadata(),
                &meta[..],
                "v{version} alignment {alignment:?}"
            );
            for (k, v) in &meta {
                assert_eq!(g.get(k), Some(v));
                kinds_seen.insert(match v {
                    Value::Array(a) => (true, a.elem_type() as u32),
                    v => (false, v.value_type() as u32),
                });
            }
            let a = g.tensor("a").unwrap();
            assert_eq!(
                (a.dims.clone(), a.ty, a.n_elements, a.n_bytes),
                (vec![3, 4], GgmlType::F32, 12, 48)
            );
            assert_eq!((a.n_rows(), a.row_bytes()), (4, 12));
            assert_eq!(&g.tensor_data(a)[8..12], &1.0f32.to_le_bytes());
            let b = g.tensor("b").unwrap();
            assert_eq!(g.tensor_data(b), &(0..68).collect::<Vec<u8>>()[..]);
            let c = g.tensor("c").unwrap();
            assert_eq!(
                (c.n_elements, c.n_bytes, c.n_rows(), c.row_bytes()),
                (512, 420, 2, 210)
            );
            assert_eq!(g.tensor_data(g.tensor("d").unwrap()), &[0x7f]);
            for t in g.tensors() {
                assert_eq!(t.offset % g.alignment(), 0);
                assert_eq!((g.header().data_offset + t.offset) % g.alignment(), 0);
            }
            assert!(g.tensor("e").is_none() && g.get("nope").is_none());
        }
    }
    // Every scalar type but the array type, and every array element type but array.
    assert_eq!(kinds_seen.len(), 12 + 12);
}

#[test]
fn writer_output_is_a_fixed_point() {
    for version in [2, 3] {
        let (bytes, _) = every_value_file(version, Some(16));
        let g = Gguf::from_bytes(bytes.clone()).unwrap();
        let mut w = GgufWriter::new();
        w.set_version(g.version());
        for (k, v) in g.metadata() {
            w.set(k, v.clone());
        }
        for t in g.tensors() {
            w.add_tensor(&t.name, &t.dims, t.ty, g.tensor_data(t).to_vec())
                .unwrap();
        }
        assert_eq!(w.to_bytes(), bytes);
    }
}

#[test]
fn accessors_name_the_key_and_what_was_found() {
    let (bytes, _) = every_value_file(3, None);
    let g = Gguf::from_bytes(bytes).unwrap();
    // Integers of any width, when the value fits.
    assert_eq!(g.get_u32("s.u8").unwrap(), 255);
    assert_eq!(g.get_u32("s.u16").unwrap(), 65535);
    assert_eq!(g.get_u64("s.u64").unwrap(), u64::MAX);
    assert_eq!(g.get_i64("s.i8").unwrap(), -128);
    assert_eq!(g.get_i64("s.u32").unwrap(), u32::MAX as i64);
    assert_eq!(g.get_f32("s.f64").unwrap(), f32::INFINITY);
    assert!(g.get_bool("s.bool.t").unwrap() && !g.get_bool("s.bool.f").unwrap());
    assert_eq!(g.get_str("s.str").unwrap(), "naïve ✓");
    assert_eq!(g.get_str("s.str.empty").unwrap(), "");
    assert_eq!(g.get_str_array("a.str").unwrap()[2], vec![0xc3]);
    assert_eq!(g.get_i32_array("a.i32").unwrap(), &[i32::MIN, -1, i32::MAX]);
    assert_eq!(g.get_f32_array("a.f32").unwrap()[2], f32::INFINITY);
    assert_eq!(g.get_array("a.u8").unwrap(), &Array::U8(vec![0, 1, 255]));

    let cases: Vec<(xdan::Error, &str, &[&str])> = vec![
        (
            g.get_u32("s.str").unwrap_err(),
            "s.str",
            &["expected an unsigned integer", "found string"],
        ),
        (g.get_u32("s.i8").unwrap_err(), "s.i8", &["found i8 -128"]),
        (
            g.get_u32("s.u64").unwrap_err(),
            "s.u64",
            &["18446744073709551615", "does not fit in u32"],
        ),
        (g.get_u64("s.f32").unwrap_err(), "s.f32", &["found f32"]),
        (
            g.get_i64("s.u64").unwrap_err(),
            "s.u64",
            &["expected an integer", "found u64"],
        ),
        (
            g.get_f32("s.u32").unwrap_err(),
            "s.u32",
            &["expected a float", "found u32 4294967295"],
        ),
        (
            g.get_bool("s.u8").unwrap_err(),
            "s.u8",
            &["expected bool", "found u8 255"],
        ),
        (
            g.get_str("a.str").unwrap_err(),
            "a.str",
            &["expected string", "found array[string]"],
        ),
        (
            g.get_str("s.str.bytes").unwrap_err(),
            "s.str.bytes",
            &["not UTF-8"],
        ),
        (
            g.get_array("s.i64").unwrap_err(),
            "s.i64",
            &["expected array", "found i64"],
        ),
        (
            g.get_str_array("a.u8").unwrap_err(),
            "a.u8",
            &["expected array[string]", "found array[u8]"],
        ),
        (
            g.get_f32_array("a.f64").unwrap_err(),
            "a.f64",
            &["expected array[f32]", "found array[f64]"],
        ),
        (
            g.get_i32_array("a.u32").unwrap_err(),
            "a.u32",
            &["expected array[i32]", "found array[u32]"],
        ),
        (
            g.get_i32_array("s.str").unwrap_err(),
            "s.str",
            &["expected array", "found string"],
        ),
        (
            g.get_u32("no.such.key").unwrap_err(),
            "no.such.key",
            &["missing"],
        ),
        (
            g.get_str_array("no.such.key").unwrap_err(),
            "no.such.key",
            &["missing"],
        ),
    ];
    for (e, key, words) in cases {
        assert_eq!(e.kind, ErrorKind::Format, "{e}");
        assert!(e.message.contains(&format!("'{key}'")), "{e}");
        for w in words {
            assert!(e.message.contains(w), "{e:?} lacks {w:?}");
        }
    }
}

#[test]
fn writer_refuses_what_the_reader_would() {
    let mut w = GgufWriter::new();
    let long = "n".repeat(64);
    let bad: Vec<(&str, Vec<u64>, GgmlType, usize)> = vec![
        ("no-dims", vec![], GgmlType::F32, 4),
        ("five-dims", vec![1, 1, 1, 1, 1], GgmlType::F32, 4),
        ("zero-dim", vec![4, 0], GgmlType::F32, 0),
        ("short-data", vec![4], GgmlType::F32, 15),
        ("partial-block", vec![16], GgmlType::Q8_0, 17),
        ("overflow", vec![1 << 40, 1 << 40], GgmlType::F32, 0),
        ("", vec![4], GgmlType::F32, 16),
        (&long, vec![4], GgmlType::F32, 16),
    ];
    for (name, dims, ty, len) in bad {
        let e = w.add_tensor(name, &dims, ty, vec![0; len]).err().unwrap();
        assert_eq!(e.kind, ErrorKind::InvalidArg);
        assert!(e.message.contains(&format!("'{name}'")), "{e}");
    }
    w.add_f32("x", &[2], &[1.0, 2.0]).unwrap();
    let e = w.add_f32("x", &[2], &[1.0, 2.0]).err().unwrap();
    assert!(e.message.contains("'x' added twice"), "{e}");
    // 63 bytes is the longest name ggml keeps.
    w.add_f32(&"n".repeat(63), &[1], &[0.0]).unwrap();
    assert_eq!(Gguf::from_bytes(w.to_bytes()).unwrap().tensors().len(), 2);
}

/// Opens `path` mapped and read into memory, checks both give the same file, and returns it.
fn open_both(path: &Path) -> Gguf {
    let mapped = Gguf::open(path, true).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let read = Gguf::open(path, false).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(mapped.path(), Some(path));
    assert_eq!(mapped.file_bytes(), std::fs::metadata(path).unwrap().len());
    assert_eq!(mapped.file_bytes(), read.file_bytes());
    assert_eq!(mapped.version(), read.version());
    assert_eq!(mapped.header().data_offset, read.header().data_offset);
    assert_eq!(mapped.metadata(), read.metadata());
    assert_eq!(mapped.tensors(), read.tensors());
    for t in mapped.tensors() {
        assert!(
            mapped.tensor_data(t) == read.tensor_data(t),
            "{}: {}",
            path.display(),
            t.name
        );
    }
    mapped
}

#[test]
fn every_tiny_mixtral_file_opens_and_matches_llama_cpp_tensor_table() {
    let mut n_files = 0;
    let mut types = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(data("tiny-mixtral")).unwrap() {
        let dir = entry.unwrap().path();
        let Some(variant) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        let path = dir.join(format!("tiny-mixtral-{variant}.gguf"));
        if !path.exists() {
            continue; // F32 and BF16 are not stored (see FIXTURES.md)
        }
        n_files += 1;
        let g = open_both(&path);
        let refs: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("refs.json")).unwrap()).unwrap();
        assert_eq!(g.file_bytes(), refs["model_size_bytes"].as_u64().unwrap());
        assert_eq!(g.version(), 3);
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(
            g.get_u32("general.file_type").unwrap() as u64,
            refs["general.file_type"].as_u64().unwrap()
        );
        assert_eq!(g.get_u32("llama.expert_count").unwrap(), 8);
        assert_eq!(
            g.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
            1024
        );
        assert_eq!(
            g.get_f32_array("tokenizer.ggml.scores").unwrap().len(),
            1024
        );
        assert_eq!(
            g.get_i32_array("tokenizer.ggml.token_type").unwrap().len(),
            1024
        );
        let want = refs["tensors"].as_array().unwrap();
        assert_eq!(g.tensors().len(), want.len(), "{variant}");
        for w in want {
            let name = w["name"].as_str().unwrap();
            let t = g
                .tensor(name)
                .unwrap_or_else(|| panic!("{variant}: no tensor {name}"));
            let ne: Vec<u64> = w["ne"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect();
            assert_eq!(t.dims, ne, "{variant} {name}");
            assert_eq!(
                t.ty.id() as u64,
                w["type_id"].as_u64().unwrap(),
                "{variant} {name}"
            );
            assert_eq!(t.ty.name(), w["type"].as_str().unwrap());
            assert_eq!(
                t.n_bytes,
                w["n_bytes"].as_u64().unwrap(),
                "{variant} {name}"
            );
            types.insert(t.ty.name());
        }
        // ggml lays tensors out back to back, each padded to the alignment: the sizes computed
        // from the type table must reproduce every offset and the file's end exactly.
        let mut end = 0;
        for t in g.tensors() {
            assert_eq!(t.offset, end, "{variant} {}", t.name);
            end = (t.offset + t.n_bytes).div_ceil(g.alignment()) * g.alignment();
        }
        assert_eq!(g.header().data_offset + end, g.file_bytes(), "{variant}");
    }
    assert_eq!(n_files, 21);
    assert!(types.len() >= 18, "{types:?}");
}

#[test]
fn vocab_and_imatrix_files_open() {
    for name in ["gpt-2", "llama-bpe", "llama-spm", "qwen2"] {
        let path = data(&format!("tokenizer/vocabs/ggml-vocab-{name}.gguf"));
        let g = open_both(&path);
        assert!(g.tensors().is_empty());
        let tokens = g.get_str_array("tokenizer.ggml.tokens").unwrap();
        assert!(tokens.len() > 30000, "{name}: {}", tokens.len());
        assert_eq!(
            g.get_i32_array("tokenizer.ggml.token_type").unwrap().len(),
            tokens.len()
        );
        assert!(!g.get_str("tokenizer.ggml.model").unwrap().is_empty());
    }
    let g = open_both(&data("tiny-mixtral/imatrix.gguf"));
    assert!(!g.tensors().is_empty());
    assert!(g
        .metadata()
        .iter()
        .any(|(_, v)| v.value_type() == ValueType::String));
}

#[test]
fn open_reports_the_path() {
    let missing = data("no-such-file.gguf");
    let e = Gguf::open(&missing, true).err().unwrap();
    assert_eq!(e.kind, ErrorKind::Io);
    assert!(e.message.contains("no-such-file.gguf"), "{e}");
    let dir = std::env::temp_dir().join(format!("xdan-gguf-reader-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in [
        ("empty.gguf", Vec::new()),
        ("short.gguf", b"GGUF\x03\0\0\0".to_vec()),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, &bytes).unwrap();
        for mmap in [true, false] {
            let e = Gguf::open(&p, mmap).err().unwrap();
            assert_eq!(e.kind, ErrorKind::Format);
            assert!(e.message.starts_with(&p.display().to_string()), "{e}");
            assert!(e.message.contains("left in the file"), "{e}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The writer lays files out as ggml does: rewriting a fixture from what the reader got out of
/// it reproduces the original bytes.
#[test]
fn writer_reproduces_the_fixtures_byte_for_byte() {
    let mut paths = vec![
        data("tiny-mixtral/Q4_K_M/tiny-mixtral-Q4_K_M.gguf"),
        data("tiny-mixtral/IQ2_XXS/tiny-mixtral-IQ2_XXS.gguf"),
        data("tiny-mixtral/imatrix.gguf"),
    ];
    for name in ["gpt-2", "llama-bpe", "llama-spm", "qwen2"] {
        paths.push(data(&format!("tokenizer/vocabs/ggml-vocab-{name}.gguf")));
    }
    for path in paths {
        let original = std::fs::read(&path).unwrap();
        let g = Gguf::from_bytes(original.clone()).unwrap();
        let mut w = GgufWriter::new();
        w.set_version(g.version());
        for (k, v) in g.metadata() {
            w.set(k, v.clone());
        }
        for t in g.tensors() {
            w.add_tensor(&t.name, &t.dims, t.ty, g.tensor_data(t).to_vec())
                .unwrap();
        }
        let rewritten = w.to_bytes();
        let first_diff = original.iter().zip(&rewritten).position(|(a, b)| a != b);
        assert!(
            rewritten == original,
            "{}: {} bytes rewritten vs {} original, first difference at {first_diff:?}",
            path.display(),
            rewritten.len(),
            original.len()
        );
    }
}

/// A file without tensors has no data section: any power-of-two alignment is accepted, and
/// writing it back adds no padding (a 2 GiB alignment must not make a 2 GiB file).
#[test]
fn tensorless_file_with_a_huge_alignment() {
    let mut w = GgufWriter::new();
    w.set_u32("general.alignment", 1 << 31)
        .set_str("general.name", "x");
    let bytes = w.to_bytes();
    assert!(bytes.len() < 128, "{}", bytes.len());
    let g = Gguf::from_bytes(bytes.clone()).unwrap();
    assert_eq!(g.alignment(), 1 << 31);
    assert_eq!(g.header().data_offset, bytes.len() as u64);
}
