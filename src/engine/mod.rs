//! The Rust API: [`Model`] (weights + tokenizer, immutable, shareable), [`Context`] (KV cache +
//! scratch, one thread at a time), stepping and logits. The C ABI in `capi` is a thin layer over
//! exactly this.
//!
//! (Interface in place; the implementation lands with the engine work.)

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gguf::Gguf;
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

/// Called with the fraction done; returning false cancels.
pub type ProgressFn<'a> = &'a mut dyn FnMut(f32) -> bool;

pub struct ModelParams {
    pub device: Device,
    pub cuda_device: i32,
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
}

struct ModelInner {
    gguf: Gguf,
    tokenizer: Tokenizer,
}

/// A loaded model; cloning shares it.
#[derive(Clone)]
pub struct Model {
    inner: Arc<ModelInner>,
}

impl Model {
    pub fn load(path: &Path, params: &ModelParams, progress: Option<ProgressFn>) -> Result<Model> {
        let _ = progress;
        let gguf = Gguf::open(path, params.use_mmap)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        Ok(Model { inner: Arc::new(ModelInner { gguf, tokenizer }) })
    }
    pub fn gguf(&self) -> &Gguf {
        &self.inner.gguf
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }
    pub fn info(&self) -> ModelInfo {
        ModelInfo::default()
    }
    pub fn n_vocab(&self) -> usize {
        self.inner.tokenizer.n_vocab()
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

pub struct Context {
    model: Model,
}

impl Context {
    pub fn new(model: &Model, params: &ContextParams) -> Result<Context> {
        let _ = params;
        Ok(Context { model: model.clone() })
    }
    pub fn model(&self) -> &Model {
        &self.model
    }
    /// Appends `tokens` to `seq` and keeps the last token's logits. All or nothing.
    pub fn step(&mut self, seq: u32, tokens: &[Token]) -> Result<()> {
        self.step_batch(&[(seq, tokens)])
    }
    /// Several sequences in one forward pass. All or nothing.
    pub fn step_batch(&mut self, items: &[(u32, &[Token])]) -> Result<()> {
        let _ = items;
        Err(Error::unsupported("forward pass not implemented"))
    }
    pub fn logits(&self, seq: u32) -> Result<&[f32]> {
        Err(Error::invalid_arg(format!("sequence {seq} has no logits")))
    }
    pub fn set_abort(&mut self, f: Option<AbortFn>) {
        let _ = f;
    }
    pub fn seq_len(&self, seq: u32) -> u32 {
        let _ = seq;
        0
    }
    pub fn seq_truncate(&mut self, seq: u32, len: u32) -> Result<()> {
        let _ = (seq, len);
        Err(Error::unsupported("kv not implemented"))
    }
    pub fn seq_clear(&mut self, seq: u32) -> Result<()> {
        let _ = seq;
        Err(Error::unsupported("kv not implemented"))
    }
    pub fn seq_fork(&mut self, src: u32, dst: u32) -> Result<()> {
        let _ = (src, dst);
        Err(Error::unsupported("kv not implemented"))
    }
    pub fn seq_save(&mut self, seq: u32, path: &Path) -> Result<()> {
        let _ = (seq, path);
        Err(Error::unsupported("kv not implemented"))
    }
    pub fn seq_load(&mut self, seq: u32, path: &Path) -> Result<()> {
        let _ = (seq, path);
        Err(Error::unsupported("kv not implemented"))
    }
    pub fn kv_stats(&self) -> KvStats {
        KvStats::default()
    }
}
