//! Llama-architecture models (dense llama and Mixtral-style MoE): hyper-parameters from the
//! GGUF metadata, the tensor table checked against them, and the forward pass.

pub mod dump;
pub mod forward;

use std::sync::Arc;

use crate::backend::{Backend, Ffn, RopeParams};
use crate::error::{Error, Result};
use crate::gguf::{Gguf, TensorInfo};

/// The hyper-parameters of a llama-family model, all read from metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct HParams {
    pub arch: String,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_expert: usize,
    pub n_expert_used: usize,
    pub rms_eps: f32,
    pub rope: RopeParams,
}

impl HParams {
    pub fn n_embd_kv(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    pub fn from_gguf(g: &Gguf) -> Result<HParams> {
        let arch = g.get_str("general.architecture")?.to_string();
        if arch != "llama" {
            return Err(Error::unsupported(format!(
                "model architecture '{arch}' is not supported (supported: llama, including Mixtral-style MoE)"
            )));
        }
        let k = |s: &str| format!("{arch}.{s}");
        let u = |s: &str| -> Result<usize> { Ok(g.get_u32(&k(s))? as usize) };
        let u_or = |s: &str, d: usize| -> Result<usize> {
            if g.get(&k(s)).is_some() { u(s) } else { Ok(d) }
        };
        let n_embd = u("embedding_length")?;
        let n_head = u("attention.head_count")?;
        let n_head_kv = u_or("attention.head_count_kv", n_head)?;
        let n_layer = u("block_count")?;
        let n_ff = u("feed_forward_length")?;
        let n_expert = u_or("expert_count", 0)?;
        let n_expert_used = u_or("expert_used_count", 0)?;
        let bad = |m: String| Err(Error::format(m));
        if n_embd == 0 || n_head == 0 || n_layer == 0 || n_ff == 0 || n_embd % n_head != 0 {
            return bad(format!(
                "bad hyper-parameters: embedding_length {n_embd}, head_count {n_head}, block_count {n_layer}, feed_forward_length {n_ff}"
            ));
        }
        if n_head_kv == 0 || n_head % n_head_kv != 0 {
            return bad(format!("head_count {n_head} is not a multiple of head_count_kv {n_head_kv}"));
        }
        if n_expert > 64 || n_expert_used > n_expert || (n_expert > 0 && n_expert_used == 0) {
            return bad(format!("bad expert counts: expert_count {n_expert}, expert_used_count {n_expert_used} (at most 64 experts)"));
        }
        let head_dim = n_embd / n_head;
        let n_rot = u_or("rope.dimension_count", head_dim)?;
        if n_rot > head_dim || n_rot % 2 != 0 {
            return bad(format!("rope.dimension_count {n_rot} does not fit head size {head_dim}"));
        }
        let f_or = |s: &str, d: f32| -> Result<f32> {
            if g.get(&k(s)).is_some() { g.get_f32(&k(s)) } else { Ok(d) }
        };
        let freq_base = f_or("rope.freq_base", 10000.0)?;
        let mut freq_scale = 1.0f32;
        let scaling = if g.get(&k("rope.scaling.type")).is_some() {
            g.get_str(&k("rope.scaling.type"))?.to_string()
        } else {
            "none".into()
        };
        match scaling.as_str() {
            "none" => {}
            "linear" => {
                let f = f_or("rope.scaling.factor", 1.0)?;
                if f > 0.0 {
                    freq_scale = 1.0 / f;
                }
            }
            other => return Err(Error::unsupported(format!("rope scaling type '{other}' is not supported"))),
        }
        if g.get(&k("rope.scale_linear")).is_some() {
            let f = g.get_f32(&k("rope.scale_linear"))?;
            if f > 0.0 {
                freq_scale = 1.0 / f;
            }
        }
        let rms_eps = f_or("attention.layer_norm_rms_epsilon", 1e-5)?;
        let n_vocab = if g.get(&k("vocab_size")).is_some() {
            u("vocab_size")?
        } else {
            g.get_str_array("tokenizer.ggml.tokens").map(|t| t.len()).unwrap_or(0)
        };
        let n_ctx_train = u_or("context_length", 2048)?;
        Ok(HParams {
            arch,
            n_vocab,
            n_ctx_train,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            n_expert,
            n_expert_used,
            rms_eps,
            rope: RopeParams { n_rot, freq_base, freq_scale, freq_factors: None },
        })
    }
}

/// One transformer block's weights.
pub struct Layer<W> {
    pub attn_norm: W,
    pub wq: W,
    pub wk: W,
    pub wv: W,
    pub wo: W,
    pub ffn_norm: W,
    pub ffn: Ffn<W>,
}

/// Every weight of the model, prepared for backend `B`.
pub struct Weights<B: Backend> {
    pub tok_embd: B::Weight,
    pub output_norm: B::Weight,
    pub output: B::Weight,
    pub layers: Vec<Layer<B::Weight>>,
}

/// Looks up tensor `name`, checks its shape (GGML order) and that the engine can compute with
/// its type.
fn tensor<'a>(g: &'a Gguf, name: &str, dims: &[usize]) -> Result<&'a TensorInfo> {
    let t = g.tensor(name).ok_or_else(|| Error::format(format!("tensor '{name}' is missing")))?;
    let got: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    // Trailing 1-dims are equivalent in ggml.
    let trim = |v: &[usize]| -> Vec<usize> {
        let mut v = v.to_vec();
        while v.len() > 1 && *v.last().unwrap() == 1 {
            v.pop();
        }
        v
    };
    if trim(&got) != trim(dims) {
        return Err(Error::format(format!("tensor '{name}' has shape {got:?}, expected {dims:?}")));
    }
    Ok(t)
}

/// Checks that a matmul/embedding weight has a type the CPU kernels handle.
fn check_type(t: &TensorInfo) -> Result<()> {
    if !crate::backend::cpu::qops::supported(t.ty) {
        return Err(Error::unsupported(format!("tensor '{}' has type {}, which the engine cannot compute with", t.name, t.ty)));
    }
    Ok(())
}

fn check_f32(t: &TensorInfo) -> Result<()> {
    if t.ty != crate::quant::GgmlType::F32 {
        return Err(Error::unsupported(format!("tensor '{}' has type {}, expected F32", t.name, t.ty)));
    }
    Ok(())
}

impl<B: Backend> Weights<B> {
    /// Finds, checks and prepares every tensor; `progress` gets the fraction of tensor bytes done
    /// and may cancel (false → `Cancelled`).
    pub fn load(be: &B, g: &Arc<Gguf>, hp: &HParams, progress: &mut dyn FnMut(f32) -> bool) -> Result<Weights<B>> {
        let (e, v, ff, ekv) = (hp.n_embd, hp.n_vocab, hp.n_ff, hp.n_embd_kv());
        let total: u64 = g.tensors().iter().map(|t| t.n_bytes).sum::<u64>().max(1);
        let mut done = 0u64;
        let mut prep = |t: &TensorInfo, done: &mut u64| -> Result<B::Weight> {
            let w = be.weight(g, t)?;
            *done += t.n_bytes;
            if !progress(*done as f32 / total as f32) {
                return Err(Error::new(crate::ErrorKind::Cancelled, "model load cancelled by the progress callback"));
            }
            Ok(w)
        };
        let te = tensor(g, "token_embd.weight", &[e, v])?;
        check_type(te)?;
        let tok_embd = prep(te, &mut done)?;
        let on = tensor(g, "output_norm.weight", &[e])?;
        check_f32(on)?;
        let output_norm = prep(on, &mut done)?;
        let output = match g.tensor("output.weight") {
            Some(_) => {
                let t = tensor(g, "output.weight", &[e, v])?;
                check_type(t)?;
                prep(t, &mut done)?
            }
            None => tok_embd.clone(),
        };
        let mut layers = Vec::with_capacity(hp.n_layer);
        for il in 0..hp.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}.weight");
            let mut mm = |name: String, dims: &[usize]| -> Result<B::Weight> {
                let t = tensor(g, &name, dims)?;
                check_type(t)?;
                prep(t, &mut done)
            };
            let wq = mm(n("attn_q"), &[e, e])?;
            let wk = mm(n("attn_k"), &[e, ekv])?;
            let wv = mm(n("attn_v"), &[e, ekv])?;
            let wo = mm(n("attn_output"), &[e, e])?;
            let ffn = if hp.n_expert > 0 {
                let x = hp.n_expert;
                let router_t = tensor(g, &n("ffn_gate_inp"), &[e, x])?;
                check_f32(router_t)?;
                let router = Some(be.weight(g, router_t)?);
                Ffn {
                    router,
                    gate: mm(n("ffn_gate_exps"), &[e, ff, x])?,
                    up: mm(n("ffn_up_exps"), &[e, ff, x])?,
                    down: mm(n("ffn_down_exps"), &[ff, e, x])?,
                    n_expert: x,
                    n_expert_used: hp.n_expert_used,
                    n_ff: ff,
                }
            } else {
                Ffn {
                    router: None,
                    gate: mm(n("ffn_gate"), &[e, ff])?,
                    up: mm(n("ffn_up"), &[e, ff])?,
                    down: mm(n("ffn_down"), &[ff, e])?,
                    n_expert: 1,
                    n_expert_used: 1,
                    n_ff: ff,
                }
            };
            let mut norm = |name: String| -> Result<B::Weight> {
                let t = tensor(g, &name, &[e])?;
                check_f32(t)?;
                prep(t, &mut done)
            };
            let attn_norm = norm(n("attn_norm"))?;
            let ffn_norm = norm(n("ffn_norm"))?;
            layers.push(Layer { attn_norm, wq, wk, wv, wo, ffn_norm, ffn });
        }
        Ok(Weights { tok_embd, output_norm, output, layers })
    }
}

/// Reads `rope_freqs.weight` (per-pair frequency divisors) when the file has one.
pub fn rope_freq_factors(g: &Gguf, hp: &HParams) -> Result<Option<Vec<f32>>> {
    match g.tensor("rope_freqs.weight") {
        None => Ok(None),
        Some(_) => {
            let t = tensor(g, "rope_freqs.weight", &[hp.rope.n_rot / 2])?;
            check_f32(t)?;
            let b = g.tensor_data(t);
            Ok(Some(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
        }
    }
}

/// A 64-bit FNV-1a fingerprint of the model: hyper-parameters, the tensor table, and the first
/// bytes of every tensor (so files with equal shapes but different weights differ).
pub fn fingerprint(g: &Gguf, hp: &HParams) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h ^= x as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(format!("{hp:?}").as_bytes());
    for t in g.tensors() {
        eat(t.name.as_bytes());
        eat(&t.ty.id().to_le_bytes());
        for d in &t.dims {
            eat(&d.to_le_bytes());
        }
        let data = g.tensor_data(t);
        eat(&data[..data.len().min(64)]);
    }
    h
}
