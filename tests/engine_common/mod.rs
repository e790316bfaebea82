//! Helpers shared by the engine tests: fixture paths, raw arrays, small model/context set-up.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub mod exact;
pub mod regen;

use xdan::engine::{Context, ContextParams, Device, KvType, Model, ModelParams};

pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

pub fn read_f32(p: &Path) -> Vec<f32> {
    let b = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

pub fn read_i32(p: &Path) -> Vec<i32> {
    let b = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

pub fn read_json(p: &Path) -> serde_json::Value {
    let s = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&s).unwrap()
}

pub fn ids(v: &serde_json::Value) -> Vec<i32> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap() as i32).collect()
}

pub fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

pub fn tiny_mixtral(variant: &str) -> PathBuf {
    if variant == "F32" || variant == "BF16" {
        return regen::regenerated(variant);
    }
    data_dir().join(format!("tiny-mixtral/{variant}/tiny-mixtral-{variant}.gguf"))
}

pub fn load(path: &Path, n_threads: usize) -> Model {
    // The CPU engine's tests: on a machine with a GPU, AUTO would place the model there.
    let mp = ModelParams { device: Device::Cpu, n_threads, ..Default::default() };
    Model::load(path, &mp, None).unwrap_or_else(|e| panic!("{}: {:?}: {}", path.display(), e.kind, e.message))
}

pub fn ctx(m: &Model, n_ctx: u32, n_seq: u32, kv: KvType) -> Context {
    let p = ContextParams { n_ctx, n_seq_max: n_seq, kv_type: kv, n_threads: 2, ..Default::default() };
    Context::new(m, &p).unwrap()
}

pub fn argmax(x: &[f32]) -> usize {
    let mut b = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[b] {
            b = i;
        }
    }
    b
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Steps `tokens` one at a time and returns the logits after each.
pub fn logits_per_position(c: &mut Context, seq: u32, tokens: &[i32]) -> Vec<Vec<f32>> {
    tokens
        .iter()
        .map(|&t| {
            c.step(seq, &[t]).unwrap();
            c.logits(seq).unwrap().to_vec()
        })
        .collect()
}
