//! The Rust API: [`Model`] (weights + tokenizer, immutable, shareable), [`Context`] (KV cache +
//! scratch, one thread at a time), stepping and logits. The C ABI in `capi` is a thin layer over
//! exactly this. A model runs on the CPU or on a CUDA GPU ([`placement`]); its contexts keep their
//! KV cache on the same device, and only the logits come back to the host.

mod placement;

use std::path::Path;
use std::sync::Arc;

use crate::backend::cuda::EmuDevice;
use crate::backend::{KvLayout, RopeParams, KV_BLOCK};
use crate::error::{Error, ErrorKind, Result};
use crate::gguf::Gguf;
use crate::kv::file::SavedSeq;
use crate::kv::{BlockCopy, KvManager};
use crate::model::forward::Batch;
use crate::model::{self, HParams};
use placement::{DeviceKv, Placed, Target};
pub use crate::backend::ExpertTraffic;
pub use placement::VRAM_MARGIN;
use crate::quant::GgmlType;
use crate::tokenizer::{Token, Tokenizer};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    F16,
    F32,
    Q8_0,
}

impl KvType {
    fn ggml(self) -> GgmlType {
        match self {
            KvType::F16 => GgmlType::F16,
            KvType::F32 => GgmlType::F32,
            KvType::Q8_0 => GgmlType::Q8_0,
        }
    }
}

/// Called with the fraction done; returning false cancels.
pub type ProgressFn<'a> = &'a mut dyn FnMut(f32) -> bool;

pub struct ModelParams {
    /// Auto: the GPU when `crate::backend::cuda::probe()` finds one (else the CPU).
    pub device: Device,
    /// CUDA device ordinal.
    pub cuda_device: i32,
    /// Bytes the model (weights, then each context's KV cache and activations) may use on the
    /// GPU; 0 = the free memory minus [`VRAM_MARGIN`].
    pub vram_budget: u64,
    /// 0 = physical cores.
    pub n_threads: usize,
    pub use_mmap: bool,
    pub vocab_only: bool,
}

impl Default for ModelParams {
    fn default() -> Self {
        ModelParams { device: Device::Auto, cuda_device: 0, vram_budget: 0, n_threads: 0, use_mmap: true, vocab_only: false }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelInfo {
    pub arch: String,
    pub n_vocab: u32,
    pub n_ctx_train: u32,
    pub n_embd: u32,
    pub n_layer: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub n_ff: u32,
    pub n_expert: u32,
    pub n_expert_used: u32,
    pub n_params: u64,
    pub file_bytes: u64,
    pub bos: Token,
    pub eos: Token,
    /// Where the weights are: "cpu", "cuda:0 (NVIDIA H100 80GB HBM3, sm_90)"; empty for a
    /// vocab-only load.
    pub device: String,
}

/// What a model needs to compute (absent for a vocab-only load).
struct Compute {
    hp: HParams,
    rope: RopeParams,
    placed: Arc<dyn Placed>,
    fingerprint: u64,
}

struct ModelInner {
    // Weights refer into the map held by `gguf`: declared first so they drop first.
    compute: Option<Compute>,
    gguf: Arc<Gguf>,
    tokenizer: Tokenizer,
    n_threads: usize,
    info: ModelInfo,
}

/// A loaded model; cloning shares it.
#[derive(Clone)]
pub struct Model {
    inner: Arc<ModelInner>,
}

/// Physical cores (distinct (package, core id) pairs of /proc/cpuinfo), else logical CPUs.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let Ok(s) = std::fs::read_to_string("/proc/cpuinfo") else { return logical };
    let mut set = std::collections::HashSet::new();
    let (mut phys, mut core) = (None, None);
    for line in s.lines() {
        let mut kv = line.splitn(2, ':');
        let (k, v) = (kv.next().unwrap_or("").trim(), kv.next().unwrap_or("").trim());
        match k {
            "physical id" => phys = Some(v.to_string()),
            "core id" => core = Some(v.to_string()),
            "" => {
                if let (Some(p), Some(c)) = (phys.take(), core.take()) {
                    set.insert((p, c));
                }
            }
            _ => {}
        }
    }
    if let (Some(p), Some(c)) = (phys, core) {
        set.insert((p, c));
    }
    if set.is_empty() { logical } else { set.len().min(logical) }
}

impl Model {
    pub fn load(path: &Path, params: &ModelParams, progress: Option<ProgressFn>) -> Result<Model> {
        // (target, whether a failure on the GPU falls back to the CPU)
        let (target, fallback) = match (params.device, crate::backend::cuda::probe()) {
            (Device::Cpu, _) => (Target::Cpu, false),
            (Device::Cuda, Err(e)) => {
                return Err(Error::new(ErrorKind::Device, format!("CUDA requested but unusable: {}", e.message)))
            }
            (Device::Cuda, Ok(devs)) => {
                if !devs.iter().any(|d| d.ordinal == params.cuda_device) {
                    return Err(Error::new(
                        ErrorKind::Device,
                        format!("CUDA device {} requested, but the driver reports {} device(s)", params.cuda_device, devs.len()),
                    ));
                }
                (Target::Gpu(params.cuda_device), false)
            }
            (Device::Auto, Err(e)) => {
                crate::log::info!("CUDA not used ({}); running on the CPU", e.message);
                (Target::Cpu, false)
            }
            (Device::Auto, Ok(devs)) => {
                if devs.iter().any(|d| d.ordinal == params.cuda_device) {
                    (Target::Gpu(params.cuda_device), true)
                } else {
                    crate::log::info!(
                        "CUDA device {} does not exist ({} found); running on the CPU",
                        params.cuda_device,
                        devs.len()
                    );
                    (Target::Cpu, false)
                }
            }
        };
        Self::load_on(path, params, progress, target, fallback)
    }

    /// Loads onto the CUDA emulator (tests of the GPU path on machines without a GPU);
    /// `params.device` is ignored, `params.vram_budget` applies.
    #[doc(hidden)]
    pub fn load_emulated(path: &Path, params: &ModelParams, emu: Arc<EmuDevice>, progress: Option<ProgressFn>) -> Result<Model> {
        Self::load_on(path, params, progress, Target::Emulated(emu), false)
    }

    fn load_on(path: &Path, params: &ModelParams, progress: Option<ProgressFn>, target: Target, fallback: bool) -> Result<Model> {
        let mut cb_store;
        let progress: &mut dyn FnMut(f32) -> bool = match progress {
            Some(p) => p,
            None => {
                cb_store = |_f: f32| true;
                &mut cb_store
            }
        };
        let gguf = Arc::new(Gguf::open(path, params.use_mmap)?);
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let compute = if params.vocab_only {
            None
        } else {
            let shown = path.display();
            let hp = HParams::from_gguf(&gguf).map_err(|e| e.context(&shown))?;
            let placed = match placement::place(&target, params.vram_budget, path, &gguf, &hp, progress) {
                Ok(p) => p,
                Err(e) if fallback && e.kind != ErrorKind::Cancelled => {
                    crate::log::warning!("the GPU could not take the model ({}); running on the CPU", e.message);
                    placement::place(&Target::Cpu, 0, path, &gguf, &hp, progress)?
                }
                Err(e) => return Err(e),
            };
            crate::log::info!("{shown}: running on {}", placed.device_name());
            let mut rope = hp.rope.clone();
            rope.freq_factors = model::rope_freq_factors(&gguf, &hp).map_err(|e| e.context(&shown))?;
            let fingerprint = model::fingerprint(&gguf, &hp);
            Some(Compute { hp, rope, placed, fingerprint })
        };
        if !progress(1.0) {
            return Err(Error::new(ErrorKind::Cancelled, "model load cancelled by the progress callback"));
        }
        let n_threads = if params.n_threads == 0 { physical_cores() } else { params.n_threads };
        let mut info = ModelInfo {
            arch: gguf.get_str("general.architecture").unwrap_or("").to_string(),
            n_vocab: tokenizer.n_vocab() as u32,
            n_params: gguf.tensors().iter().map(|t| t.n_elements).sum(),
            file_bytes: gguf.file_bytes(),
            bos: tokenizer.bos().unwrap_or(-1),
            eos: tokenizer.eos().unwrap_or(-1),
            ..Default::default()
        };
        if let Some(c) = &compute {
            info.device = c.placed.device_name();
            let h = &c.hp;
            info.n_vocab = h.n_vocab as u32;
            info.n_ctx_train = h.n_ctx_train as u32;
            info.n_embd = h.n_embd as u32;
            info.n_layer = h.n_layer as u32;
            info.n_head = h.n_head as u32;
            info.n_head_kv = h.n_head_kv as u32;
            info.n_ff = h.n_ff as u32;
            info.n_expert = h.n_expert as u32;
            info.n_expert_used = h.n_expert_used as u32;
        }
        Ok(Model { inner: Arc::new(ModelInner { compute, gguf, tokenizer, n_threads, info }) })
    }
    pub fn gguf(&self) -> &Gguf {
        &self.inner.gguf
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }
    pub fn info(&self) -> ModelInfo {
        self.inner.info.clone()
    }
    pub fn n_vocab(&self) -> usize {
        match &self.inner.compute {
            Some(c) => c.hp.n_vocab,
            None => self.inner.tokenizer.n_vocab(),
        }
    }
    /// The hyper-parameters (None for a vocab-only load).
    pub fn hparams(&self) -> Option<&HParams> {
        self.inner.compute.as_ref().map(|c| &c.hp)
    }
    /// Where the weights are ("cpu", "cuda:0 (NVIDIA H200, sm_90)", "cuda-emu"); empty for a
    /// vocab-only load.
    pub fn device_name(&self) -> String {
        self.inner.compute.as_ref().map_or(String::new(), |c| c.placed.device_name())
    }
    /// For a model on a GPU that keeps some MoE experts in host memory: how the routed
    /// (token, expert) slots of those experts' layers were served so far — by the device, by
    /// the host — and how many experts the routing moved to the device. None otherwise.
    pub fn expert_traffic(&self) -> Option<ExpertTraffic> {
        self.inner.compute.as_ref().and_then(|c| c.placed.expert_traffic())
    }
    /// The model's fingerprint as written in saved KV files.
    pub fn fingerprint(&self) -> u64 {
        self.inner.compute.as_ref().map_or(0, |c| c.fingerprint)
    }
}

#[derive(Clone, Debug)]
pub struct ContextParams {
    pub n_ctx: u32,
    pub n_seq_max: u32,
    pub n_kv_tokens: u32,
    pub n_batch: u32,
    pub kv_type: KvType,
    pub n_threads: usize,
}

impl Default for ContextParams {
    fn default() -> Self {
        ContextParams { n_ctx: 0, n_seq_max: 1, n_kv_tokens: 0, n_batch: 512, kv_type: KvType::F16, n_threads: 0 }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvStats {
    pub capacity_tokens: u64,
    pub used_tokens: u64,
    pub shared_tokens: u64,
    pub bytes: u64,
}

/// Called during a step; returning false cancels it (the sequences stay as they were).
pub type AbortFn = Box<dyn FnMut() -> bool + Send>;

/// Estimated device memory of one forward pass's activations and scratch for `n_batch` tokens
/// (checked against the GPU budget with the KV cache): the residual stream and attention
/// projections, the split attention's partial results over `n_ctx` positions, the chosen
/// experts' hidden rows, and the logits of one row per sequence.
fn act_bytes(hp: &HParams, n_batch: u64, n_seq: u64, n_ctx: u64) -> u64 {
    let (e, ekv, ff) = (hp.n_embd as u64, hp.n_embd_kv() as u64, hp.n_ff as u64);
    let k = hp.n_expert_used.max(1) as u64;
    let splits = n_ctx.div_ceil(128);
    let per_token = 7 * e + 2 * ekv + 3 * k * ff + k * e + hp.n_head as u64 * splits * (hp.head_dim as u64 + 2);
    4 * (n_batch * per_token + n_seq.min(n_batch) * hp.n_vocab as u64)
}

/// Default KV budget when `n_ctx = 0` asks for the training context.
const DEFAULT_KV_BYTES_CAP: u64 = 4 << 30;

pub struct Context {
    model: Model,
    n_batch: usize,
    layout: KvLayout,
    kv: KvManager,
    /// The K/V bytes and activation scratch, on the model's device.
    dev: Box<dyn DeviceKv>,
    /// Worker threads of the CPU backend (None on a GPU, which runs the pass from the caller).
    pool: Option<rayon::ThreadPool>,
    logits: Vec<Option<Vec<f32>>>,
    abort: Option<AbortFn>,
    record_routes: bool,
    routes: Vec<Vec<u32>>,
    out_buf: Vec<f32>,
}

impl Context {
    pub fn new(model: &Model, params: &ContextParams) -> Result<Context> {
        let c = model.inner.compute.as_ref().ok_or_else(|| {
            Error::invalid_arg("the model was loaded vocab-only; it cannot create a context")
        })?;
        let hp = &c.hp;
        if params.n_seq_max == 0 {
            return Err(Error::invalid_arg("n_seq_max must be at least 1"));
        }
        if params.n_batch == 0 {
            return Err(Error::invalid_arg("n_batch must be at least 1"));
        }
        let ty = params.kv_type.ggml();
        if ty == GgmlType::Q8_0 && hp.head_dim % 32 != 0 {
            return Err(Error::unsupported(format!("KV type Q8_0 needs a head size multiple of 32 (the model's is {})", hp.head_dim)));
        }
        let row = ty.row_bytes(hp.n_embd_kv() as u64).unwrap_or(0);
        let per_token = 2 * hp.n_layer as u64 * row;
        let n_seq = params.n_seq_max as u64;
        let n_ctx = if params.n_ctx == 0 {
            // On a GPU, also at most what its budget has left once the activations are counted.
            let room = match c.placed.room() {
                Some(r) => r.saturating_sub(act_bytes(hp, params.n_batch as u64, n_seq, hp.n_ctx_train as u64)),
                None => u64::MAX,
            };
            let cap = (DEFAULT_KV_BYTES_CAP.min(room) / per_token.max(1) / n_seq).max(KV_BLOCK as u64);
            (hp.n_ctx_train as u64).min(cap).max(1)
        } else {
            params.n_ctx as u64
        };
        let n_kv = if params.n_kv_tokens == 0 { n_ctx * n_seq } else { params.n_kv_tokens as u64 };
        let n_blocks = n_kv.div_ceil(KV_BLOCK as u64);
        let layout = KvLayout { n_layer: hp.n_layer, n_slots: (n_blocks as usize) * KV_BLOCK, n_embd_kv: hp.n_embd_kv(), ty };
        let dev = c.placed.clone().new_kv(&layout, act_bytes(hp, params.n_batch as u64, n_seq, n_ctx))?;
        let pool = if c.placed.uses_host_threads() {
            let n_threads = if params.n_threads == 0 { model.inner.n_threads } else { params.n_threads };
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n_threads.max(1))
                .build()
                .map_err(|e| Error::internal(format!("cannot start {n_threads} threads: {e}")))?;
            Some(pool)
        } else {
            None
        };
        Ok(Context {
            model: model.clone(),
            n_batch: params.n_batch as usize,
            layout,
            kv: KvManager::new(n_blocks as usize, params.n_seq_max as usize, n_ctx as usize),
            dev,
            pool,
            logits: vec![None; params.n_seq_max as usize],
            abort: None,
            record_routes: false,
            routes: Vec::new(),
            out_buf: Vec::new(),
        })
    }
    pub fn model(&self) -> &Model {
        &self.model
    }
    /// Max tokens per sequence.
    pub fn n_ctx(&self) -> u32 {
        self.kv.n_ctx() as u32
    }
    /// Appends `tokens` to `seq` and keeps the last token's logits. All or nothing.
    pub fn step(&mut self, seq: u32, tokens: &[Token]) -> Result<()> {
        self.step_batch(&[(seq, tokens)])
    }
    /// Several sequences in one forward pass. All or nothing.
    pub fn step_batch(&mut self, items: &[(u32, &[Token])]) -> Result<()> {
        let inner = self.model.inner.clone();
        let c = inner.compute.as_ref().expect("a context has a computing model");
        let n_vocab = c.hp.n_vocab;
        // Check everything before touching anything.
        let mut seqs = Vec::with_capacity(items.len());
        for &(seq, toks) in items {
            let s = self.kv.check_seq(seq)?;
            if seqs.contains(&s) {
                return Err(Error::invalid_arg(format!("sequence {seq} appears twice in one step")));
            }
            if toks.is_empty() {
                return Err(Error::invalid_arg(format!("no tokens given for sequence {seq}")));
            }
            if let Some(&bad) = toks.iter().find(|&&t| t < 0 || t as usize >= n_vocab) {
                return Err(Error::invalid_arg(format!("token id {bad} is out of range (n_vocab = {n_vocab})")));
            }
            seqs.push(s);
        }
        if items.is_empty() {
            return Ok(());
        }
        let snap = self.kv.snapshot(seqs.iter().copied());
        let old_len: Vec<usize> = seqs.iter().map(|&s| self.kv.len(s)).collect();
        let mut copies: Vec<BlockCopy> = Vec::new();
        for (&s, &(_, toks)) in seqs.iter().zip(items) {
            if let Err(e) = self.kv.append(s, toks, &mut copies) {
                self.kv.rollback(snap);
                return Err(e);
            }
        }
        match self.run_step(c, &seqs, &old_len, items, &copies) {
            Ok(()) => {
                for (i, &s) in seqs.iter().enumerate() {
                    let src = &self.out_buf[i * n_vocab..(i + 1) * n_vocab];
                    match &mut self.logits[s] {
                        Some(l) => l.copy_from_slice(src),
                        None => self.logits[s] = Some(src.to_vec()),
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.kv.rollback(snap);
                Err(e)
            }
        }
    }

    /// The forward passes of one step after the blocks are allocated; the logits of each item's
    /// last token land in `out_buf` (item order).
    fn run_step(&mut self, c: &Compute, seqs: &[usize], old_len: &[usize], items: &[(u32, &[Token])], copies: &[BlockCopy]) -> Result<()> {
        for cp in copies {
            self.dev.copy_block(cp.src, cp.dst, cp.n)?;
        }
        let n_vocab = c.hp.n_vocab;
        // Flatten: (item, index in item).
        let total: usize = items.iter().map(|(_, t)| t.len()).sum();
        self.out_buf.resize(items.len() * n_vocab, 0.0);
        if self.record_routes {
            self.routes = vec![Vec::new(); c.hp.n_layer];
        }
        let tables: Vec<&[u32]> = seqs.iter().map(|&s| self.kv.seq(s).blocks.as_slice()).collect();
        let (mut toks, mut pos, mut slots, mut tok_seq, mut out_rows, mut out_items) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut chunk_logits = Vec::new();
        let mut it = 0usize; // item
        let mut j = 0usize; // index within item
        let mut done = 0usize;
        while done < total {
            toks.clear();
            pos.clear();
            slots.clear();
            tok_seq.clear();
            out_rows.clear();
            out_items.clear();
            while toks.len() < self.n_batch && done < total {
                let (_, t) = items[it];
                let p = old_len[it] + j;
                toks.push(t[j] as u32);
                pos.push(p as u32);
                slots.push(self.kv.slot(seqs[it], p));
                tok_seq.push(it as u32);
                if j + 1 == t.len() {
                    out_rows.push((toks.len() - 1) as u32);
                    out_items.push(it);
                    it += 1;
                    j = 0;
                } else {
                    j += 1;
                }
                done += 1;
            }
            let b = Batch { tokens: &toks, pos: &pos, slots: &slots, tok_seq: &tok_seq, tables: &tables, out_rows: &out_rows };
            chunk_logits.resize(out_rows.len() * n_vocab, 0.0);
            let abort = &mut self.abort;
            let mut poll = || abort.as_mut().map_or(true, |f| f());
            let routes = if self.record_routes { Some(&mut self.routes) } else { None };
            let dev = &mut self.dev;
            let run = || dev.forward(&c.hp, &c.rope, &b, &mut poll, routes, &mut chunk_logits);
            match &self.pool {
                Some(pool) => pool.install(run)?,
                None => run()?,
            }
            for (k, &item) in out_items.iter().enumerate() {
                self.out_buf[item * n_vocab..(item + 1) * n_vocab].copy_from_slice(&chunk_logits[k * n_vocab..(k + 1) * n_vocab]);
            }
        }
        Ok(())
    }

    /// Logits of the last token stepped for `seq`.
    pub fn logits(&self, seq: u32) -> Result<&[f32]> {
        let s = self.kv.check_seq(seq)?;
        self.logits[s].as_deref().ok_or_else(|| Error::invalid_arg(format!("sequence {seq} has no logits")))
    }
    pub fn set_abort(&mut self, f: Option<AbortFn>) {
        self.abort = f;
    }
    pub fn seq_len(&self, seq: u32) -> u32 {
        self.kv.check_seq(seq).map_or(0, |s| self.kv.len(s) as u32)
    }
    /// The cached tokens of `seq`.
    pub fn seq_tokens(&self, seq: u32) -> Result<&[Token]> {
        let s = self.kv.check_seq(seq)?;
        Ok(&self.kv.seq(s).tokens)
    }
    /// Keeps the first `len` tokens (no-op when the sequence is not longer).
    pub fn seq_truncate(&mut self, seq: u32, len: u32) -> Result<()> {
        let s = self.kv.check_seq(seq)?;
        if (len as usize) < self.kv.len(s) {
            self.kv.truncate(s, len as usize);
            self.logits[s] = None;
        }
        Ok(())
    }
    pub fn seq_clear(&mut self, seq: u32) -> Result<()> {
        let s = self.kv.check_seq(seq)?;
        self.kv.clear(s);
        self.logits[s] = None;
        Ok(())
    }
    /// `dst` becomes a copy of `src` (blocks shared copy-on-write; logits copied).
    pub fn seq_fork(&mut self, src: u32, dst: u32) -> Result<()> {
        let s = self.kv.check_seq(src)?;
        let d = self.kv.check_seq(dst)?;
        self.kv.fork(s, d);
        self.logits[d] = self.logits[s].clone();
        Ok(())
    }
    pub fn seq_save(&mut self, seq: u32, path: &Path) -> Result<()> {
        let s = self.kv.check_seq(seq)?;
        let c = self.model.inner.compute.as_ref().expect("a context has a computing model");
        let n = self.kv.len(s);
        let slots: Vec<u32> = (0..n).map(|p| self.kv.slot(s, p)).collect();
        let mut layers = Vec::with_capacity(self.layout.n_layer);
        for l in 0..self.layout.n_layer {
            let mut buf = Vec::with_capacity(2 * n * self.layout.row_bytes());
            self.dev.export(l, &slots, &mut buf)?;
            layers.push(buf);
        }
        let saved = SavedSeq {
            fingerprint: c.fingerprint,
            kv_type: self.layout.ty.id(),
            n_layer: self.layout.n_layer as u32,
            n_embd_kv: self.layout.n_embd_kv as u32,
            n_vocab: c.hp.n_vocab as u32,
            tokens: self.kv.seq(s).tokens.clone(),
            logits: self.logits[s].clone(),
            layers,
        };
        std::fs::write(path, saved.to_bytes()).map_err(|e| Error::io(format!("{}: cannot write: {e}", path.display())))
    }
    /// Replaces `seq` by the sequence saved in `path`. All or nothing.
    pub fn seq_load(&mut self, seq: u32, path: &Path) -> Result<()> {
        let s = self.kv.check_seq(seq)?;
        let c = self.model.inner.compute.as_ref().expect("a context has a computing model");
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| Error::io(format!("{shown}: cannot read: {e}")))?;
        let saved = SavedSeq::from_bytes(&bytes, &shown, |ty, n| {
            GgmlType::from_id(ty).and_then(|t| t.row_bytes(n as u64)).map(|b| b as usize)
        })?;
        if saved.fingerprint != c.fingerprint
            || saved.n_layer as usize != self.layout.n_layer
            || saved.n_embd_kv as usize != self.layout.n_embd_kv
            || saved.n_vocab as usize != c.hp.n_vocab
        {
            return Err(Error::format(format!(
                "{shown}: saved from another model (fingerprint {:016x}, this model {:016x})",
                saved.fingerprint, c.fingerprint
            )));
        }
        if saved.kv_type != self.layout.ty.id() {
            let name = GgmlType::from_id(saved.kv_type).map_or("?", |t| t.name());
            return Err(Error::invalid_arg(format!(
                "{shown}: saved with KV type {name}, this context uses {}",
                self.layout.ty.name()
            )));
        }
        if let Some(&bad) = saved.tokens.iter().find(|&&t| t < 0 || t as usize >= c.hp.n_vocab) {
            return Err(Error::format(format!("{shown}: token id {bad} is out of range (n_vocab = {})", c.hp.n_vocab)));
        }
        let n = saved.tokens.len();
        let blocks = self.kv.alloc_fresh(n)?;
        let slots: Vec<u32> = (0..n).map(|p| blocks[p / KV_BLOCK] * KV_BLOCK as u32 + (p % KV_BLOCK) as u32).collect();
        for (l, data) in saved.layers.iter().enumerate() {
            if let Err(e) = self.dev.import(l, &slots, data) {
                self.kv.free_blocks(&blocks);
                return Err(e);
            }
        }
        self.kv.commit_replace(s, blocks, saved.tokens);
        self.logits[s] = saved.logits;
        Ok(())
    }
    pub fn kv_stats(&self) -> KvStats {
        let (used, shared) = self.kv.usage();
        KvStats {
            capacity_tokens: (self.kv.n_blocks() * KV_BLOCK) as u64,
            used_tokens: used,
            shared_tokens: shared,
            bytes: self.layout.total_bytes(),
        }
    }
    /// KV blocks in use (for tests: zero once every sequence is cleared).
    pub fn kv_used_blocks(&self) -> usize {
        self.kv.used_blocks()
    }
    /// Checks the KV manager's invariants (tests).
    pub fn kv_check(&self) -> Result<()> {
        self.kv.check_invariants()
    }

    /// Test hook: record the experts chosen in each step (see [`Context::routing`]).
    #[doc(hidden)]
    pub fn set_record_routing(&mut self, on: bool) {
        self.record_routes = on;
        self.routes.clear();
    }
    /// Test hook: per layer, the experts chosen for every token of the last step (token-major,
    /// `n_expert_used` ids each, by descending probability).
    #[doc(hidden)]
    pub fn routing(&self) -> &[Vec<u32>] {
        &self.routes
    }
}
