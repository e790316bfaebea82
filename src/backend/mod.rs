//! The ops the forward pass needs, per device.
//!
//! The forward pass ([`crate::model::forward`]) is written once against [`Backend`]; a device
//! implements the trait (`cpu/` here; a CUDA backend implements the same trait). The contract:
//!
//! * An [`Backend::Act`] is a row-major f32 matrix `[rows][cols]` owned by the device (one row per
//!   token). Ops write their outputs after [`Backend::act_resize`]ing them, so buffers kept across
//!   steps are reused and a decode step allocates nothing.
//! * A [`Backend::Weight`] is a 2-D view of a GGUF tensor in its stored type: `rows` rows of `cols`
//!   elements (a 3-D expert tensor is `n_expert * rows_per_expert` rows). Matmuls compute
//!   `out[t][r] = dot(W[r], x[t])`, quantizing each activation row once to the weight type's
//!   `vec_dot_type` (as llama.cpp's CPU backend does) where the weight type asks for it.
//! * The KV cache lives in a [`Backend::Kv`]: per layer, `n_slots` token slots of K and of V, each a
//!   row of `n_embd_kv` elements in the KV type. Slot `s` belongs to block `s / KV_BLOCK`; which
//!   blocks a sequence owns is the KV manager's business ([`crate::kv`]): the backend only sees slot
//!   and block numbers.
//! * Errors are reported, never panicked: a device failure is `ErrorKind::Device`.

pub mod cpu;
pub mod cuda;

use std::sync::Arc;

use crate::error::Result;
use crate::gguf::{Gguf, TensorInfo};
use crate::quant::GgmlType;

/// Tokens per KV block (the paging granularity).
pub const KV_BLOCK: usize = 16;

/// RoPE parameters of a model (llama.cpp's `LLAMA_ROPE_TYPE_NORM`: rotation of adjacent pairs
/// `(x[2i], x[2i+1])` by `pos * freq_scale * freq_base^(-2i/n_rot)`, only the first `n_rot`
/// dimensions of each head rotated).
#[derive(Clone, Debug, PartialEq)]
pub struct RopeParams {
    pub n_rot: usize,
    pub freq_base: f32,
    pub freq_scale: f32,
    /// Per-pair divisors of the frequency (`rope_freqs.weight`, Llama-3 style), when present.
    pub freq_factors: Option<Vec<f32>>,
}

/// Shape and element type of a context's KV storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    pub n_layer: usize,
    pub n_slots: usize,
    /// Elements of one K (or V) row: `n_head_kv * head_dim`.
    pub n_embd_kv: usize,
    /// F32, F16 or Q8_0.
    pub ty: GgmlType,
}

impl KvLayout {
    /// Bytes of one K (or V) row of one layer.
    pub fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.n_embd_kv as u64).unwrap_or(0) as usize
    }
    /// Bytes of the whole store (K and V, every layer).
    pub fn total_bytes(&self) -> u64 {
        2 * self.n_layer as u64 * self.n_slots as u64 * self.row_bytes() as u64
    }
}

/// Which cached positions each token of a batch attends to: token `t` belongs to sequence
/// `tok_seq[t]` (an index into `tables`) and sees that sequence's first `tok_n_kv[t]` positions
/// (its own included: the batch's K/V are stored before attention runs, so causality is just
/// the count). `tables[s][p / KV_BLOCK]` is the block holding position `p` of sequence `s`.
pub struct AttnBatch<'a> {
    pub tok_seq: &'a [u32],
    pub tok_n_kv: &'a [u32],
    pub tables: &'a [&'a [u32]],
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
}

/// The feed-forward of one layer: a dense SwiGLU (one always-on expert) or a routed mixture of
/// SwiGLU experts.
pub struct Ffn<W> {
    /// Router `[n_expert][n_embd]`, F32 in practice (llama-quantize never quantizes it);
    /// `None` for a dense layer.
    pub router: Option<W>,
    /// `[n_expert * n_ff][n_embd]`
    pub gate: W,
    /// `[n_expert * n_ff][n_embd]`
    pub up: W,
    /// `[n_expert * n_embd][n_ff]`
    pub down: W,
    pub n_expert: usize,
    pub n_expert_used: usize,
    pub n_ff: usize,
}

/// The routing rule of Mixtral: softmax over the router logits, the `k` most probable experts
/// (ties to the lower id), their probabilities renormalised to sum to one. Writes the chosen ids
/// (by descending probability) and weights; `probs` is scratch of `logits.len()`.
pub fn route_top_k(logits: &[f32], k: usize, probs: &mut [f32], ids: &mut [u32], weights: &mut [f32]) {
    // The softmax as llama.cpp computes it, so near-ties resolve the same way.
    probs.copy_from_slice(logits);
    cpu::vmath::softmax(probs);
    let mut taken = 0u64; // n_expert is small (≤ 64 here is enforced at load)
    let mut wsum = 0.0f32;
    for j in 0..k {
        let mut best = usize::MAX;
        for (e, &p) in probs.iter().enumerate() {
            if taken & (1 << e) == 0 && (best == usize::MAX || p > probs[best]) {
                best = e;
            }
        }
        taken |= 1 << best;
        ids[j] = best as u32;
        weights[j] = probs[best];
        wsum += probs[best];
    }
    for w in weights[..k].iter_mut() {
        *w /= wsum;
    }
}

/// How the routed (token, expert) slots of the MoE layers that keep some experts in host
/// memory were served, since the model was loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpertTraffic {
    /// Slots whose expert the device held.
    pub device_slots: u64,
    /// Slots whose expert was in host memory (computed by the CPU, or uploaded for a batch
    /// that brought the layer's experts over).
    pub host_slots: u64,
    /// Experts moved to the device in place of one the router picked less often.
    pub moves: u64,
}

/// The operations of a compute device. See the module documentation for the conventions.
pub trait Backend: Send + Sync + 'static {
    /// Cloning shares the weight's data (a tied output head is the embedding table itself).
    type Weight: Send + Sync + Clone;
    type Act: Send;
    type Kv: Send;

    /// A short name for messages ("cpu", "cuda:0").
    fn name(&self) -> String;

    /// Makes the tensor `t` of `gguf` usable as a matmul/embedding/norm weight (the CPU backend
    /// reads it in place from the map; a GPU backend uploads it). 1-D tensors are one row.
    fn weight(&self, gguf: &Arc<Gguf>, t: &TensorInfo) -> Result<Self::Weight>;

    fn act_new(&self) -> Self::Act;
    /// Sets the shape; keeps the allocation when it is large enough. Contents are unspecified.
    fn act_resize(&self, a: &mut Self::Act, rows: usize, cols: usize) -> Result<()>;
    /// Copies row `row` to the host.
    fn act_read_row(&self, a: &Self::Act, row: usize, out: &mut [f32]) -> Result<()>;

    /// `out[t] = table[ids[t]]`, dequantized (any stored type).
    fn embed(&self, table: &Self::Weight, ids: &[u32], out: &mut Self::Act) -> Result<()>;
    /// `out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w`.
    fn rms_norm(&self, x: &Self::Act, w: &Self::Weight, eps: f32, out: &mut Self::Act) -> Result<()>;
    /// `outs[i][t][r] = dot(ws[i][r], x[t])` for every weight: they share one input, which is
    /// quantized once per row.
    fn matmul(&self, x: &Self::Act, ws: &[&Self::Weight], outs: &mut [&mut Self::Act]) -> Result<()>;
    /// `x += y`.
    fn add(&self, x: &mut Self::Act, y: &Self::Act) -> Result<()>;
    /// `x += y`, then `out = rms_norm(x)`: a residual add and the norm of the block after it.
    /// A device may do both in one pass; the result is that of the two ops.
    fn add_rms_norm(&self, x: &mut Self::Act, y: &Self::Act, w: &Self::Weight, eps: f32, out: &mut Self::Act) -> Result<()> {
        self.add(x, y)?;
        self.rms_norm(x, w, eps, out)
    }
    /// `out[i] = x[rows[i]]`.
    fn gather_rows(&self, x: &Self::Act, rows: &[u32], out: &mut Self::Act) -> Result<()>;
    /// Rotates each of the `n_head` heads of each row at position `pos[t]`.
    fn rope(&self, x: &mut Self::Act, n_head: usize, pos: &[u32], p: &RopeParams) -> Result<()>;

    fn kv_new(&self, layout: &KvLayout) -> Result<Self::Kv>;
    /// Stores row `t` of `k`/`v` in slot `slots[t]` of `layer`.
    fn kv_store(&self, kv: &mut Self::Kv, layer: usize, slots: &[u32], k: &Self::Act, v: &Self::Act) -> Result<()>;
    /// The attention block's RoPE and KV store: `rope(q, n_head)`, `rope(k, n_head_kv)` at
    /// `pos`, then `kv_store` of `k` and `v`. A device may do all three in one pass; the result
    /// is that of the three ops.
    #[allow(clippy::too_many_arguments)]
    fn rope_kv_store(
        &self,
        q: &mut Self::Act,
        k: &mut Self::Act,
        v: &Self::Act,
        n_head: usize,
        n_head_kv: usize,
        pos: &[u32],
        p: &RopeParams,
        kv: &mut Self::Kv,
        layer: usize,
        slots: &[u32],
    ) -> Result<()> {
        self.rope(q, n_head, pos, p)?;
        self.rope(k, n_head_kv, pos, p)?;
        self.kv_store(kv, layer, slots, k, v)
    }
    /// Copies the first `n` slots of block `src` to block `dst`, every layer (copy-on-write).
    fn kv_copy_block(&self, kv: &mut Self::Kv, src: u32, dst: u32, n: usize) -> Result<()>;
    /// Appends the raw K then V rows (KV type) of `slots` in `layer` to `out` (for saving).
    fn kv_export(&self, kv: &Self::Kv, layer: usize, slots: &[u32], out: &mut Vec<u8>) -> Result<()>;
    /// The inverse of `kv_export`: `data` holds K rows then V rows for `slots`.
    fn kv_import(&self, kv: &mut Self::Kv, layer: usize, slots: &[u32], data: &[u8]) -> Result<()>;

    /// Causal GQA attention for every token of the batch over the cached K/V of `layer`:
    /// `out[t] = concat_h softmax(q_h · K_g / sqrt(head_dim)) · V_g`, g = h / (n_head / n_head_kv).
    fn attention(&self, kv: &Self::Kv, layer: usize, q: &Self::Act, b: &AttnBatch, out: &mut Self::Act) -> Result<()>;

    /// The SwiGLU feed-forward, dense or routed (`down(silu(gate x) * up x)`, for MoE the
    /// renormalised-weight sum over the chosen experts; only those experts are computed).
    /// When `routes` is given, the chosen expert ids (token-major, `n_expert_used` each, by
    /// descending probability) are appended to it.
    fn ffn(&self, x: &Self::Act, f: &Ffn<Self::Weight>, out: &mut Self::Act, routes: Option<&mut Vec<u32>>) -> Result<()>;

    /// For a backend that keeps some experts in host memory: how their layers' routed slots
    /// were served. None where every expert is where the backend computes.
    fn expert_traffic(&self) -> Option<ExpertTraffic> {
        None
    }
}
