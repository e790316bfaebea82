//! The engine's [`Backend`] on a CUDA device: weights uploaded once in their GGUF types,
//! activations and the KV cache in device memory, every op a kernel launch.
//!
//! Generic over [`Device`], so the same host code drives a GPU (driver API) or the emulator
//! ([`super::device::EmuDevice`]), on which the tests run it end to end.

use std::sync::Arc;

use parking_lot::Mutex;

use super::device::{Arg, DevBuf, DevPtr, Device};
use super::host_experts::{ExpertPlan, HostExperts, Slots, REBALANCE_SLOTS};
use crate::backend::cpu::{CpuBackend, Mat};
use crate::backend::{AttnBatch, Backend, ExpertTraffic, Ffn, KvLayout, RopeParams, KV_BLOCK};
use crate::error::{Error, ErrorKind, Result};
use crate::gguf::{Gguf, TensorInfo};
use crate::quant::GgmlType;

/// Rows per block of the float matvec kernels (one warp each). The quantized ones launch with
/// the block shape they were compiled for, [`Device::mmvq_shape`].
const MATVEC_ROWS: u32 = 4;
/// Warps per block of the router kernels (XD_ROUTE_WARPS in kernels/router.cu).
const ROUTE_WARPS: u32 = 8;
/// Positions per attention split of a decode-sized batch (a block's four warps take 32 of them
/// per round at head_dim 128): enough blocks to spread a long context over the GPU, few
/// enough parts to merge. Batches of [`ATTN_BATCH_ROWS`] tokens or more (prefill) take splits
/// four times longer: their tokens make blocks enough.
const ATTN_SPLIT: usize = 64;
const ATTN_BATCH_ROWS: usize = 32;
/// Bytes of one q8_1 activation block (common.cuh: f32 d, f32 s, 32 int8).
const Q8_1_BYTES: usize = 40;
/// Output tile of the prefill GEMM (gemm.cu): weight rows by tokens, and its threads.
pub const GEMM_BM: usize = 64;
pub const GEMM_BN: usize = 128;
pub const GEMM_THREADS: u32 = 256;
/// Rows per weight matrix (per expert, on average, for MoE) from which a batch goes through the
/// tiled GEMM rather than one matvec per row. Both decode weights through the same per-type dot
/// products: a matvec pays one dot product per 32-value sub-block per row, the GEMM one per
/// value (32 per sub-block) per 128-token tile, so below 32 rows the matvecs decode less and
/// decode-sized batches keep them; from 32 on the GEMM decodes less and its multiplies run on
/// the tensor cores.
pub const GEMM_MIN_ROWS: usize = 32;

/// The kernel-name suffix of a weight type, or None when no kernel reads it.
pub fn type_suffix(ty: GgmlType) -> Option<&'static str> {
    use GgmlType::*;
    Some(match ty {
        F32 => "f32",
        F16 => "f16",
        BF16 => "bf16",
        Q4_0 => "q4_0",
        Q4_1 => "q4_1",
        Q5_0 => "q5_0",
        Q5_1 => "q5_1",
        Q8_0 => "q8_0",
        Q2_K => "q2_k",
        Q3_K => "q3_k",
        Q4_K => "q4_k",
        Q5_K => "q5_k",
        Q6_K => "q6_k",
        IQ4_NL => "iq4_nl",
        IQ4_XS => "iq4_xs",
        IQ2_XXS => "iq2_xxs",
        IQ2_XS => "iq2_xs",
        IQ2_S => "iq2_s",
        IQ3_XXS => "iq3_xxs",
        IQ3_S => "iq3_s",
        IQ1_S => "iq1_s",
        IQ1_M => "iq1_m",
        MXFP4 => "mxfp4",
        _ => return None,
    })
}

/// Whether `ty` is a float type, whose matvecs take f32 activations (not q8_1 blocks) and which
/// has no fused QKV or gate+up kernels.
fn is_float(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

fn blocks(n: usize, per: usize) -> u32 {
    n.div_ceil(per) as u32
}

/// A weight in device memory: `rows` rows of `cols` elements of type `ty`.
pub struct CudaWeight<D: Device> {
    buf: Arc<DevBuf<D>>,
    pub name: String,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub row_bytes: usize,
    /// For an expert tensor whose experts do not all fit on the device: which ones `buf` holds
    /// (in id order) and the host's view of the rest. `rows` still counts every expert.
    pub host: Option<Arc<HostExperts>>,
}

// By hand: a derive would ask `D: Clone`; a clone shares the device buffer.
impl<D: Device> Clone for CudaWeight<D> {
    fn clone(&self) -> Self {
        CudaWeight {
            buf: self.buf.clone(),
            name: self.name.clone(),
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            row_bytes: self.row_bytes,
            host: self.host.clone(),
        }
    }
}

impl<D: Device> CudaWeight<D> {
    /// The kernel-name suffix of this weight's type; Unsupported, naming the tensor, when no
    /// kernel reads it.
    fn suffix(&self) -> Result<&'static str> {
        type_suffix(self.ty).ok_or_else(|| Error::unsupported(format!("CUDA: no kernel for {} ({})", self.name, self.ty)))
    }
}

/// A row-major f32 matrix in device memory, and optionally its q8_1 "shadow": the blocks that
/// quantize_q8_1 would make of it, written by the op that wrote the matrix (a norm, attention)
/// so that the quantized matmul after it need not launch the quantization. The shadow is valid
/// only until the matrix is written again: resizing and every in-place op drop it.
pub struct CudaAct<D: Device> {
    buf: Option<DevBuf<D>>,
    q8: Option<DevBuf<D>>,
    q8_valid: bool,
    pub rows: usize,
    pub cols: usize,
}

impl<D: Device> CudaAct<D> {
    fn ptr(&self) -> DevPtr {
        self.buf.as_ref().map_or(0, |b| b.ptr)
    }

    /// The q8_1 blocks of the current contents, when an op left them.
    fn q8_shadow(&self) -> Option<DevPtr> {
        match (&self.q8, self.q8_valid) {
            (Some(b), true) => Some(b.ptr),
            _ => None,
        }
    }

    /// Whether the q8_1 shadow of the current contents is there (for tests of its upkeep).
    pub fn has_q8_shadow(&self) -> bool {
        self.q8_shadow().is_some()
    }
}

/// K and V of every layer: `n_slots` rows of `n_embd_kv` values (f32 or f16).
pub struct CudaKv<D: Device> {
    layout: KvLayout,
    row_bytes: usize,
    k: Vec<DevBuf<D>>,
    v: Vec<DevBuf<D>>,
}

/// Grow-only device scratch, one buffer per use.
#[derive(Clone, Copy)]
enum S {
    Xq,
    Ids,
    Pos,
    FreqFactors,
    Tables,
    TableOff,
    NKv,
    PartMl,
    PartAcc,
    AttnCounts,
    Slots,
    Logits,
    RouteIds,
    RouteW,
    Gate,
    Up,
    Down,
    GateQ,
    GateCounts,
    GroupCounts,
    GroupLists,
    HostPart,
}
const N_SCRATCH: usize = S::HostPart as usize + 1;

pub struct CudaBackend<D: Device> {
    dev: Arc<D>,
    scratch: Mutex<Vec<ScratchBuf<D>>>,
    gemm_min_rows: usize,
    /// Whether the fused kernels of the decode step run (add + RMSNorm + q8_1, RoPE + KV store,
    /// attention output + q8_1, router matvec + top-k); off, each op is its own launch.
    fuse: bool,
    /// Expert tensors whose experts stay partly in host memory (see [`Self::with_expert_plan`]).
    plan: ExpertPlan,
    /// Batches of at least this many tokens bring a layer's host experts to the device
    /// instead of computing them on the CPU (see [`Self::with_stream_min_tokens`]).
    stream_min_tokens: usize,
    /// The device buffers a streamed layer's gate, up and down experts are assembled in.
    stream: Mutex<Vec<Arc<DevBuf<D>>>>,
    /// Routed slots per layer between looks at which host experts to move to the device
    /// (see [`Self::with_rebalance_slots`]).
    rebalance_slots: u64,
    traffic: Mutex<ExpertTraffic>,
}

/// One scratch buffer and, for metadata uploaded into it, the bytes it holds: the same
/// positions, slots and block tables serve every layer of a step, and are uploaded once.
struct ScratchBuf<D: Device> {
    buf: Option<DevBuf<D>>,
    held: Option<Vec<u8>>,
}

/// Scratch buffers borrowed for one op (the backend's lock is held meanwhile).
struct Scratch<'a, D: Device> {
    dev: &'a Arc<D>,
    bufs: parking_lot::MutexGuard<'a, Vec<ScratchBuf<D>>>,
}

impl<D: Device> Scratch<'_, D> {
    /// Scratch `s` of at least `bytes` bytes, for a kernel to write: whatever was uploaded
    /// there is forgotten.
    fn get(&mut self, s: S, bytes: usize) -> Result<DevPtr> {
        let slot = &mut self.bufs[s as usize];
        slot.held = None;
        if slot.buf.as_ref().map_or(true, |b| b.bytes < bytes) {
            slot.buf = None;
            slot.buf = Some(DevBuf::new(self.dev, bytes)?);
        }
        Ok(slot.buf.as_ref().unwrap().ptr)
    }
    /// Scratch `s` holding `bytes`; uploaded (without waiting for the device) only when it
    /// does not hold them already.
    fn put(&mut self, s: S, bytes: Vec<u8>) -> Result<DevPtr> {
        let slot = &self.bufs[s as usize];
        if let (Some(b), Some(h)) = (&slot.buf, &slot.held) {
            if *h == bytes {
                return Ok(b.ptr);
            }
        }
        let p = self.get(s, bytes.len())?;
        // SAFETY: the buffer holds at least bytes.len() bytes.
        unsafe { self.dev.upload_async(p, &bytes)? };
        self.bufs[s as usize].held = Some(bytes);
        Ok(p)
    }
    fn put_i32(&mut self, s: S, v: &[i32]) -> Result<DevPtr> {
        self.put(s, v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    fn put_f32(&mut self, s: S, v: &[f32]) -> Result<DevPtr> {
        self.put(s, v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
}

/// Batch size from which a layer's host experts are brought to the device (see
/// [`CudaBackend::with_stream_min_tokens`]). Sending an expert over PCIe 4.0 (~25 GB/s) takes
/// about as long as a 16-core CPU takes to multiply it with one or two tokens, so batches of
/// prefill size win by far on the device; decode steps stay on the CPU.
pub const STREAM_MIN_TOKENS: usize = 32;

/// The number in environment variable `name`, or `default` where it is unset or not a number.
fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `XDAN_CUDA_FUSION=1` turns the fused decode kernels on by default (see
/// [`CudaBackend::with_fusion`]). Off by default: on the H200 the fused decode step measured
/// slower (docs/perf.md), so the separate launches stay the product path until it is re-measured.
fn fusion_default() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var("XDAN_CUDA_FUSION").is_ok_and(|v| v == "1"))
}

fn to_i32(v: &[u32], what: &str) -> Result<Vec<i32>> {
    v.iter()
        .map(|&x| i32::try_from(x).map_err(|_| Error::invalid_arg(format!("{what} {x} is out of range"))))
        .collect()
}

impl<D: Device> CudaBackend<D> {
    pub fn new(dev: Arc<D>) -> CudaBackend<D> {
        CudaBackend {
            dev,
            scratch: Mutex::new((0..N_SCRATCH).map(|_| ScratchBuf { buf: None, held: None }).collect()),
            gemm_min_rows: GEMM_MIN_ROWS,
            fuse: fusion_default(),
            plan: ExpertPlan::new(),
            stream_min_tokens: env_number("XDAN_CUDA_STREAM_MIN_TOKENS", STREAM_MIN_TOKENS).max(1),
            stream: Mutex::new(Vec::new()),
            rebalance_slots: env_number("XDAN_CUDA_REBALANCE_SLOTS", REBALANCE_SLOTS),
            traffic: Mutex::new(ExpertTraffic::default()),
        }
    }

    /// The backend looking, every `n` routed slots of a layer that keeps experts in host
    /// memory, at how often the router picked each of its experts, and moving one the router
    /// clearly prefers to the device in place of a colder one (at most one per `n` slots;
    /// [`REBALANCE_SLOTS`] by default, or `XDAN_CUDA_REBALANCE_SLOTS`; 0: the experts stay
    /// where the placement put them).
    pub fn with_rebalance_slots(mut self, n: u64) -> CudaBackend<D> {
        self.rebalance_slots = n;
        self
    }

    /// The backend with batches of at least `n` tokens computing a layer's host experts on the
    /// device: the layer's experts are assembled in device buffers (the resident ones copied
    /// there, the others uploaded from host memory) and the batch runs as if the device held
    /// them all. Below `n` tokens the CPU computes them, which reads each expert where it lies
    /// instead of sending it over the bus (default [`STREAM_MIN_TOKENS`], or
    /// `XDAN_CUDA_STREAM_MIN_TOKENS`).
    pub fn with_stream_min_tokens(mut self, n: usize) -> CudaBackend<D> {
        self.stream_min_tokens = n.max(1);
        self
    }

    /// The backend with the experts `plan` leaves out kept in host memory: for each stacked
    /// expert tensor it names, only the experts marked true are uploaded, and a feed-forward
    /// routed to the others computes them on the CPU (threads of the caller's rayon pool).
    pub fn with_expert_plan(mut self, plan: ExpertPlan) -> CudaBackend<D> {
        self.plan = plan;
        self
    }

    /// The backend with the fused kernels of the decode step on or off (default: off unless
    /// `XDAN_CUDA_FUSION=1`): Q, K and V in one matvec, gate and up with SwiGLU in one, residual
    /// add + RMSNorm + q8_1, RoPE + KV store, attention combine + q8_1, router matvec + top-k.
    /// The fused kernels sum in the order of the separate ones, so both give the same bits,
    /// which the tests check.
    pub fn with_fusion(mut self, on: bool) -> CudaBackend<D> {
        self.fuse = on;
        self
    }

    /// The backend with batches of at least `n` rows per matrix (per expert, on average) sent
    /// through the prefill GEMM instead of the matvecs ([`GEMM_MIN_ROWS`] by default; 1 sends
    /// every batch there, which lets tests drive the GEMM with short prompts).
    pub fn with_gemm_min_rows(mut self, n: usize) -> CudaBackend<D> {
        self.gemm_min_rows = n.max(1);
        self
    }

    pub fn device(&self) -> &Arc<D> {
        &self.dev
    }

    fn scratch(&self) -> Scratch<'_, D> {
        Scratch { dev: &self.dev, bufs: self.scratch.lock() }
    }

    fn launch(&self, name: &str, grid: [u32; 3], block: u32, args: &[Arg]) -> Result<()> {
        // SAFETY: every call site passes the kernel's parameters in order, with pointers into
        // buffers sized for the shapes it launches over.
        unsafe { self.dev.launch(name, grid, [block, 1, 1], 0, args) }
    }

    fn resize(&self, a: &mut CudaAct<D>, rows: usize, cols: usize) -> Result<()> {
        let need = rows * cols * 4;
        if a.buf.as_ref().map_or(true, |b| b.bytes < need) {
            a.buf = None;
            a.buf = Some(DevBuf::new(&self.dev, need)?);
        }
        a.rows = rows;
        a.cols = cols;
        a.q8_valid = false;
        Ok(())
    }

    /// Room for the q8_1 shadow of `a` (its current shape), when the fused kernels run and its
    /// rows are whole blocks; the op that fills it marks it valid after its launch.
    fn q8_room(&self, a: &mut CudaAct<D>) -> Result<Option<DevPtr>> {
        a.q8_valid = false;
        if !self.fuse || a.cols % 32 != 0 {
            return Ok(None);
        }
        let need = a.rows * a.cols / 32 * Q8_1_BYTES;
        if a.q8.as_ref().map_or(true, |b| b.bytes < need) {
            a.q8 = None;
            a.q8 = Some(DevBuf::new(&self.dev, need)?);
        }
        Ok(a.q8.as_ref().map(|b| b.ptr))
    }

    /// The q8_1 rows of `x`: its shadow when valid, else quantized into scratch `s`.
    fn q8_of(&self, sc: &mut Scratch<'_, D>, s: S, x: &CudaAct<D>) -> Result<DevPtr> {
        match x.q8_shadow() {
            Some(p) => Ok(p),
            None => self.quantize(sc, s, x.ptr(), x.rows, x.cols),
        }
    }

    /// Quantizes `rows` rows of `cols` f32 values at `x` to q8_1 blocks into scratch `s`.
    fn quantize(&self, sc: &mut Scratch<'_, D>, s: S, x: DevPtr, rows: usize, cols: usize) -> Result<DevPtr> {
        if cols % 32 != 0 {
            return Err(Error::unsupported(format!("CUDA matmul: rows of {cols} values are not whole q8_1 blocks of 32")));
        }
        let nb = rows * cols / 32;
        let xq = sc.get(s, nb * Q8_1_BYTES)?;
        self.launch("quantize_q8_1", [blocks(nb, 4), 1, 1], 128, &[Arg::Ptr(x), Arg::Ptr(xq), Arg::I32((nb * 32) as i32)])?;
        Ok(xq)
    }

    /// `y[slot][r] = dot(W_e[r], x[slot / x_group])` for `slots` slots, W_e the expert
    /// ids[slot] (0 when ids is null) of `w_rows` rows at `expert_stride` bytes apart. `x` is
    /// f32 rows (float weights) or q8_1 rows (quantized weights) of `cols` values.
    #[allow(clippy::too_many_arguments)]
    fn matvec(&self, w: &CudaWeight<D>, w_rows: usize, expert_stride: usize, ids: DevPtr, x: DevPtr, x_group: usize, y: DevPtr, slots: usize) -> Result<()> {
        let sfx = w.suffix()?;
        let cols = w.cols;
        let x_stride = if is_float(w.ty) { cols } else { cols / 32 };
        if slots > 65535 {
            return Err(Error::unsupported(format!("CUDA matmul: {slots} rows in one batch (at most 65535)")));
        }
        let (rows_per_block, threads) = if is_float(w.ty) {
            (MATVEC_ROWS, 32 * MATVEC_ROWS)
        } else {
            let s = self.dev.mmvq_shape();
            (s.rows_per_block(), s.threads())
        };
        self.launch(
            &format!("mul_mat_vec_{sfx}"),
            [blocks(w_rows, rows_per_block as usize), slots as u32, 1],
            threads,
            &[
                Arg::Ptr(w.buf.ptr),
                Arg::I64(expert_stride as i64),
                Arg::Ptr(ids),
                Arg::Ptr(x),
                Arg::I32(x_stride as i32),
                Arg::I32(x_group as i32),
                Arg::Ptr(y),
                Arg::I32(cols as i32),
                Arg::I32(w_rows as i32),
            ],
        )
    }

    /// Whether `rows` rows (slots) over `n_mat` matrices go through the GEMM for weight `w`: enough
    /// rows per matrix, and rows of whole 32-value steps (quantized rows always are).
    fn use_gemm(&self, w: &CudaWeight<D>, rows: usize, n_mat: usize) -> bool {
        rows >= self.gemm_min_rows * n_mat && w.cols % 32 == 0
    }

    /// `y[slot][r] = dot(W_e[r], x[slot / x_group])` on the tensor cores (gemm.cu), `x` f32 rows
    /// of `w.cols` values. Dense (`group` None): slots 0..n_tok, expert 0. Grouped
    /// (`group` = Some((counts, lists, n_expert))): for every expert e, the counts[e] slots
    /// lists[e * n_tok ..] (moe_group), weight matrices of `w_rows` rows `expert_stride` bytes
    /// apart; one launch with a grid layer per expert.
    #[allow(clippy::too_many_arguments)]
    fn gemm(&self, w: &CudaWeight<D>, w_rows: usize, expert_stride: usize, group: Option<(DevPtr, DevPtr, usize)>, x: DevPtr, x_group: usize, y: DevPtr, n_tok: usize) -> Result<()> {
        let sfx = w.suffix()?;
        let (counts, lists, n_exp) = group.unwrap_or((0, 0, 1));
        if w_rows == 0 || n_tok == 0 {
            return Ok(());
        }
        let tiles = blocks(n_tok, GEMM_BN);
        if tiles > 65535 || n_exp > 65535 || w.cols > i32::MAX as usize || w_rows > i32::MAX as usize {
            return Err(Error::unsupported(format!("CUDA GEMM: {n_tok} rows of {} against {w_rows} rows is too large a launch", w.cols)));
        }
        self.launch(
            &format!("mul_mat_{sfx}"),
            [blocks(w_rows, GEMM_BM), tiles, n_exp as u32],
            GEMM_THREADS,
            &[
                Arg::Ptr(w.buf.ptr),
                Arg::I64(expert_stride as i64),
                Arg::Ptr(counts),
                Arg::Ptr(lists),
                Arg::I32(n_tok as i32),
                Arg::Ptr(x),
                Arg::I32(x_group as i32),
                Arg::Ptr(y),
                Arg::I32(w.cols as i32),
                Arg::I32(w_rows as i32),
                Arg::I32(n_tok as i32),
            ],
        )
    }

    /// out[t] = sum over j < k of wts[t][j] * y[t * k + j]: the experts' outputs weighted back
    /// onto their tokens.
    fn moe_combine(&self, out: &CudaAct<D>, y: DevPtr, wts: DevPtr, k: usize, n_embd: usize, n_tok: usize) -> Result<()> {
        let n = n_tok * n_embd;
        self.launch(
            "moe_combine",
            [blocks(n, 256), 1, 1],
            256,
            &[Arg::Ptr(out.ptr()), Arg::Ptr(y), Arg::Ptr(wts), Arg::I32(k as i32), Arg::I32(n_embd as i32), Arg::I32(n_tok as i32)],
        )
    }

    /// Two or three quantized weights of one type over the same rows (Q, K and V) as one
    /// launch: false, launching nothing, when they do not qualify.
    fn matvec3(&self, sc: &mut Scratch<'_, D>, x: &CudaAct<D>, ws: &[&CudaWeight<D>], outs: &mut [&mut CudaAct<D>]) -> Result<bool> {
        let ty = ws[0].ty;
        if !self.fuse || !(2..=3).contains(&ws.len()) || ws.len() != outs.len() || is_float(ty) || ws.iter().any(|w| w.ty != ty) || x.rows == 0 || x.rows > 65535 {
            return Ok(false);
        }
        let sfx = ws[0].suffix()?;
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            self.resize(out, x.rows, w.rows)?;
        }
        let xq = self.q8_of(sc, S::Xq, x)?;
        let (w2, y2, n2) = if ws.len() == 3 { (ws[2].buf.ptr, outs[2].ptr(), ws[2].rows) } else { (0, 0, 0) };
        let total = ws[0].rows + ws[1].rows + n2;
        let shape = self.dev.mmvq_shape();
        self.launch(
            &format!("mul_mat_vec3_{sfx}"),
            [blocks(total, shape.rows_per_block() as usize), x.rows as u32, 1],
            shape.threads(),
            &[
                Arg::Ptr(ws[0].buf.ptr),
                Arg::Ptr(ws[1].buf.ptr),
                Arg::Ptr(w2),
                Arg::Ptr(outs[0].ptr()),
                Arg::Ptr(outs[1].ptr()),
                Arg::Ptr(y2),
                Arg::I32(ws[0].rows as i32),
                Arg::I32(ws[1].rows as i32),
                Arg::I32(n2 as i32),
                Arg::Ptr(xq),
                Arg::I32((x.cols / 32) as i32),
                Arg::I32(x.cols as i32),
            ],
        )?;
        Ok(true)
    }

    fn kv_suffix(kv: &CudaKv<D>) -> &'static str {
        match kv.layout.ty {
            GgmlType::F16 => "f16",
            GgmlType::Q8_0 => "q8_0",
            _ => "f32",
        }
    }

    fn check_layer(kv: &CudaKv<D>, layer: usize) -> Result<()> {
        if layer >= kv.k.len() {
            return Err(Error::internal(format!("KV layer {layer} of {}", kv.k.len())));
        }
        Ok(())
    }

    /// The head size of a RoPE over `n_head` heads of `x` at `pos`, or why the shapes do not fit.
    fn rope_head_dim(x: &CudaAct<D>, n_head: usize, pos: &[u32], p: &RopeParams) -> Result<usize> {
        if n_head == 0 || x.cols % n_head != 0 || pos.len() != x.rows {
            return Err(Error::internal(format!("rope: {} heads over rows of {}, {} positions for {} rows", n_head, x.cols, pos.len(), x.rows)));
        }
        let hd = x.cols / n_head;
        if p.n_rot > hd || p.n_rot % 2 != 0 {
            return Err(Error::unsupported(format!("rope: n_rot {} with heads of {hd}", p.n_rot)));
        }
        Ok(hd)
    }

    /// The positions and the frequency factors (0 when none) on the device.
    fn rope_upload(sc: &mut Scratch<'_, D>, pos: &[u32], p: &RopeParams) -> Result<(DevPtr, DevPtr)> {
        let posp = sc.put_i32(S::Pos, &to_i32(pos, "position")?)?;
        let ff = match &p.freq_factors {
            Some(f) if f.len() >= p.n_rot / 2 => sc.put_f32(S::FreqFactors, f)?,
            Some(f) => return Err(Error::format(format!("rope: {} frequency factors for {} pairs", f.len(), p.n_rot / 2))),
            None => 0,
        };
        Ok((posp, ff))
    }

    fn check_slots(kv: &CudaKv<D>, slots: &[u32]) -> Result<()> {
        if let Some(&s) = slots.iter().find(|&&s| s as usize >= kv.layout.n_slots) {
            return Err(Error::internal(format!("KV slot {s} of {}", kv.layout.n_slots)));
        }
        Ok(())
    }
}

impl<D: Device> Backend for CudaBackend<D> {
    type Weight = CudaWeight<D>;
    type Act = CudaAct<D>;
    type Kv = CudaKv<D>;

    fn name(&self) -> String {
        self.dev.name()
    }

    fn weight(&self, gguf: &Arc<Gguf>, t: &TensorInfo) -> Result<CudaWeight<D>> {
        if type_suffix(t.ty).is_none() {
            return Err(Error::unsupported(format!("CUDA backend: tensor '{}' has type {}, which no kernel reads", t.name, t.ty)));
        }
        let data = gguf.tensor_data(t);
        let (buf, host) = match self.plan.get(&t.name) {
            None => {
                let buf = DevBuf::new(&self.dev, data.len())?;
                // SAFETY: the buffer was sized for the data.
                unsafe { self.dev.upload(buf.ptr, data)? };
                (buf, None)
            }
            Some(resident) => {
                // The experts that stay on the device, one after another in id order.
                let n = resident.len();
                if n == 0 || data.len() % n != 0 || t.n_rows() as usize % n != 0 {
                    return Err(Error::internal(format!("expert plan of {} experts for tensor '{}'", n, t.name)));
                }
                let per = data.len() / n;
                let keep: Vec<usize> = (0..n).filter(|&e| resident[e]).collect();
                let buf = DevBuf::new(&self.dev, keep.len() * per)?;
                for (i, &e) in keep.iter().enumerate() {
                    // SAFETY: slot i of the buffer holds `per` bytes.
                    unsafe { self.dev.upload(buf.ptr + (i * per) as u64, &data[e * per..(e + 1) * per])? };
                }
                (buf, Some(Arc::new(HostExperts::new(resident, CpuBackend.weight(gguf, t)?))))
            }
        };
        Ok(CudaWeight {
            buf: Arc::new(buf),
            name: t.name.clone(),
            ty: t.ty,
            rows: t.n_rows() as usize,
            cols: t.dims[0] as usize,
            row_bytes: t.row_bytes(),
            host,
        })
    }

    fn act_new(&self) -> CudaAct<D> {
        CudaAct { buf: None, q8: None, q8_valid: false, rows: 0, cols: 0 }
    }

    fn act_resize(&self, a: &mut CudaAct<D>, rows: usize, cols: usize) -> Result<()> {
        self.resize(a, rows, cols)
    }

    fn act_read_row(&self, a: &CudaAct<D>, row: usize, out: &mut [f32]) -> Result<()> {
        if row >= a.rows || out.len() != a.cols {
            return Err(Error::internal(format!("act_read_row: row {row} of {}x{}", a.rows, a.cols)));
        }
        let mut bytes = vec![0u8; a.cols * 4];
        // SAFETY: the row lies inside the activation's buffer.
        unsafe { self.dev.download(a.ptr() + (row * a.cols * 4) as u64, &mut bytes)? };
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        Ok(())
    }

    fn embed(&self, table: &CudaWeight<D>, ids: &[u32], out: &mut CudaAct<D>) -> Result<()> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= table.rows) {
            return Err(Error::invalid_arg(format!("token id {id} is outside the vocabulary of {} ({} rows)", table.name, table.rows)));
        }
        self.resize(out, ids.len(), table.cols)?;
        if ids.is_empty() {
            return Ok(());
        }
        let sfx = type_suffix(table.ty).unwrap_or("f32");
        let mut sc = self.scratch();
        let idp = sc.put_i32(S::Ids, &to_i32(ids, "token id")?)?;
        self.launch(
            &format!("get_rows_{sfx}"),
            [ids.len() as u32, 1, 1],
            128,
            &[Arg::Ptr(table.buf.ptr), Arg::Ptr(idp), Arg::Ptr(out.ptr()), Arg::I32(table.cols as i32)],
        )
    }

    fn rms_norm(&self, x: &CudaAct<D>, w: &CudaWeight<D>, eps: f32, out: &mut CudaAct<D>) -> Result<()> {
        if w.ty != GgmlType::F32 || w.cols != x.cols {
            return Err(Error::unsupported(format!("CUDA rms_norm: weight '{}' is {} of {} values, rows have {}", w.name, w.ty, w.cols, x.cols)));
        }
        self.resize(out, x.rows, x.cols)?;
        if x.rows == 0 {
            return Ok(());
        }
        // The q8_1 blocks of the output beside it, for the quantized matmul that follows.
        if let Some(q) = self.q8_room(out)? {
            self.launch(
                "rms_norm_q8_1",
                [x.rows as u32, 1, 1],
                256,
                &[Arg::Ptr(x.ptr()), Arg::Ptr(w.buf.ptr), Arg::Ptr(out.ptr()), Arg::Ptr(q), Arg::I32(x.cols as i32), Arg::F32(eps)],
            )?;
            out.q8_valid = true;
            return Ok(());
        }
        self.launch(
            "rms_norm",
            [x.rows as u32, 1, 1],
            256,
            &[Arg::Ptr(x.ptr()), Arg::Ptr(w.buf.ptr), Arg::Ptr(out.ptr()), Arg::I32(x.cols as i32), Arg::F32(eps)],
        )
    }

    fn add_rms_norm(&self, x: &mut CudaAct<D>, y: &CudaAct<D>, w: &CudaWeight<D>, eps: f32, out: &mut CudaAct<D>) -> Result<()> {
        if !self.fuse {
            self.add(x, y)?;
            return self.rms_norm(x, w, eps, out);
        }
        if x.rows != y.rows || x.cols != y.cols {
            return Err(Error::internal(format!("add_rms_norm: {}x{} + {}x{}", x.rows, x.cols, y.rows, y.cols)));
        }
        if w.ty != GgmlType::F32 || w.cols != x.cols {
            return Err(Error::unsupported(format!("CUDA rms_norm: weight '{}' is {} of {} values, rows have {}", w.name, w.ty, w.cols, x.cols)));
        }
        x.q8_valid = false;
        self.resize(out, x.rows, x.cols)?;
        if x.rows == 0 {
            return Ok(());
        }
        let q = self.q8_room(out)?;
        self.launch(
            "add_rms_norm",
            [x.rows as u32, 1, 1],
            256,
            &[
                Arg::Ptr(x.ptr()),
                Arg::Ptr(y.ptr()),
                Arg::Ptr(w.buf.ptr),
                Arg::Ptr(out.ptr()),
                Arg::Ptr(q.unwrap_or(0)),
                Arg::I32(x.cols as i32),
                Arg::F32(eps),
            ],
        )?;
        out.q8_valid = q.is_some();
        Ok(())
    }

    fn matmul(&self, x: &CudaAct<D>, ws: &[&CudaWeight<D>], outs: &mut [&mut CudaAct<D>]) -> Result<()> {
        for w in ws {
            if w.cols != x.cols {
                return Err(Error::internal(format!("matmul: weight '{}' has rows of {} elements, input has {}", w.name, w.cols, x.cols)));
            }
        }
        let mut sc = self.scratch();
        // Prefill-sized batches go through the GEMM below; the fused QKV matvec is for decode.
        if !ws.iter().any(|w| self.use_gemm(w, x.rows, 1)) && self.matvec3(&mut sc, x, ws, outs)? {
            return Ok(());
        }
        let mut xq: Option<DevPtr> = None;
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            self.resize(out, x.rows, w.rows)?;
            if x.rows == 0 {
                continue;
            }
            if self.use_gemm(w, x.rows, 1) {
                self.gemm(w, w.rows, 0, None, x.ptr(), 1, out.ptr(), x.rows)?;
                continue;
            }
            let xin = if is_float(w.ty) {
                x.ptr()
            } else {
                match xq {
                    Some(p) => p,
                    None => {
                        let p = self.q8_of(&mut sc, S::Xq, x)?;
                        xq = Some(p);
                        p
                    }
                }
            };
            self.matvec(w, w.rows, 0, 0, xin, 1, out.ptr(), x.rows)?;
        }
        Ok(())
    }

    fn add(&self, x: &mut CudaAct<D>, y: &CudaAct<D>) -> Result<()> {
        if x.rows != y.rows || x.cols != y.cols {
            return Err(Error::internal(format!("add: {}x{} + {}x{}", x.rows, x.cols, y.rows, y.cols)));
        }
        x.q8_valid = false;
        let n = x.rows * x.cols;
        if n == 0 {
            return Ok(());
        }
        self.launch("add_f32", [blocks(n, 256), 1, 1], 256, &[Arg::Ptr(x.ptr()), Arg::Ptr(y.ptr()), Arg::I32(n as i32)])
    }

    fn gather_rows(&self, x: &CudaAct<D>, rows: &[u32], out: &mut CudaAct<D>) -> Result<()> {
        if let Some(&r) = rows.iter().find(|&&r| r as usize >= x.rows) {
            return Err(Error::internal(format!("gather_rows: row {r} of {}", x.rows)));
        }
        self.resize(out, rows.len(), x.cols)?;
        let rb = x.cols * 4;
        for (i, &r) in rows.iter().enumerate() {
            // SAFETY: both rows lie inside their activations.
            unsafe { self.dev.copy(out.ptr() + (i * rb) as u64, x.ptr() + (r as usize * rb) as u64, rb)? };
        }
        Ok(())
    }

    fn rope(&self, x: &mut CudaAct<D>, n_head: usize, pos: &[u32], p: &RopeParams) -> Result<()> {
        let hd = Self::rope_head_dim(x, n_head, pos, p)?;
        x.q8_valid = false;
        if x.rows == 0 {
            return Ok(());
        }
        let mut sc = self.scratch();
        let (posp, ff) = Self::rope_upload(&mut sc, pos, p)?;
        self.launch(
            "rope_norm",
            [x.rows as u32, n_head as u32, 1],
            32,
            &[
                Arg::Ptr(x.ptr()),
                Arg::Ptr(posp),
                Arg::I32(n_head as i32),
                Arg::I32(hd as i32),
                Arg::I32(p.n_rot as i32),
                Arg::F32(p.freq_base),
                Arg::F32(p.freq_scale),
                Arg::Ptr(ff),
            ],
        )
    }

    fn kv_new(&self, layout: &KvLayout) -> Result<CudaKv<D>> {
        if !matches!(layout.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::Q8_0) {
            return Err(Error::unsupported(format!("CUDA backend: KV cache type {} (F32, F16 and Q8_0 are supported)", layout.ty)));
        }
        if layout.ty == GgmlType::Q8_0 && layout.n_embd_kv % 32 != 0 {
            return Err(Error::unsupported(format!("CUDA backend: a Q8_0 KV row of {} values (whole blocks of 32 needed)", layout.n_embd_kv)));
        }
        let row_bytes = layout.row_bytes();
        let bytes = layout
            .n_slots
            .checked_mul(row_bytes)
            .ok_or_else(|| Error::new(ErrorKind::OutOfMemory, "KV cache size overflows"))?;
        let mut k = Vec::with_capacity(layout.n_layer);
        let mut v = Vec::with_capacity(layout.n_layer);
        for _ in 0..layout.n_layer {
            k.push(DevBuf::new(&self.dev, bytes)?);
            v.push(DevBuf::new(&self.dev, bytes)?);
        }
        Ok(CudaKv { layout: *layout, row_bytes, k, v })
    }

    fn kv_store(&self, kv: &mut CudaKv<D>, layer: usize, slots: &[u32], k: &CudaAct<D>, v: &CudaAct<D>) -> Result<()> {
        Self::check_layer(kv, layer)?;
        Self::check_slots(kv, slots)?;
        let row = kv.layout.n_embd_kv;
        if k.cols != row || v.cols != row || k.rows != slots.len() || v.rows != slots.len() {
            return Err(Error::internal(format!("kv_store: K {}x{}, V {}x{} for {} slots of {row}", k.rows, k.cols, v.rows, v.cols, slots.len())));
        }
        if slots.is_empty() {
            return Ok(());
        }
        let mut sc = self.scratch();
        let sp = sc.put_i32(S::Slots, &to_i32(slots, "KV slot")?)?;
        let n = slots.len() * row;
        self.launch(
            &format!("kv_store_{}", Self::kv_suffix(kv)),
            [blocks(n, 256), 1, 1],
            256,
            &[
                Arg::Ptr(k.ptr()),
                Arg::Ptr(v.ptr()),
                Arg::Ptr(kv.k[layer].ptr),
                Arg::Ptr(kv.v[layer].ptr),
                Arg::Ptr(sp),
                Arg::I32(slots.len() as i32),
                Arg::I32(row as i32),
            ],
        )
    }

    fn rope_kv_store(
        &self,
        q: &mut CudaAct<D>,
        k: &mut CudaAct<D>,
        v: &CudaAct<D>,
        n_head: usize,
        n_head_kv: usize,
        pos: &[u32],
        p: &RopeParams,
        kv: &mut CudaKv<D>,
        layer: usize,
        slots: &[u32],
    ) -> Result<()> {
        // A Q8_0 cache is written a block of 32 at a time (one amax), which the fused kernel's
        // per-value stores cannot do.
        if !self.fuse || kv.layout.ty == GgmlType::Q8_0 {
            self.rope(q, n_head, pos, p)?;
            self.rope(k, n_head_kv, pos, p)?;
            return self.kv_store(kv, layer, slots, k, v);
        }
        let hd = Self::rope_head_dim(q, n_head, pos, p)?;
        let hd_kv = Self::rope_head_dim(k, n_head_kv, pos, p)?;
        Self::check_layer(kv, layer)?;
        Self::check_slots(kv, slots)?;
        let row = kv.layout.n_embd_kv;
        if hd != hd_kv || k.cols != row || v.cols != row || k.rows != slots.len() || v.rows != slots.len() || q.rows != slots.len() {
            return Err(Error::internal(format!(
                "rope_kv_store: Q {}x{} ({n_head} heads), K {}x{}, V {}x{} ({n_head_kv} heads) for {} slots of {row}",
                q.rows, q.cols, k.rows, k.cols, v.rows, v.cols, slots.len()
            )));
        }
        q.q8_valid = false;
        k.q8_valid = false;
        if slots.is_empty() {
            return Ok(());
        }
        let mut sc = self.scratch();
        let (posp, ff) = Self::rope_upload(&mut sc, pos, p)?;
        let sp = sc.put_i32(S::Slots, &to_i32(slots, "KV slot")?)?;
        self.launch(
            &format!("rope_kv_store_{}", Self::kv_suffix(kv)),
            [q.rows as u32, (n_head + 2 * n_head_kv) as u32, 1],
            32,
            &[
                Arg::Ptr(q.ptr()),
                Arg::Ptr(k.ptr()),
                Arg::Ptr(v.ptr()),
                Arg::Ptr(kv.k[layer].ptr),
                Arg::Ptr(kv.v[layer].ptr),
                Arg::Ptr(posp),
                Arg::Ptr(sp),
                Arg::I32(n_head as i32),
                Arg::I32(n_head_kv as i32),
                Arg::I32(hd as i32),
                Arg::I32(p.n_rot as i32),
                Arg::F32(p.freq_base),
                Arg::F32(p.freq_scale),
                Arg::Ptr(ff),
            ],
        )
    }

    fn kv_copy_block(&self, kv: &mut CudaKv<D>, src: u32, dst: u32, n: usize) -> Result<()> {
        let n_blocks = kv.layout.n_slots / KV_BLOCK;
        if src as usize >= n_blocks || dst as usize >= n_blocks || n > KV_BLOCK {
            return Err(Error::internal(format!("kv_copy_block: {n} slots from block {src} to {dst} of {n_blocks}")));
        }
        if src == dst || n == 0 {
            return Ok(());
        }
        let rb = kv.row_bytes;
        let (s, d) = ((src as usize * KV_BLOCK * rb) as u64, (dst as usize * KV_BLOCK * rb) as u64);
        for l in 0..kv.k.len() {
            for buf in [&kv.k[l], &kv.v[l]] {
                // SAFETY: distinct blocks inside the layer's buffer.
                unsafe { self.dev.copy(buf.ptr + d, buf.ptr + s, n * rb)? };
            }
        }
        Ok(())
    }

    fn kv_export(&self, kv: &CudaKv<D>, layer: usize, slots: &[u32], out: &mut Vec<u8>) -> Result<()> {
        Self::check_layer(kv, layer)?;
        Self::check_slots(kv, slots)?;
        let rb = kv.row_bytes;
        for buf in [&kv.k[layer], &kv.v[layer]] {
            for &s in slots {
                let at = out.len();
                out.resize(at + rb, 0);
                // SAFETY: the slot's row lies inside the buffer (checked above).
                unsafe { self.dev.download(buf.ptr + (s as usize * rb) as u64, &mut out[at..])? };
            }
        }
        Ok(())
    }

    fn kv_import(&self, kv: &mut CudaKv<D>, layer: usize, slots: &[u32], data: &[u8]) -> Result<()> {
        Self::check_layer(kv, layer)?;
        Self::check_slots(kv, slots)?;
        let rb = kv.row_bytes;
        if data.len() != 2 * slots.len() * rb {
            return Err(Error::internal("kv_import: data size does not match the slots"));
        }
        for (half, buf) in [&kv.k[layer], &kv.v[layer]].into_iter().enumerate() {
            for (i, &s) in slots.iter().enumerate() {
                let src = &data[(half * slots.len() + i) * rb..][..rb];
                // SAFETY: as in kv_export.
                unsafe { self.dev.upload(buf.ptr + (s as usize * rb) as u64, src)? };
            }
        }
        Ok(())
    }

    fn attention(&self, kv: &CudaKv<D>, layer: usize, q: &CudaAct<D>, b: &AttnBatch, out: &mut CudaAct<D>) -> Result<()> {
        Self::check_layer(kv, layer)?;
        let (nh, nkv, hd) = (b.n_head, b.n_head_kv, b.head_dim);
        if hd % 32 != 0 || hd > 256 || nkv == 0 || nh % nkv != 0 {
            return Err(Error::unsupported(format!("CUDA attention: head_dim {hd} (a multiple of 32 up to 256), {nh} heads over {nkv} KV heads")));
        }
        if q.cols != nh * hd || b.tok_n_kv.len() != q.rows || b.tok_seq.len() != q.rows {
            return Err(Error::internal(format!("attention: q {}x{} for {} tokens of {nh}x{hd}", q.rows, q.cols, b.tok_n_kv.len())));
        }
        self.resize(out, q.rows, nh * hd)?;
        if q.rows == 0 {
            return Ok(());
        }
        // The block tables side by side; each token points at its sequence's.
        let mut tables = Vec::new();
        let mut starts = Vec::with_capacity(b.tables.len());
        for t in b.tables {
            starts.push(tables.len() as i32);
            tables.extend(to_i32(t, "KV block")?);
        }
        let mut table_off = Vec::with_capacity(q.rows);
        for (t, (&s, &n)) in b.tok_seq.iter().zip(b.tok_n_kv).enumerate() {
            let s = s as usize;
            if s >= b.tables.len() || n == 0 || (n as usize).div_ceil(KV_BLOCK) > b.tables[s].len() {
                return Err(Error::internal(format!("attention: token {t} sees {n} positions of sequence {s}")));
            }
            if let Some(&blk) = b.tables[s][..(n as usize).div_ceil(KV_BLOCK)].iter().find(|&&x| (x as usize + 1) * KV_BLOCK > kv.layout.n_slots) {
                return Err(Error::internal(format!("attention: block {blk} is outside the KV cache")));
            }
            table_off.push(starts[s]);
        }
        let max_n = *b.tok_n_kv.iter().max().unwrap() as usize;
        let split = if q.rows >= ATTN_BATCH_ROWS { 4 * ATTN_SPLIT } else { ATTN_SPLIT };
        let n_splits = max_n.div_ceil(split);
        if n_splits > 65535 {
            return Err(Error::unsupported(format!("CUDA attention: {max_n} positions ({n_splits} splits of {split}; at most 65535)")));
        }
        let mut sc = self.scratch();
        let tp = sc.put_i32(S::Tables, &tables)?;
        let op = sc.put_i32(S::TableOff, &table_off)?;
        let np = sc.put_i32(S::NKv, &to_i32(b.tok_n_kv, "position count")?)?;
        // Several splits leave their parts for the last of them to merge, counted per (token,
        // head) in a buffer the kernel leaves zero again; one split writes the output directly.
        let (ml, acc, counts) = if n_splits > 1 {
            let pairs = q.rows * nh;
            let counts = sc.put(S::AttnCounts, vec![0u8; pairs * 4])?;
            (sc.get(S::PartMl, pairs * n_splits * 2 * 4)?, sc.get(S::PartAcc, pairs * n_splits * hd * 4)?, counts)
        } else {
            (0, 0, 0)
        };
        // The q8_1 blocks of the output beside it, for the output projection.
        let oq = self.q8_room(out)?;
        let scale = 1.0 / (hd as f32).sqrt();
        self.launch(
            &format!("attn_{}_{hd}", Self::kv_suffix(kv)),
            [nh as u32, n_splits as u32, q.rows as u32],
            128,
            &[
                Arg::Ptr(q.ptr()),
                Arg::Ptr(kv.k[layer].ptr),
                Arg::Ptr(kv.v[layer].ptr),
                Arg::Ptr(tp),
                Arg::Ptr(op),
                Arg::Ptr(np),
                Arg::I32(nh as i32),
                Arg::I32(nkv as i32),
                Arg::I32(split as i32),
                Arg::F32(scale),
                Arg::Ptr(ml),
                Arg::Ptr(acc),
                Arg::Ptr(counts),
                Arg::Ptr(out.ptr()),
                Arg::Ptr(oq.unwrap_or(0)),
            ],
        )?;
        out.q8_valid = oq.is_some();
        Ok(())
    }

    fn ffn(&self, x: &CudaAct<D>, f: &Ffn<CudaWeight<D>>, out: &mut CudaAct<D>, routes: Option<&mut Vec<u32>>) -> Result<()> {
        let (n_tok, n_embd, n_ff) = (x.rows, x.cols, f.n_ff);
        let n_exp = if f.router.is_some() { f.n_expert } else { 1 };
        let k = if f.router.is_some() { f.n_expert_used } else { 1 };
        for (w, rows, cols) in [(&f.gate, n_exp * n_ff, n_embd), (&f.up, n_exp * n_ff, n_embd), (&f.down, n_exp * n_embd, n_ff)] {
            if w.rows != rows || w.cols != cols {
                return Err(Error::format(format!("ffn: '{}' is {}x{}, expected {rows}x{cols}", w.name, w.rows, w.cols)));
            }
        }
        self.resize(out, n_tok, n_embd)?;
        if n_tok == 0 {
            return Ok(());
        }
        let slots = n_tok * k;
        let mut sc = self.scratch();
        // x as q8_1 blocks, once for the router and the gate and up projections.
        let mut xq: Option<DevPtr> = None;
        // Routing: ids and weights per token on the device (dense: expert 0, weight 1).
        let (ids, wts) = if let Some(router) = &f.router {
            if f.n_expert > 256 || k == 0 || k > f.n_expert {
                return Err(Error::unsupported(format!("CUDA router: top-{k} of {} experts (at most 256)", f.n_expert)));
            }
            if router.rows != f.n_expert || router.cols != n_embd {
                return Err(Error::format(format!("ffn: router '{}' is {}x{}", router.name, router.rows, router.cols)));
            }
            let ids = sc.get(S::RouteIds, slots * 4)?;
            let wts = sc.get(S::RouteW, slots * 4)?;
            if self.fuse && is_float(router.ty) {
                // The router matvec and the routing in one launch, a block per token.
                self.launch(
                    &format!("moe_route_{}", router.suffix()?),
                    [n_tok as u32, 1, 1],
                    32 * ROUTE_WARPS,
                    &[
                        Arg::Ptr(router.buf.ptr),
                        Arg::Ptr(x.ptr()),
                        Arg::I32(n_embd as i32),
                        Arg::I32(f.n_expert as i32),
                        Arg::I32(k as i32),
                        Arg::Ptr(ids),
                        Arg::Ptr(wts),
                    ],
                )?;
            } else {
                let logits = sc.get(S::Logits, n_tok * f.n_expert * 4)?;
                if is_float(router.ty) {
                    // A block per token, every thread on each expert's row (the sums of the
                    // fused router, which must choose the same experts).
                    self.launch(
                        &format!("router_logits_{}", router.suffix()?),
                        [n_tok as u32, 1, 1],
                        32 * ROUTE_WARPS,
                        &[Arg::Ptr(router.buf.ptr), Arg::Ptr(x.ptr()), Arg::I32(n_embd as i32), Arg::I32(f.n_expert as i32), Arg::Ptr(logits)],
                    )?;
                } else {
                    let xin = self.q8_of(&mut sc, S::Xq, x)?;
                    xq = Some(xin);
                    self.matvec(router, f.n_expert, 0, 0, xin, 1, logits, n_tok)?;
                }
                self.launch(
                    "moe_router",
                    [blocks(n_tok, 4), 1, 1],
                    128,
                    &[
                        Arg::Ptr(logits),
                        Arg::I32(n_tok as i32),
                        Arg::I32(f.n_expert as i32),
                        Arg::I32(k as i32),
                        Arg::Ptr(ids),
                        Arg::Ptr(wts),
                        Arg::Ptr(0),
                    ],
                )?;
            }
            (ids, wts)
        } else {
            (0, sc.put_f32(S::RouteW, &vec![1.0f32; n_tok])?)
        };
        if let Some(h) = hybrid(f)? {
            return self.ffn_hybrid(&mut sc, x, f, h, out, routes, ids, wts, xq);
        }
        if let (Some(r), Some(_)) = (routes, &f.router) {
            r.extend(self.download_u32(ids, slots)?);
        }
        self.ffn_experts(&mut sc, x, f, out, ids, wts, xq, n_exp)
    }

    fn expert_traffic(&self) -> Option<ExpertTraffic> {
        (!self.plan.is_empty()).then(|| *self.traffic.lock())
    }
}

/// Bytes of one expert of a stacked expert tensor of `n_expert` experts.
fn expert_bytes<D: Device>(w: &CudaWeight<D>, n_expert: usize) -> usize {
    w.rows / n_expert * w.row_bytes
}

/// The host part of an MoE layer's experts (None when the device holds them all); gate, up and
/// down split alike.
fn hybrid<D: Device>(f: &Ffn<CudaWeight<D>>) -> Result<Option<&HostExperts>> {
    let differ = || Err(Error::internal(format!("ffn: '{}', '{}' and '{}' keep different experts on the device", f.gate.name, f.up.name, f.down.name)));
    match (&f.gate.host, &f.up.host, &f.down.host) {
        (None, None, None) => Ok(None),
        (Some(g), Some(u), Some(d)) if f.router.is_some() => {
            let s = g.slots();
            if s == u.slots() && s == d.slots() && s.0.len() == f.n_expert {
                Ok(Some(g))
            } else {
                differ()
            }
        }
        _ => differ(),
    }
}

impl<D: Device> CudaBackend<D> {
    /// `n` u32 values from the device (waits for the launches before).
    fn download_u32(&self, p: DevPtr, n: usize) -> Result<Vec<u32>> {
        let mut bytes = vec![0u8; n * 4];
        // SAFETY: the callers' buffers hold `n` values.
        unsafe { self.dev.download(p, &mut bytes)? };
        Ok(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// An MoE layer whose experts are partly in host memory, after its routing on the device
    /// (`ids`, `wts`): the routing comes to the host; the device runs the slots whose expert it
    /// holds (renumbered to their place in its buffers; the others at weight 0) and, meanwhile,
    /// the CPU the slots routed to host experts, over the layer input brought over too; the
    /// CPU's weighted sum is then added to the device's. A step routed only to resident experts
    /// costs the host the download of the ids and weights, and the CPU nothing.
    #[allow(clippy::too_many_arguments)]
    fn ffn_hybrid(
        &self,
        sc: &mut Scratch<'_, D>,
        x: &CudaAct<D>,
        f: &Ffn<CudaWeight<D>>,
        h: &HostExperts,
        out: &mut CudaAct<D>,
        routes: Option<&mut Vec<u32>>,
        ids: DevPtr,
        wts: DevPtr,
        xq: Option<DevPtr>,
    ) -> Result<()> {
        let (n_tok, n_embd) = (x.rows, x.cols);
        let slots = n_tok * f.n_expert_used;
        let host_ids = self.download_u32(ids, slots)?;
        let host_wts: Vec<f32> = self.download_u32(wts, slots)?.into_iter().map(f32::from_bits).collect();
        if let Some(r) = routes {
            r.extend_from_slice(&host_ids);
        }
        h.record(&host_ids);
        let first = h.slots();
        let count = |place: &Slots| {
            let on_host = host_ids.iter().filter(|&&e| place.on_host(e as usize)).count() as u64;
            let mut t = self.traffic.lock();
            t.host_slots += on_host;
            t.device_slots += host_ids.len() as u64 - on_host;
        };
        if n_tok >= self.stream_min_tokens && host_ids.iter().any(|&e| first.on_host(e as usize)) {
            // The layer's experts come over whole; experts due to move are copied from there.
            let full = self.stream_layer(f)?;
            count(&first);
            self.move_experts(f, h, Some(&full))?;
            return self.ffn_experts(sc, x, &full, out, ids, wts, xq, f.n_expert);
        }
        self.move_experts(f, h, None)?;
        let place = h.slots();
        count(&place);
        let (mut dev_ids, mut dev_wts) = (Vec::new(), Vec::new());
        let any_host = place.device_route(&host_ids, &host_wts, &mut dev_ids, &mut dev_wts)?;
        let xh = if any_host {
            let v: Vec<f32> = self.download_u32(x.ptr(), n_tok * n_embd)?.into_iter().map(f32::from_bits).collect();
            Some(Mat { data: v, rows: n_tok, cols: n_embd })
        } else {
            None
        };
        let resident = place.n_resident() > 0;
        if resident {
            // SAFETY: both buffers hold `slots` values.
            unsafe {
                self.dev.upload_async(ids, &dev_ids.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
                self.dev.upload_async(wts, &dev_wts.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
            }
            self.ffn_experts(sc, x, f, out, ids, wts, xq, h.n_places)?;
        }
        let Some(xh) = xh else { return Ok(()) };
        // The device's share runs while the CPU computes its own.
        self.dev.flush()?;
        let host_of = |w: &CudaWeight<D>| w.host.as_ref().map(|h| h.cpu.clone()).ok_or_else(|| Error::internal("ffn: expert split lost"));
        let cf = Ffn { router: None, gate: host_of(&f.gate)?, up: host_of(&f.up)?, down: host_of(&f.down)?, n_expert: f.n_expert, n_expert_used: f.n_expert_used, n_ff: f.n_ff };
        let mut y = Mat::default();
        CpuBackend.moe_experts(&xh, &cf, &host_ids, &host_wts, &|e| place.on_host(e), &mut y)?;
        let bytes: Vec<u8> = y.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        out.q8_valid = false;
        if resident {
            let p = sc.get(S::HostPart, bytes.len())?;
            // SAFETY: the scratch holds the bytes.
            unsafe { self.dev.upload_async(p, &bytes)? };
            let n = n_tok * n_embd;
            self.launch("add_f32", [blocks(n, 256), 1, 1], 256, &[Arg::Ptr(out.ptr()), Arg::Ptr(p), Arg::I32(n as i32)])
        } else {
            // SAFETY: `out` holds n_tok x n_embd values.
            unsafe { self.dev.upload_async(out.ptr(), &bytes) }
        }
    }

    /// Moves to the device the host experts of layer `f` that the routing counted in `h` (its
    /// gate's) made hot, each into the place of a device expert picked less often
    /// ([`HostExperts::moves`]): the expert's gate, up and down data written over that
    /// expert's — copied on the device from `streamed` (the layer's experts brought over whole
    /// by [`Self::stream_layer`]) when given, else uploaded from host memory — then the place
    /// traded on all three. Where a copy fails, the device expert gives up its place (its data
    /// is no longer whole) and goes back to the host with the error; the results stay right
    /// either way.
    fn move_experts(&self, f: &Ffn<CudaWeight<D>>, h: &HostExperts, streamed: Option<&Ffn<CudaWeight<D>>>) -> Result<()> {
        for (hot, cold) in h.moves(self.rebalance_slots) {
            let Some(place) = h.slots().0[cold] else { continue };
            let ws = [&f.gate, &f.up, &f.down];
            let whole = streamed.map(|s| [&s.gate, &s.up, &s.down]);
            let write = |i: usize| -> Result<()> {
                let w = ws[i];
                let per = expert_bytes(w, f.n_expert);
                let at = w.buf.ptr + (place as usize * per) as u64;
                // SAFETY: place `place` of the layer's device buffer, and expert `hot` of a
                // streamed buffer holding every expert, each hold `per` bytes.
                unsafe {
                    match whole {
                        Some(s) => self.dev.copy(at, s[i].buf.ptr + (hot * per) as u64, per),
                        None => {
                            let wh = w.host.as_ref().ok_or_else(|| Error::internal("ffn: expert split lost"))?;
                            self.dev.upload(at, &wh.cpu.bytes()[hot * per..(hot + 1) * per])
                        }
                    }
                }
            };
            let done = (0..3).try_for_each(write);
            for w in ws.iter().filter_map(|w| w.host.as_ref()) {
                match done {
                    Ok(()) => w.trade(hot, cold),
                    Err(_) => w.evict(cold),
                }
            }
            done?;
            self.traffic.lock().moves += 1;
        }
        Ok(())
    }

    /// Layer `f`'s experts, all of them, in the stream buffers: the resident ones copied from
    /// the layer's device buffers, the others uploaded from host memory; returned as an expert
    /// layer the device holds whole. The buffers grow to the largest layer streamed: every
    /// expert of one layer, which the placement leaves room for.
    fn stream_layer(&self, f: &Ffn<CudaWeight<D>>) -> Result<Ffn<CudaWeight<D>>> {
        let mut stream = self.stream.lock();
        // Tensor `w` (gate, up, down: i = 0, 1, 2) whole in stream buffer i.
        let mut assemble = |i: usize, w: &CudaWeight<D>| -> Result<CudaWeight<D>> {
            let h = w.host.as_ref().ok_or_else(|| Error::internal(format!("stream: '{}' has no host experts", w.name)))?;
            let place = h.slots();
            let per = expert_bytes(w, f.n_expert);
            if stream.len() <= i {
                stream.push(Arc::new(DevBuf::new(&self.dev, f.n_expert * per)?));
            } else if stream[i].bytes < f.n_expert * per {
                stream[i] = Arc::new(DevBuf::new(&self.dev, f.n_expert * per)?);
            }
            let buf = stream[i].clone();
            let data = h.cpu.bytes();
            for e in 0..f.n_expert {
                let at = buf.ptr + (e * per) as u64;
                // SAFETY: expert e's place in a buffer of n_expert experts, and (resident) its
                // slot in the layer's buffer of the resident experts, each `per` bytes.
                unsafe {
                    match place.0[e] {
                        Some(s) => self.dev.copy(at, w.buf.ptr + (s as usize * per) as u64, per)?,
                        None => self.dev.upload(at, &data[e * per..(e + 1) * per])?,
                    }
                }
            }
            Ok(CudaWeight { buf, name: w.name.clone(), ty: w.ty, rows: w.rows, cols: w.cols, row_bytes: w.row_bytes, host: None })
        };
        Ok(Ffn {
            router: f.router.clone(),
            gate: assemble(0, &f.gate)?,
            up: assemble(1, &f.up)?,
            down: assemble(2, &f.down)?,
            n_expert: f.n_expert,
            n_expert_used: f.n_expert_used,
            n_ff: f.n_ff,
        })
    }

    /// The experts of a routed feed-forward (`ids`, `wts` on the device; ids 0 for a dense
    /// layer) into `out`, from the layer input `x` (and its q8_1 blocks `xq` if made already);
    /// `n_exp` experts are in the device buffers (1 for a dense layer).
    #[allow(clippy::too_many_arguments)]
    fn ffn_experts(
        &self,
        sc: &mut Scratch<'_, D>,
        x: &CudaAct<D>,
        f: &Ffn<CudaWeight<D>>,
        out: &mut CudaAct<D>,
        ids: DevPtr,
        wts: DevPtr,
        mut xq: Option<DevPtr>,
        n_exp: usize,
    ) -> Result<()> {
        let (n_tok, n_embd, n_ff) = (x.rows, x.cols, f.n_ff);
        let k = if f.router.is_some() { f.n_expert_used } else { 1 };
        let slots = n_tok * k;
        // Gate and up for every (token, expert) slot, k slots per token row.
        let g = sc.get(S::Gate, slots * n_ff * 4)?;
        if [&f.gate, &f.up, &f.down].iter().all(|w| self.use_gemm(w, slots, n_exp)) {
            // Prefill: the slots grouped by expert on the device (no copy to the host), then
            // one GEMM launch per projection over every expert's tokens.
            let group = if f.router.is_some() {
                let counts = sc.get(S::GroupCounts, n_exp * 4)?;
                let lists = sc.get(S::GroupLists, n_exp * n_tok * 4)?;
                self.launch(
                    "moe_group",
                    [1, 1, 1],
                    256,
                    &[Arg::Ptr(ids), Arg::I32(slots as i32), Arg::I32(n_exp as i32), Arg::I32(n_tok as i32), Arg::Ptr(counts), Arg::Ptr(lists)],
                )?;
                Some((counts, lists, n_exp))
            } else {
                None
            };
            let u = sc.get(S::Up, slots * n_ff * 4)?;
            for (w, y) in [(&f.gate, g), (&f.up, u)] {
                self.gemm(w, n_ff, n_ff * w.row_bytes, group, x.ptr(), k, y, n_tok)?;
            }
            let n = slots * n_ff;
            self.launch("swiglu", [blocks(n, 256), 1, 1], 256, &[Arg::Ptr(g), Arg::Ptr(u), Arg::Ptr(g), Arg::I32(n as i32)])?;
            let y = sc.get(S::Down, slots * n_embd * 4)?;
            self.gemm(&f.down, n_embd, n_embd * f.down.row_bytes, group, g, 1, y, if group.is_some() { n_tok } else { slots })?;
            return self.moe_combine(out, y, wts, k, n_embd, n_tok);
        }
        let xq_for = |sc: &mut Scratch<'_, D>, xq: &mut Option<DevPtr>| -> Result<DevPtr> {
            if let Some(p) = *xq {
                return Ok(p);
            }
            let p = self.q8_of(sc, S::Xq, x)?;
            *xq = Some(p);
            Ok(p)
        };
        // The fused decode kernels: the down projection's q8_1 input comes out of the gate+up
        // launch, and the down projection sums the experts' rows itself.
        let fuse_down = self.fuse && !is_float(f.down.ty) && n_ff % 32 == 0;
        let mut gq: Option<DevPtr> = None;
        if f.gate.ty == f.up.ty && !is_float(f.gate.ty) && self.fuse {
            // One pass over both matrices with SwiGLU applied on the way out.
            let xin = xq_for(sc, &mut xq)?;
            let sfx = f.gate.suffix()?;
            if slots > 65535 {
                return Err(Error::unsupported(format!("CUDA ffn: {slots} expert slots in one batch (at most 65535)")));
            }
            let (q, counts) = if fuse_down {
                let groups = slots * n_ff / 32;
                (sc.get(S::GateQ, groups * Q8_1_BYTES)?, sc.put(S::GateCounts, vec![0u8; groups * 4])?)
            } else {
                (0, 0)
            };
            let shape = self.dev.mmvq_shape();
            self.launch(
                &format!("mul_mat_vec_swiglu_{sfx}"),
                [blocks(n_ff, shape.rows_per_block() as usize), slots as u32, 1],
                shape.threads(),
                &[
                    Arg::Ptr(f.gate.buf.ptr),
                    Arg::Ptr(f.up.buf.ptr),
                    Arg::I64((n_ff * f.gate.row_bytes) as i64),
                    Arg::Ptr(ids),
                    Arg::Ptr(xin),
                    Arg::I32((n_embd / 32) as i32),
                    Arg::I32(k as i32),
                    Arg::Ptr(g),
                    Arg::I32(n_embd as i32),
                    Arg::I32(n_ff as i32),
                    Arg::Ptr(q),
                    Arg::Ptr(counts),
                ],
            )?;
            if fuse_down {
                gq = Some(q);
            }
        } else {
            let u = sc.get(S::Up, slots * n_ff * 4)?;
            for (w, y) in [(&f.gate, g), (&f.up, u)] {
                let xin = if is_float(w.ty) { x.ptr() } else { xq_for(sc, &mut xq)? };
                self.matvec(w, n_ff, n_ff * w.row_bytes, ids, xin, k, y, slots)?;
            }
            let n = slots * n_ff;
            self.launch("swiglu", [blocks(n, 256), 1, 1], 256, &[Arg::Ptr(g), Arg::Ptr(u), Arg::Ptr(g), Arg::I32(n as i32)])?;
        }
        // Down, one slot per row of the gated activations.
        let gin = match gq {
            Some(q) => q,
            None if is_float(f.down.ty) => g,
            None => self.quantize(sc, S::GateQ, g, slots, n_ff)?,
        };
        if fuse_down {
            let shape = self.dev.mmvq_shape();
            return self.launch(
                &format!("mul_mat_vec_moe_{}", f.down.suffix()?),
                [blocks(n_embd, shape.rows_per_block() as usize), n_tok as u32, 1],
                shape.threads(),
                &[
                    Arg::Ptr(f.down.buf.ptr),
                    Arg::I64((n_embd * f.down.row_bytes) as i64),
                    Arg::Ptr(ids),
                    Arg::Ptr(gin),
                    Arg::I32((n_ff / 32) as i32),
                    Arg::I32(k as i32),
                    Arg::Ptr(wts),
                    Arg::Ptr(out.ptr()),
                    Arg::I32(n_ff as i32),
                    Arg::I32(n_embd as i32),
                ],
            );
        }
        let y = sc.get(S::Down, slots * n_embd * 4)?;
        self.matvec(&f.down, n_embd, n_embd * f.down.row_bytes, ids, gin, 1, y, slots)?;
        self.moe_combine(out, y, wts, k, n_embd, n_tok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::kernels::{kernel_names, PROGRAMS};
    use crate::quant::TYPE_FACTS;

    /// The launch's tile matches the one gemm.cu computes: a grid of the wrong shape would leave
    /// rows or tokens unwritten.
    #[test]
    fn gemm_tile_matches_the_kernel() {
        let src = PROGRAMS.iter().find(|p| p.name == "gemm.cu").expect("gemm.cu").text;
        let define = |name: &str| -> usize {
            let line = src.lines().find(|l| l.starts_with(&format!("#define {name} "))).unwrap_or_else(|| panic!("{name}"));
            line.split_whitespace().nth(2).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{line}"))
        };
        assert_eq!(define("XD_GEMM_BM"), GEMM_BM);
        assert_eq!(define("XD_GEMM_BN"), GEMM_BN);
        assert_eq!(define("XD_GEMM_THREADS"), GEMM_THREADS as usize);
    }

    /// Every weight type the backend accepts has each kernel its dispatch can name: the matvec,
    /// the GEMM and the row gather; float types the fused router, quantized ones the fused QKV,
    /// gate+up and down + combine matvecs. And it accepts every type the CPU reads but the two activation
    /// formats, which llama.cpp never writes as weights.
    #[test]
    fn every_accepted_type_has_its_kernels() {
        let names: Vec<String> = PROGRAMS.iter().flat_map(kernel_names).collect();
        let mut refused = Vec::new();
        for ty in TYPE_FACTS.iter().map(|f| f.ty).filter(|&t| crate::quant::is_supported(t)) {
            let Some(sfx) = type_suffix(ty) else {
                refused.push(ty);
                continue;
            };
            let mut want = vec![format!("mul_mat_vec_{sfx}"), format!("mul_mat_{sfx}"), format!("get_rows_{sfx}")];
            if is_float(ty) {
                want.extend([format!("moe_route_{sfx}"), format!("router_logits_{sfx}")]);
            } else {
                want.extend([format!("mul_mat_vec3_{sfx}"), format!("mul_mat_vec_swiglu_{sfx}"), format!("mul_mat_vec_moe_{sfx}")]);
            }
            for k in want {
                assert!(names.contains(&k), "{ty}: no kernel {k}");
            }
        }
        assert_eq!(refused, [GgmlType::Q8_1, GgmlType::Q8_K], "weight types the CPU reads and the CUDA backend refuses");
    }
}
