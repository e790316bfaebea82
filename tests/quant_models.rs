//! Every tensor of every stored tiny-mixtral GGUF opens and dequantizes; tensor names, types and
//! shapes equal the variant's `refs.json`; fixture slices taken from these files agree.

use std::path::PathBuf;
use xdan::gguf::Gguf;
use xdan::quant::{dequantize, GgmlType};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

#[test]
fn every_tiny_mixtral_tensor_dequantizes() {
    let dir = root().join("tiny-mixtral");
    let mut variants = 0;
    let mut tensors = 0;
    let mut types = std::collections::BTreeSet::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for vdir in names.into_iter().filter(|p| p.is_dir()) {
        let variant = vdir.file_name().unwrap().to_str().unwrap().to_string();
        let refs: serde_json::Value =
            serde_json::from_slice(&std::fs::read(vdir.join("refs.json")).unwrap()).unwrap();
        let path = vdir.join(format!("tiny-mixtral-{variant}.gguf"));
        if !path.exists() {
            // F32 and BF16 are described in refs.json but not stored (size).
            assert_eq!(refs["model_file_stored"].as_bool(), Some(false), "{variant}: GGUF missing");
            continue;
        }
        let g = Gguf::open(&path, true).unwrap_or_else(|e| panic!("{variant}: {e}"));
        let want = refs["tensors"].as_array().unwrap();
        assert_eq!(g.tensors().len(), want.len(), "{variant}: tensor count");
        for wt in want {
            let name = wt["name"].as_str().unwrap();
            let t = g.tensor(name).unwrap_or_else(|| panic!("{variant}: no tensor {name}"));
            let ty = GgmlType::from_name(wt["type"].as_str().unwrap()).unwrap();
            assert_eq!(t.ty, ty, "{variant} {name}: type");
            let ne: Vec<u64> =
                wt["ne"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(t.dims, ne, "{variant} {name}: ne");
            let data = g.tensor_data(t);
            assert_eq!(
                data.len() as u64,
                wt["n_bytes"].as_u64().unwrap(),
                "{variant} {name}: bytes"
            );
            let mut out = vec![f32::NAN; t.n_elements as usize];
            dequantize(t.ty, data, &mut out).unwrap_or_else(|e| panic!("{variant} {name}: {e}"));
            if let Some(i) = out.iter().position(|v| !v.is_finite()) {
                panic!("{variant} {name}: element {i} is {}", out[i]);
            }
            types.insert(t.ty.name());
            tensors += 1;
        }
        variants += 1;
    }
    eprintln!("{variants} variants, {tensors} tensors; types {types:?}");
    assert_eq!(variants, 21);
    // The stored models cover these types between them.
    for ty in [
        "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
        "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS",
    ] {
        assert!(types.contains(ty), "no stored model has a {ty} tensor");
    }
}

/// The `*_real` fixtures are the first elements of a tensor of a stored model: the model's
/// tensor, dequantized, must start with exactly the fixture's expected values.
#[test]
fn real_fixtures_agree_with_model_tensors() {
    let q = root().join("quant");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(q.join("manifest.json")).unwrap()).unwrap();
    let mut compared = 0;
    for t in manifest["types"].as_array().unwrap() {
        for c in t["cases"].as_array().unwrap() {
            if c["kind"] != "real" {
                continue;
            }
            let file = c["source"]["file"].as_str().unwrap();
            let Some(rel) = file.strip_prefix("shared/fixtures/models/") else { continue };
            let path = root().join(rel);
            if !path.exists() {
                continue;
            }
            let g = Gguf::open(&path, true).unwrap();
            let ti = g.tensor(c["source"]["tensor"].as_str().unwrap()).unwrap();
            let n = c["n_elements"].as_u64().unwrap() as usize;
            let bytes = ti.ty.row_bytes(n as u64).unwrap() as usize;
            let mut out = vec![0f32; n];
            dequantize(ti.ty, &g.tensor_data(ti)[..bytes], &mut out).unwrap();
            let want: Vec<f32> = std::fs::read(q.join(c["f32"].as_str().unwrap()))
                .unwrap()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            for i in 0..n {
                assert_eq!(out[i].to_bits(), want[i].to_bits(), "{file} [{i}]");
            }
            compared += 1;
        }
    }
    eprintln!("{compared} real fixtures traced back to their model tensors");
    assert!(compared >= 15, "only {compared}");
}
