//! Model loading: hyper-parameters and info, shape/tensor/architecture checks with clear
//! errors, the progress callback, vocab-only loads.

mod engine_common;
use engine_common::*;

use std::path::{Path, PathBuf};

use xdan::engine::{Context, ContextParams, Model, ModelParams};
use xdan::gguf::{value::Value, Gguf, GgufWriter};
use xdan::ErrorKind;

/// Rewrites a GGUF with metadata edits and tensor edits (`None` drops the tensor).
fn rewrite(
    src: &Path,
    dst: &Path,
    meta: impl Fn(&str, &Value) -> Value,
    tensor: impl Fn(&str, Vec<u64>, Vec<u8>) -> Option<(Vec<u64>, Vec<u8>)>,
) {
    let g = Gguf::open(src, true).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        w.set(k, meta(k, v));
    }
    for t in g.tensors() {
        if let Some((dims, data)) = tensor(&t.name, t.dims.clone(), g.tensor_data(t).to_vec()) {
            w.add_tensor(&t.name, &dims, t.ty, data).unwrap();
        }
    }
    w.write_to(dst).unwrap();
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("xdan-model-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn load_err(p: &Path) -> xdan::Error {
    match Model::load(p, &ModelParams::default(), None) {
        Ok(_) => panic!("{} loaded", p.display()),
        Err(e) => e,
    }
}

#[test]
fn info_and_hparams() {
    let p = tiny_mixtral("Q8_0");
    let m = load(&p, 1);
    let i = m.info();
    assert_eq!(i.arch, "llama");
    assert_eq!((i.bos, i.eos), (1, 2));
    assert_eq!((i.n_vocab, i.n_ctx_train, i.n_embd, i.n_layer), (1024, 4096, 256, 2));
    assert_eq!((i.n_head, i.n_head_kv, i.n_ff, i.n_expert, i.n_expert_used), (8, 2, 512, 8, 2));
    let g = Gguf::open(&p, true).unwrap();
    assert_eq!(i.n_params, g.tensors().iter().map(|t| t.n_elements).sum::<u64>());
    assert_eq!(i.file_bytes, std::fs::metadata(&p).unwrap().len());
    let hp = m.hparams().unwrap();
    assert_eq!((hp.head_dim, hp.rope.n_rot, hp.rope.freq_base), (32, 32, 1e6));
    assert!((hp.rms_eps - 1e-5).abs() < 1e-12);
}

#[test]
fn bad_models_are_refused_with_clear_errors() {
    let src = tiny_mixtral("Q8_0");
    let arch = tmp("arch.gguf");
    rewrite(
        &src,
        &arch,
        |k, v| if k == "general.architecture" { Value::String(b"gpt2".to_vec()) } else { v.clone() },
        |_, d, b| Some((d, b)),
    );
    let e = load_err(&arch);
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("gpt2"), "{}", e.message);

    let missing = tmp("missing.gguf");
    rewrite(&src, &missing, |_, v| v.clone(), |n, d, b| if n == "blk.1.attn_k.weight" { None } else { Some((d, b)) });
    let e = load_err(&missing);
    assert_eq!(e.kind, ErrorKind::Format);
    assert!(e.message.contains("blk.1.attn_k.weight") && e.message.contains("missing"), "{}", e.message);

    let shape = tmp("shape.gguf");
    rewrite(&src, &shape, |_, v| v.clone(), |n, d, b| {
        if n == "output_norm.weight" { Some((vec![128], b[..512].to_vec())) } else { Some((d, b)) }
    });
    let e = load_err(&shape);
    assert_eq!(e.kind, ErrorKind::Format);
    assert!(e.message.contains("output_norm.weight") && e.message.contains("[128]") && e.message.contains("[256]"), "{}", e.message);

    // Hyper-parameters that disagree with the tensors: every tensor is checked.
    let hp = tmp("hp.gguf");
    rewrite(&src, &hp, |k, v| if k == "llama.feed_forward_length" { Value::U32(256) } else { v.clone() }, |_, d, b| Some((d, b)));
    let e = load_err(&hp);
    assert_eq!(e.kind, ErrorKind::Format);
    assert!(e.message.contains("ffn_gate_exps"), "{}", e.message);
    std::fs::remove_dir_all(arch.parent().unwrap()).ok();
}

#[test]
fn progress_callback_reports_and_cancels() {
    let p = tiny_mixtral("Q8_0");
    let mut seen = Vec::new();
    let mut f = |x: f32| {
        seen.push(x);
        true
    };
    Model::load(&p, &ModelParams::default(), Some(&mut f)).unwrap();
    assert!(seen.len() > 10);
    assert!(seen.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(*seen.last().unwrap(), 1.0);
    let mut calls = 0;
    let mut cancel = |_x: f32| {
        calls += 1;
        calls < 3
    };
    let e = Model::load(&p, &ModelParams::default(), Some(&mut cancel)).err().unwrap();
    assert_eq!(e.kind, ErrorKind::Cancelled);
    assert_eq!(calls, 3);
}

#[test]
fn vocab_only_model_has_no_context() {
    let m = Model::load(&tiny_mixtral("Q8_0"), &ModelParams { vocab_only: true, ..Default::default() }, None).unwrap();
    assert_eq!(m.n_vocab(), 1024);
    assert_eq!(Context::new(&m, &ContextParams::default()).err().unwrap().kind, ErrorKind::InvalidArg);
}

#[test]
fn model_is_shareable_and_context_movable() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Model>();
    send::<Context>();
}
