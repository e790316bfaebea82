//! Random-weight llama / Mixtral GGUFs of any shape and type mix (shared by examples/make_model.rs
//! and examples/cuda_parity.rs): weights from `xdan::quant::random_weights`, norms about 1, a
//! synthetic SentencePiece-style vocabulary so the engine's loader accepts the file. Tensors are
//! streamed to the file one at a time (`GgufWriter::add_tensor_deferred`), so a 26 GB model needs
//! one tensor's worth of memory.
//!
//! Type mixes (the tensors not named keep F32: norms and the router `ffn_gate_inp`):
//! - `iq2_xxs`: what llama-quantize IQ2_XXS writes for a model with 8 or more experts (seen in
//!   tests/data/tiny-mixtral/IQ2_XXS): experts (gate, up, down) and attn_q IQ2_XXS, attn_k and
//!   attn_v Q4_K, attn_output Q5_K, token_embd Q2_K, output Q5_K.
//! - `q4_k_m`: llama-quantize Q4_K_M for 8+ experts: experts and attn_q Q4_K, except ffn_down
//!   Q6_K on the layers llama.cpp gives more bits (the first and last eighth, and every third
//!   layer between), attn_k and attn_v Q8_0, attn_output Q5_K, token_embd Q4_K, output Q6_K.
//! - any type name (`q4_0`, `iq3_s`, `bf16`, ...): every matrix in that type.

#![allow(dead_code)]

use std::path::Path;

use xdan::gguf::{Array, GgufWriter};
use xdan::quant::{random_weights, GgmlType};
use xdan::{Error, Result};

#[derive(Clone, Debug)]
pub struct Shape {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// 0: a dense llama.
    pub n_expert: usize,
    pub n_expert_used: usize,
    pub n_vocab: usize,
    pub rope_base: f32,
    pub n_ctx: usize,
    pub eps: f32,
}

impl Shape {
    /// Mixtral 8x7B.
    pub fn mixtral_8x7b() -> Shape {
        Shape {
            n_layer: 32,
            n_embd: 4096,
            n_ff: 14336,
            n_head: 32,
            n_head_kv: 8,
            n_expert: 8,
            n_expert_used: 2,
            n_vocab: 32000,
            rope_base: 1e6,
            n_ctx: 32768,
            eps: 1e-5,
        }
    }
    /// tiny-mixtral of the fixtures (tests/data/FIXTURES.md).
    pub fn tiny_mixtral() -> Shape {
        Shape {
            n_layer: 2,
            n_embd: 256,
            n_ff: 512,
            n_head: 8,
            n_head_kv: 2,
            n_expert: 8,
            n_expert_used: 2,
            n_vocab: 1024,
            rope_base: 1e6,
            n_ctx: 4096,
            eps: 1e-5,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mix {
    Iq2Xxs,
    Q4KM,
    All(GgmlType),
}

impl Mix {
    pub fn parse(s: &str) -> Option<Mix> {
        match s.to_ascii_lowercase().as_str() {
            "iq2_xxs" => Some(Mix::Iq2Xxs),
            "q4_k_m" => Some(Mix::Q4KM),
            t => GgmlType::from_name(t).map(Mix::All),
        }
    }

    /// The type of matrix `kind` ("attn_q", "ffn_down_exps", "token_embd", ...) in layer `il`.
    pub fn type_of(self, kind: &str, il: usize, n_layer: usize) -> GgmlType {
        use GgmlType::*;
        let more_bits = il < n_layer / 8 || il >= 7 * n_layer / 8 || (il >= n_layer / 8 && (il - n_layer / 8) % 3 == 2);
        match self {
            Mix::All(t) => t,
            Mix::Iq2Xxs => match kind {
                "token_embd" => Q2_K,
                "output" | "attn_output" => Q5_K,
                "attn_k" | "attn_v" => Q4_K,
                _ => IQ2_XXS,
            },
            Mix::Q4KM => match kind {
                "token_embd" => Q4_K,
                "output" => Q6_K,
                "attn_output" => Q5_K,
                "attn_k" | "attn_v" => Q8_0,
                "ffn_down_exps" | "ffn_down" if more_bits => Q6_K,
                _ => Q4_K,
            },
        }
    }
}

/// The tensors of the model: (name, dims in GGML order, type).
pub fn tensors(s: &Shape, mix: Mix) -> Vec<(String, Vec<u64>, GgmlType)> {
    let (e, f, v) = (s.n_embd as u64, s.n_ff as u64, s.n_vocab as u64);
    let ekv = (s.n_embd / s.n_head * s.n_head_kv) as u64;
    let x = s.n_expert as u64;
    let mut t = vec![
        ("token_embd.weight".to_string(), vec![e, v], mix.type_of("token_embd", 0, s.n_layer)),
        ("output_norm.weight".to_string(), vec![e], GgmlType::F32),
        ("output.weight".to_string(), vec![e, v], mix.type_of("output", 0, s.n_layer)),
    ];
    for il in 0..s.n_layer {
        let mut add = |kind: &str, dims: Vec<u64>, f32: bool| {
            let ty = if f32 { GgmlType::F32 } else { mix.type_of(kind, il, s.n_layer) };
            t.push((format!("blk.{il}.{kind}.weight"), dims, ty));
        };
        add("attn_norm", vec![e], true);
        add("attn_q", vec![e, e], false);
        add("attn_k", vec![e, ekv], false);
        add("attn_v", vec![e, ekv], false);
        add("attn_output", vec![e, e], false);
        add("ffn_norm", vec![e], true);
        if x > 0 {
            add("ffn_gate_inp", vec![e, x], true);
            add("ffn_gate_exps", vec![e, f, x], false);
            add("ffn_up_exps", vec![e, f, x], false);
            add("ffn_down_exps", vec![f, e, x], false);
        } else {
            add("ffn_gate", vec![e, f], false);
            add("ffn_up", vec![e, f], false);
            add("ffn_down", vec![f, e], false);
        }
    }
    t
}

/// A llama SentencePiece-style vocabulary of `n` tokens: `<unk>`, `<s>`, `</s>`, the 256 byte
/// tokens, then pieces `▁t<i>`.
fn vocab(w: &mut GgufWriter, n: usize) {
    let mut tokens = vec![b"<unk>".to_vec(), b"<s>".to_vec(), b"</s>".to_vec()];
    let mut types = vec![2i32, 3, 3];
    for b in 0..256 {
        tokens.push(format!("<0x{b:02X}>").into_bytes());
        types.push(6);
    }
    for i in tokens.len()..n {
        tokens.push(format!("\u{2581}t{i}").into_bytes());
        types.push(1);
    }
    let scores: Vec<f32> = (0..n).map(|i| if types[i] == 1 { -(i as f32) } else { 0.0 }).collect();
    w.set_str("tokenizer.ggml.model", "llama")
        .set_str("tokenizer.ggml.pre", "default")
        .set_array("tokenizer.ggml.tokens", Array::String(tokens))
        .set_array("tokenizer.ggml.scores", Array::F32(scores))
        .set_array("tokenizer.ggml.token_type", Array::I32(types))
        .set_u32("tokenizer.ggml.bos_token_id", 1)
        .set_u32("tokenizer.ggml.eos_token_id", 2)
        .set_u32("tokenizer.ggml.unknown_token_id", 0)
        .set_bool("tokenizer.ggml.add_bos_token", true)
        .set_bool("tokenizer.ggml.add_eos_token", false);
}

/// Writes the model to `path`; returns its size in bytes.
pub fn write(path: &Path, s: &Shape, mix: Mix, seed: u64) -> Result<u64> {
    if s.n_vocab < 260 || s.n_head == 0 || s.n_embd % s.n_head != 0 || s.n_head_kv == 0 || s.n_head % s.n_head_kv != 0 {
        return Err(Error::invalid_arg(format!("model shape {s:?}: needs n_vocab >= 260 and heads dividing n_embd and each other")));
    }
    let mut w = GgufWriter::new();
    let n_rot = (s.n_embd / s.n_head) as u32;
    w.set_str("general.architecture", "llama")
        .set_str("general.name", &format!("random-{:?}", mix).to_lowercase())
        .set_u32("llama.block_count", s.n_layer as u32)
        .set_u32("llama.context_length", s.n_ctx as u32)
        .set_u32("llama.embedding_length", s.n_embd as u32)
        .set_u32("llama.feed_forward_length", s.n_ff as u32)
        .set_u32("llama.attention.head_count", s.n_head as u32)
        .set_u32("llama.attention.head_count_kv", s.n_head_kv as u32)
        .set_f32("llama.rope.freq_base", s.rope_base)
        .set_f32("llama.attention.layer_norm_rms_epsilon", s.eps)
        .set_u32("llama.vocab_size", s.n_vocab as u32)
        .set_u32("llama.rope.dimension_count", n_rot);
    if s.n_expert > 0 {
        w.set_u32("llama.expert_count", s.n_expert as u32).set_u32("llama.expert_used_count", s.n_expert_used as u32);
    }
    vocab(&mut w, s.n_vocab);
    let list = tensors(s, mix);
    for (name, dims, ty) in &list {
        w.add_tensor_deferred(name, dims, *ty).map_err(|e| e.context("random model"))?;
    }
    w.write_to_with(path, &|i, offset, buf| {
        // A seed per tensor and piece: the same file for the same seed on any machine.
        let seed = seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ offset.wrapping_mul(0xd6e8_feb8_6659_fd93);
        if list[i].0.ends_with("_norm.weight") {
            // Norm weights 1 ± 0.05: a norm of random sign or size would only rescale.
            random_weights(GgmlType::F32, seed, buf)?;
            for c in buf.chunks_exact_mut(4) {
                let v = 1.0 + f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                c.copy_from_slice(&v.to_le_bytes());
            }
            Ok(())
        } else {
            random_weights(list[i].2, seed, buf)
        }
    })?;
    Ok(w.file_bytes())
}
