//! Dequantization is bit-exact with llama.cpp for every type and case in the fixture manifest
//! (`tests/data/quant`, values from gguf-py, cross-checked there against ggml's `to_float`).

use std::path::PathBuf;
use xdan::quant::{dequantize, GgmlType};
use xdan::ErrorKind;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/quant")
}

fn read_f32(path: &PathBuf) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn dequantize_matches_fixtures_bit_exact() {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data_dir().join("manifest.json")).unwrap()).unwrap();
    let mut cases = 0;
    let mut elements = 0usize;
    let mut failures = Vec::new();
    let mut types_seen = Vec::new();
    for t in manifest["types"].as_array().unwrap() {
        let name = t["type"].as_str().unwrap();
        let ty = GgmlType::from_name(name).unwrap_or_else(|| panic!("unknown type {name}"));
        assert_eq!(ty.id() as u64, t["ggml_type_id"].as_u64().unwrap(), "{name} id");
        assert_eq!(ty.block_elems() as u64, t["block_size"].as_u64().unwrap(), "{name} block");
        assert_eq!(ty.block_bytes() as u64, t["bytes_per_block"].as_u64().unwrap(), "{name} bytes");
        types_seen.push(ty);
        for c in t["cases"].as_array().unwrap() {
            let kind = c["kind"].as_str().unwrap();
            let src = std::fs::read(data_dir().join(c["bin"].as_str().unwrap())).unwrap();
            let want = read_f32(&data_dir().join(c["f32"].as_str().unwrap()));
            let n = c["n_elements"].as_u64().unwrap() as usize;
            assert_eq!(want.len(), n, "{name} {kind}: expected-value count");
            let mut got = vec![f32::NAN; n];
            dequantize(ty, &src, &mut got).unwrap_or_else(|e| panic!("{name} {kind}: {e}"));
            let mut bad = 0;
            for i in 0..n {
                if got[i].to_bits() != want[i].to_bits() {
                    if bad < 5 {
                        failures.push(format!(
                            "{name} {kind} [{i}]: expected {:e} ({:#010x}) got {:e} ({:#010x})",
                            want[i],
                            want[i].to_bits(),
                            got[i],
                            got[i].to_bits()
                        ));
                    }
                    bad += 1;
                }
            }
            if bad > 0 {
                failures.push(format!("{name} {kind}: {bad} of {n} elements differ"));
            }
            cases += 1;
            elements += n;
        }
    }
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
    // Every type the task names that has a fixture must be present in the manifest.
    for ty in [
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ1_S,
        GgmlType::IQ1_M,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ2_S,
        GgmlType::IQ3_XXS,
        GgmlType::IQ3_S,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
        GgmlType::MXFP4,
    ] {
        assert!(types_seen.contains(&ty), "manifest lacks {ty}");
    }
    eprintln!("{cases} cases, {elements} elements, all bit-exact");
    assert_eq!(cases, 44);
}

#[test]
fn dequantize_rejects_bad_sizes() {
    let mut out = vec![0f32; 64];
    let e = dequantize(GgmlType::Q4_0, &[0u8; 35], &mut out).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArg);
    assert!(e.message.contains("Q4_0"), "{}", e.message);
    let mut out = vec![0f32; 100];
    let e = dequantize(GgmlType::Q4_K, &[0u8; 144], &mut out).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArg);
    let mut out = vec![0f32; 4];
    let e = dequantize(GgmlType::TQ1_0, &[0u8; 4], &mut out).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
}

/// Q8_K and Q8_1 have no fixture (gguf-py cannot dequantize them): check the layout directly.
#[test]
fn dequantize_q8_k_and_q8_1_layout() {
    let mut b = vec![0u8; 292];
    b[..4].copy_from_slice(&0.5f32.to_le_bytes());
    for i in 0..256 {
        b[4 + i] = (i as i32 - 128) as i8 as u8;
    }
    let mut out = vec![0f32; 256];
    dequantize(GgmlType::Q8_K, &b, &mut out).unwrap();
    for i in 0..256 {
        assert_eq!(out[i], 0.5 * (i as f32 - 128.0));
    }
    let mut b = vec![0u8; 36];
    b[..2].copy_from_slice(&half::f16::from_f32(0.25).to_bits().to_le_bytes());
    b[2..4].copy_from_slice(&half::f16::from_f32(99.0).to_bits().to_le_bytes());
    for i in 0..32 {
        b[4 + i] = (i as i8 - 16) as u8;
    }
    let mut out = vec![0f32; 32];
    dequantize(GgmlType::Q8_1, &b, &mut out).unwrap();
    for i in 0..32 {
        assert_eq!(out[i], 0.25 * (i as f32 - 16.0));
    }
}

/// `dequantize` takes the F16C path for F16 where the CPU has it; the portable conversion must
/// agree bit for bit on every finite pattern too.
#[test]
fn portable_f16_conversion_is_exact() {
    let src = std::fs::read(data_dir().join("F16_exhaustive.bin")).unwrap();
    let want = read_f32(&data_dir().join("F16_exhaustive.f32"));
    let mut got = vec![0f32; want.len()];
    xdan::quant::float::dequantize_f16(&src, &mut got);
    for i in 0..want.len() {
        assert_eq!(got[i].to_bits(), want[i].to_bits(), "F16 exhaustive [{i}]");
    }
    // Odd lengths exercise the SIMD tail.
    let mut a = vec![0f32; 13];
    dequantize(GgmlType::F16, &src[..26], &mut a).unwrap();
    assert_eq!(
        a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        want[..13].iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}

/// The inline f16 conversion used by the scalar kernels against `half` on all 65536 patterns
/// (NaN payloads compared as NaN).
#[test]
fn f16_bit_conversion_matches_half_everywhere() {
    for h in 0..=u16::MAX {
        let a = xdan::quant::block::f16_bits_to_f32(h);
        let b = half::f16::from_bits(h).to_f32();
        if b.is_nan() {
            assert!(a.is_nan(), "{h:#06x}");
        } else {
            assert_eq!(a.to_bits(), b.to_bits(), "{h:#06x}");
        }
    }
}
