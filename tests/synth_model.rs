//! The random-model maker of the GPU benchmark (examples/support/synth_model.rs): its files load
//! in the engine, carry the announced type mix, and decode to finite logits.

#[path = "../examples/support/synth_model.rs"]
mod synth_model;

use synth_model::{Mix, Shape};
use xdan::engine::{Context, ContextParams, Device, Model, ModelParams};
use xdan::gguf::Gguf;
use xdan::quant::GgmlType;

fn small() -> Shape {
    Shape { n_layer: 8, n_vocab: 300, ..Shape::tiny_mixtral() }
}

#[test]
fn mixes_load_and_decode() {
    let dir = std::env::temp_dir().join(format!("xdan-synth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (mix, want) in [
        (Mix::Iq2Xxs, [("blk.0.ffn_down_exps.weight", GgmlType::IQ2_XXS), ("blk.0.attn_v.weight", GgmlType::Q4_K), ("token_embd.weight", GgmlType::Q2_K)]),
        // 8 layers: ffn_down gets Q6_K on layers 0, 7 and (i - 1) % 3 == 2, i.e. 3 and 6.
        (Mix::Q4KM, [("blk.3.ffn_down_exps.weight", GgmlType::Q6_K), ("blk.4.ffn_down_exps.weight", GgmlType::Q4_K), ("blk.2.attn_k.weight", GgmlType::Q8_0)]),
        (Mix::All(GgmlType::IQ3_S), [("output.weight", GgmlType::IQ3_S), ("blk.5.ffn_gate_exps.weight", GgmlType::IQ3_S), ("blk.5.ffn_gate_inp.weight", GgmlType::F32)]),
    ] {
        let path = dir.join(format!("{mix:?}.gguf"));
        let bytes = synth_model::write(&path, &small(), mix, 3).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes);
        let g = Gguf::open(&path, false).unwrap();
        for (name, ty) in want {
            assert_eq!(g.tensor(name).unwrap().ty, ty, "{mix:?}: {name}");
        }
        let norm = g.tensor_data(g.tensor("blk.1.ffn_norm.weight").unwrap());
        assert!(norm.chunks_exact(4).all(|c| (f32::from_le_bytes(c.try_into().unwrap()) - 1.0).abs() <= 0.05));
        drop(g);
        let m = Model::load(&path, &ModelParams { device: Device::Cpu, n_threads: 2, ..Default::default() }, None).unwrap();
        assert_eq!((m.info().n_layer, m.info().n_expert, m.n_vocab()), (8, 8, 300));
        let mut c = Context::new(&m, &ContextParams { n_ctx: 64, n_threads: 2, ..Default::default() }).unwrap();
        c.step(0, &[1, 5, 280, 17]).unwrap();
        c.step(0, &[9]).unwrap();
        let l = c.logits(0).unwrap();
        assert!(l.iter().all(|v| v.is_finite()) && l.iter().any(|&v| v != 0.0), "{mix:?}");
    }
    // The same seed gives the same file; another seed another one.
    let a = dir.join("a.gguf");
    let b = dir.join("b.gguf");
    synth_model::write(&a, &small(), Mix::Q4KM, 5).unwrap();
    synth_model::write(&b, &small(), Mix::Q4KM, 5).unwrap();
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
    synth_model::write(&b, &small(), Mix::Q4KM, 6).unwrap();
    assert!(std::fs::read(&a).unwrap() != std::fs::read(&b).unwrap());
    let bad = Shape { n_vocab: 100, ..small() };
    assert!(synth_model::write(&dir.join("bad.gguf"), &bad, Mix::Q4KM, 1).unwrap_err().message.contains("n_vocab"));
    std::fs::remove_dir_all(&dir).unwrap();
}
