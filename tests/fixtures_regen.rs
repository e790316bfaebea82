//! The tiny-mixtral F32 and BF16 GGUFs, regenerated at test time, are the reference files:
//! the bytes on disk hash to the `model_sha256` and size in their `refs.json`, and they load.

mod engine_common;
use engine_common::*;

use sha2::{Digest, Sha256};

#[test]
fn regenerated_fixtures_match_sha256() {
    for variant in ["F32", "BF16"] {
        let path = regen::regenerated(variant);
        let refs = read_json(&data_dir().join(format!("tiny-mixtral/{variant}/refs.json")));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let sha: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            bytes.len() as u64,
            refs["model_size_bytes"].as_u64().unwrap(),
            "{variant} size"
        );
        assert_eq!(
            sha,
            refs["model_sha256"].as_str().unwrap(),
            "{variant} sha256"
        );
        // The file parses, and its tensor table is refs.json's (names, types, shapes, in order).
        let g = xdan::gguf::Gguf::open(&path, true).unwrap();
        let want = refs["tensors"].as_array().unwrap();
        assert_eq!(g.tensors().len(), want.len());
        for (t, w) in g.tensors().iter().zip(want) {
            assert_eq!(t.name, w["name"].as_str().unwrap());
            assert_eq!(t.ty.name(), w["type"].as_str().unwrap());
            assert_eq!(
                t.dims,
                w["ne"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap())
                    .collect::<Vec<_>>()
            );
        }
        assert_eq!(
            g.get_u32("general.file_type").unwrap() as u64,
            refs["general.file_type"].as_u64().unwrap()
        );
    }
}
