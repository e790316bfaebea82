//! `XDAN_DUMP_DIR`: each forward pass writes its per-layer activations, named like llama.cpp's
//! graph tensors, into `DIR/pass-N/` (the input of scripts/llama-dump/compare.py). Its own test
//! binary: the variable is process-wide.

mod engine_common;
use engine_common::*;

use xdan::engine::KvType;

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn dump_dir_gets_every_layer_of_every_pass() {
    let dir = std::env::temp_dir().join(format!("xdan-dump-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::env::set_var("XDAN_DUMP_DIR", &dir);
    let m = load(&tiny_mixtral("Q8_0"), 2);
    let hp = m.hparams().unwrap().clone();
    let mut c = ctx(&m, 64, 1, KvType::F32);
    c.step(0, &[1, 832, 165, 251]).unwrap();
    let first = c.logits(0).unwrap().to_vec();
    c.step(0, &[189]).unwrap();
    std::env::remove_var("XDAN_DUMP_DIR");
    let e = hp.n_head * hp.head_dim;
    let ekv = hp.n_head_kv * hp.head_dim;
    for (pass, n) in [(0, 4usize), (1, 1)] {
        for l in 0..hp.n_layer {
            for (name, width) in [
                ("attn_norm", hp.n_embd),
                ("Qcur", e),
                ("Kcur", ekv),
                ("Vcur", ekv),
                ("kqv_out", e),
                ("attn_out", hp.n_embd),
                ("ffn_inp", hp.n_embd),
                ("ffn_norm", hp.n_embd),
                ("ffn_out", hp.n_embd),
                ("l_out", hp.n_embd),
            ] {
                let p = dir.join(format!("pass-{pass}/{name}-{l}.bin"));
                let b = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                assert_eq!(b.len(), n * width * 4, "{}", p.display());
                assert!(floats(&b).iter().all(|v| v.is_finite()), "{}", p.display());
            }
        }
    }
    // The residual stream after the last layer, normed and projected, is what the logits came
    // from: the dump holds the pass's real values (its last row differs from the second pass's).
    let last = floats(&std::fs::read(dir.join(format!("pass-0/l_out-{}.bin", hp.n_layer - 1))).unwrap());
    let next = floats(&std::fs::read(dir.join(format!("pass-1/l_out-{}.bin", hp.n_layer - 1))).unwrap());
    assert_ne!(&last[3 * hp.n_embd..], &next[..], "two passes dumped the same values");
    assert!(!dir.join("pass-2").exists(), "one folder per pass");
    assert!(first.iter().all(|v| v.is_finite()));
    let _ = std::fs::remove_dir_all(&dir);
}
