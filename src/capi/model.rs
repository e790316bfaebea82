//! Model: load, inspect, free.

use std::ffi::{c_char, c_void};
use std::mem::offset_of;

use super::{
    c_path, c_str_utf8, field, guard, guard_value, non_null, non_null_mut, struct_size,
    write_bytes, write_field, xdan_device, xdan_progress_fn, xdan_status, xdan_token, UserPtr,
};
use crate::engine::{Device, Model, ModelParams};
use crate::error::{Error, ErrorKind, Result};

/// A loaded model: weights, hyper-parameters and tokenizer. Immutable after load; may be used
/// from any number of threads and contexts at once.
pub struct xdan_model {
    pub(crate) model: Model,
    pub(crate) vocab_only: bool,
}

/// How to load a model. Fill with `xdan_model_params_init()`, then change what you need.
#[repr(C)]
pub struct xdan_model_params {
    /// `sizeof(xdan_model_params)` as the caller compiled it (set by the init function); the
    /// library reads only the fields that fit, so programs built against an older header
    /// keep working when fields are appended.
    pub size: u32,
    /// Where to run (default `XDAN_DEVICE_AUTO`: the GPU when `xdan_cuda_available()`, else
    /// the CPU; the choice is logged at INFO level).
    pub device: xdan_device,
    /// CUDA device ordinal (default 0).
    pub cuda_device: i32,
    /// Bytes of GPU memory the model may use: its weights, then each context's KV cache and
    /// activations; 0 = the free memory minus a margin (512 MiB). An MoE model whose weights do
    /// not all fit keeps the other weights and as many experts as fit on the GPU, leaving room
    /// for a 4096-token context (F16 KV cache, 512-token batches) and for one layer's experts;
    /// the other experts stay in host memory (mapped from the file) and run on the CPU for
    /// batches under 32 tokens, and are brought to the GPU a layer at a time for larger ones
    /// (`xdan_model_device` says how many stay on the host). Which experts the GPU holds
    /// follows the routing: every 256 routed (token, expert) slots of a layer, a host expert
    /// the router picked more than 1.5 times as often as one on the GPU takes its place there
    /// (`XDAN_CUDA_REBALANCE_SLOTS` sets the interval; 0 keeps the first placement). What does
    /// not fit even so (or a dense model's weights) fails with `XDAN_E_OUT_OF_MEMORY`, the
    /// message naming the bytes needed and available.
    pub vram_budget: u64,
    /// CPU threads; 0 = the number of physical cores.
    pub n_threads: i32,
    /// Map the weights instead of reading them into memory (default true).
    pub use_mmap: bool,
    /// Load only metadata and tokenizer (works on vocab-only GGUFs); `xdan_context_new` on such
    /// a model returns `XDAN_E_INVALID_ARG`. Default false.
    pub vocab_only: bool,
    /// Optional, called during the load with the fraction done; returning false cancels it
    /// (`XDAN_E_CANCELLED`).
    pub progress: xdan_progress_fn,
    /// Passed to `progress`.
    pub progress_user: *mut c_void,
}

/// A model's hyper-parameters. Set `size = sizeof(xdan_model_info)` before calling
/// `xdan_model_info_get`; only fields that fit in `size` are written.
#[repr(C)]
pub struct xdan_model_info {
    /// `sizeof(xdan_model_info)`, set by the caller.
    pub size: u32,
    /// `general.architecture`, NUL-terminated (truncated to 31 bytes), e.g. `"llama"`.
    pub arch: [c_char; 32],
    /// Vocabulary size (tokens are `0 .. n_vocab-1`).
    pub n_vocab: u32,
    /// Context length the model was trained with.
    pub n_ctx_train: u32,
    /// Embedding (hidden) size.
    pub n_embd: u32,
    /// Transformer blocks.
    pub n_layer: u32,
    /// Attention (query) heads.
    pub n_head: u32,
    /// Key/value heads (fewer than `n_head` for grouped-query attention).
    pub n_head_kv: u32,
    /// Feed-forward size (of one expert in a Mixture-of-Experts model).
    pub n_ff: u32,
    /// Experts per MoE layer; 0 for a dense model.
    pub n_expert: u32,
    /// Experts used per token; 0 for a dense model.
    pub n_expert_used: u32,
    /// Parameter count (elements of all weight tensors).
    pub n_params: u64,
    /// Size of the GGUF file in bytes.
    pub file_bytes: u64,
    /// Beginning-of-sequence token; -1 when the model has none.
    pub bos: xdan_token,
    /// End-of-sequence token; -1 when the model has none.
    pub eos: xdan_token,
}

fn defaults() -> xdan_model_params {
    xdan_model_params {
        size: std::mem::size_of::<xdan_model_params>() as u32,
        device: xdan_device::XDAN_DEVICE_AUTO,
        cuda_device: 0,
        vram_budget: 0,
        n_threads: 0,
        use_mmap: true,
        vocab_only: false,
        progress: None,
        progress_user: std::ptr::null_mut(),
    }
}

/// Fills `*p` with the defaults (and `p->size`). NULL `p` is ignored.
#[no_mangle]
pub unsafe extern "C" fn xdan_model_params_init(p: *mut xdan_model_params) {
    guard_value((), || {
        if !p.is_null() {
            std::ptr::write_unaligned(p, defaults());
        }
        Ok(())
    })
}

pub(crate) fn device_from(raw: u32, name: &str) -> Result<Device> {
    Ok(match raw {
        0 => Device::Auto,
        1 => Device::Cpu,
        2 => Device::Cuda,
        _ => return Err(Error::invalid_arg(format!("{name} = {raw} is not an xdan_device"))),
    })
}

pub(crate) fn threads_from(raw: i32, name: &str) -> Result<usize> {
    usize::try_from(raw).map_err(|_| Error::invalid_arg(format!("{name} = {raw} is negative")))
}

/// Loads the GGUF model at `path` (NUL-terminated) with `p` (NULL = defaults) and stores the
/// handle in `*out`. Errors: `XDAN_E_IO` (cannot open/read/map; the message names the path),
/// `XDAN_E_FORMAT` (malformed or truncated file; the message says where),
/// `XDAN_E_UNSUPPORTED` (architecture, tensor type or tokenizer not supported),
/// `XDAN_E_DEVICE` (`XDAN_DEVICE_CUDA` without a usable GPU, driver and NVRTC, or a driver
/// failure; the message says which), `XDAN_E_OUT_OF_MEMORY` (the weights do not fit in
/// `vram_budget` or host memory), `XDAN_E_CANCELLED` (the progress callback said stop). With
/// `XDAN_DEVICE_AUTO`, a GPU that cannot take the model is logged (WARN) and the CPU is used.
#[no_mangle]
pub unsafe extern "C" fn xdan_model_load(
    path: *const c_char,
    p: *const xdan_model_params,
    out: *mut *mut xdan_model,
) -> xdan_status {
    guard(|| {
        let path = c_path(path, "path")?;
        non_null_mut(out, "out")?;
        let d = defaults();
        let mut params = ModelParams::default();
        let mut progress = None;
        let mut user = UserPtr(std::ptr::null_mut());
        if !p.is_null() {
            let size = struct_size(p, "params")?;
            type P = xdan_model_params;
            let device = field!(p, size, P, device as u32).unwrap_or(d.device as u32);
            params.device = device_from(device, "params->device")?;
            params.cuda_device = field!(p, size, P, cuda_device as i32).unwrap_or(0);
            params.vram_budget = field!(p, size, P, vram_budget as u64).unwrap_or(0);
            let n_threads = field!(p, size, P, n_threads as i32).unwrap_or(0);
            params.n_threads = threads_from(n_threads, "params->n_threads")?;
            params.use_mmap = field!(p, size, P, use_mmap as u8).map_or(true, |b| b != 0);
            params.vocab_only = field!(p, size, P, vocab_only as u8).map_or(false, |b| b != 0);
            progress = field!(p, size, P, progress as xdan_progress_fn).flatten();
            user = UserPtr(field!(p, size, P, progress_user as *mut c_void).unwrap_or(user.0));
        }
        let mut cb = |f: f32| match progress {
            // SAFETY: the host's callback with the host's pointer, as documented.
            Some(cb) => unsafe { cb(f, user.0) },
            None => true,
        };
        let model = Model::load(&path, &params, progress.map(|_| &mut cb as &mut dyn FnMut(f32) -> bool))?;
        let m = Box::new(xdan_model { model, vocab_only: params.vocab_only });
        *out = Box::into_raw(m);
        Ok(())
    })
}

/// Frees a model. Contexts made from it stay valid (they keep what they need alive). NULL is
/// ignored.
#[no_mangle]
pub unsafe extern "C" fn xdan_model_free(m: *mut xdan_model) {
    guard_value((), || {
        if !m.is_null() {
            drop(Box::from_raw(m));
        }
        Ok(())
    })
}

pub(crate) unsafe fn model_ref<'a>(m: *const xdan_model) -> Result<&'a xdan_model> {
    non_null(m, "model")?;
    Ok(&*m)
}

/// Writes the model's hyper-parameters into `*out`; set `out->size` first. Fields beyond
/// `out->size` are left alone.
#[no_mangle]
pub unsafe extern "C" fn xdan_model_info_get(
    m: *const xdan_model,
    out: *mut xdan_model_info,
) -> xdan_status {
    guard(|| {
        let m = model_ref(m)?;
        non_null_mut(out, "out")?;
        let size = struct_size(out, "out")?;
        let info = m.model.info();
        let base = out as *mut u8;
        type I = xdan_model_info;
        let mut arch = [0 as c_char; 32];
        let bytes = info.arch.as_bytes();
        for (d, &s) in arch.iter_mut().zip(bytes.iter().take(31)) {
            *d = s as c_char;
        }
        write_field(base, size, offset_of!(I, arch), arch);
        write_field(base, size, offset_of!(I, n_vocab), info.n_vocab);
        write_field(base, size, offset_of!(I, n_ctx_train), info.n_ctx_train);
        write_field(base, size, offset_of!(I, n_embd), info.n_embd);
        write_field(base, size, offset_of!(I, n_layer), info.n_layer);
        write_field(base, size, offset_of!(I, n_head), info.n_head);
        write_field(base, size, offset_of!(I, n_head_kv), info.n_head_kv);
        write_field(base, size, offset_of!(I, n_ff), info.n_ff);
        write_field(base, size, offset_of!(I, n_expert), info.n_expert);
        write_field(base, size, offset_of!(I, n_expert_used), info.n_expert_used);
        write_field(base, size, offset_of!(I, n_params), info.n_params);
        write_field(base, size, offset_of!(I, file_bytes), info.file_bytes);
        write_field(base, size, offset_of!(I, bos), info.bos);
        write_field(base, size, offset_of!(I, eos), info.eos);
        Ok(())
    })
}

/// The GGUF metadata value of `key` (NUL-terminated) as text, through the buffer protocol:
/// `*len` receives the full length (without NUL); if `cap` is too small the call returns
/// `XDAN_E_BUFFER_TOO_SMALL` and writes nothing else; a NUL follows when room allows. Numbers
/// print in decimal, booleans as `true`/`false`, strings as they are, arrays as
/// `[a, b, ...]` (strings in them quoted). `XDAN_E_INVALID_ARG` if the key is absent.
#[no_mangle]
pub unsafe extern "C" fn xdan_model_meta(
    m: *const xdan_model,
    key: *const c_char,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> xdan_status {
    guard(|| {
        let m = model_ref(m)?;
        let key = c_str_utf8(key, "key")?;
        non_null_mut(len, "len")?;
        let v = m.model.gguf().get(key).ok_or_else(|| {
            Error::new(ErrorKind::InvalidArg, format!("metadata key '{key}' is absent"))
        })?;
        write_bytes(v.to_text(usize::MAX).as_bytes(), buf, cap, len)
    })
}

/// The device the model runs on, e.g. `"cpu"` or `"cuda:0 (NVIDIA H100 80GB HBM3, sm_90)"`,
/// with `" + cpu (96 of 240 experts in host memory)"` appended when some experts run on the
/// CPU (empty for a model loaded with `vocab_only`), through the buffer protocol of
/// `xdan_model_meta`.
#[no_mangle]
pub unsafe extern "C" fn xdan_model_device(
    m: *const xdan_model,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> xdan_status {
    guard(|| {
        let m = model_ref(m)?;
        non_null_mut(len, "len")?;
        write_bytes(m.model.device_name().as_bytes(), buf, cap, len)
    })
}
