//! Context (KV cache + compute state) and stepping: feed tokens, read logits.

use std::ffi::c_void;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use super::model::{model_ref, threads_from, xdan_model};
use super::tokenizer::check_tokens;
use super::{
    field, guard, in_slice, non_null, non_null_mut, struct_size, xdan_kv_type, xdan_progress_fn,
    xdan_seq, xdan_status, xdan_token, UserPtr,
};
use crate::engine::{Context, ContextParams, KvType};
use crate::error::{Error, ErrorKind, Result};

/// A context: the KV cache of up to `n_seq_max` sequences and the scratch state of forward
/// passes, made from one model. Used by one thread at a time: a call while another thread is
/// inside one on the same context returns `XDAN_E_BUSY`.
pub struct xdan_context {
    state: Mutex<State>,
    pub(crate) n_seq_max: u32,
    pub(crate) n_vocab: usize,
    /// Test hook: the next abort poll inside a step panics.
    pub(crate) panic_next_step: Arc<AtomicBool>,
}

pub(crate) struct State {
    pub(crate) ctx: Context,
    /// Set when a panic unwound through the engine: the state may be half-updated.
    broken: bool,
}

/// How to make a context. Fill with `xdan_context_params_init()`, then change what you need.
#[repr(C)]
pub struct xdan_context_params {
    /// `sizeof(xdan_context_params)` as the caller compiled it (set by the init function).
    pub size: u32,
    /// Maximum tokens per sequence; 0 = the model's training context (capped by memory).
    pub n_ctx: u32,
    /// Sequence slots (default 1); sequences are numbered `0 .. n_seq_max-1`.
    pub n_seq_max: u32,
    /// KV pool capacity in tokens over all sequences; 0 = `n_ctx * n_seq_max`.
    pub n_kv_tokens: u32,
    /// Maximum tokens per forward pass (default 512); longer steps are split internally.
    pub n_batch: u32,
    /// KV cache element type (default `XDAN_KV_F16`).
    pub kv_type: xdan_kv_type,
    /// CPU threads; 0 = the model's.
    pub n_threads: i32,
    /// Optional; polled during `xdan_step`/`xdan_step_batch` (with `fraction_done` 0):
    /// returning false cancels the step, which then returns `XDAN_E_CANCELLED` and leaves the
    /// sequences unchanged. It may be called on one of the library's worker threads.
    pub abort_check: xdan_progress_fn,
    /// Passed to `abort_check`.
    pub abort_user: *mut c_void,
}

fn defaults() -> xdan_context_params {
    let d = ContextParams::default();
    xdan_context_params {
        size: std::mem::size_of::<xdan_context_params>() as u32,
        n_ctx: d.n_ctx,
        n_seq_max: d.n_seq_max,
        n_kv_tokens: d.n_kv_tokens,
        n_batch: d.n_batch,
        kv_type: xdan_kv_type::XDAN_KV_F16,
        n_threads: 0,
        abort_check: None,
        abort_user: std::ptr::null_mut(),
    }
}

/// Fills `*p` with the defaults (and `p->size`). NULL `p` is ignored.
#[no_mangle]
pub unsafe extern "C" fn xdan_context_params_init(p: *mut xdan_context_params) {
    super::guard_value((), || {
        if !p.is_null() {
            std::ptr::write_unaligned(p, defaults());
        }
        Ok(())
    })
}

/// Makes a context for model `m` with `p` (NULL = defaults) and stores it in `*out`. The
/// context keeps the model alive: `xdan_model_free` may come first. `XDAN_E_INVALID_ARG` for a
/// model loaded with `vocab_only` or out-of-range parameters; `XDAN_E_OUT_OF_MEMORY` when the
/// KV cache cannot be allocated or, on a GPU, does not fit what is left of the model's
/// `vram_budget` (the message names the bytes needed and left); `XDAN_E_UNSUPPORTED` for
/// `XDAN_KV_Q8_0` with a head size that is not a multiple of 32.
#[no_mangle]
pub unsafe extern "C" fn xdan_context_new(
    m: *mut xdan_model,
    p: *const xdan_context_params,
    out: *mut *mut xdan_context,
) -> xdan_status {
    guard(|| {
        let m = model_ref(m)?;
        non_null_mut(out, "out")?;
        if m.vocab_only {
            return Err(Error::invalid_arg(
                "the model was loaded with vocab_only: it has no weights to run",
            ));
        }
        let d = defaults();
        let mut params = ContextParams::default();
        let mut abort: xdan_progress_fn = None;
        let mut user = UserPtr(std::ptr::null_mut());
        if !p.is_null() {
            let size = struct_size(p, "params")?;
            type P = xdan_context_params;
            params.n_ctx = field!(p, size, P, n_ctx as u32).unwrap_or(d.n_ctx);
            params.n_seq_max = field!(p, size, P, n_seq_max as u32).unwrap_or(d.n_seq_max);
            params.n_kv_tokens = field!(p, size, P, n_kv_tokens as u32).unwrap_or(d.n_kv_tokens);
            params.n_batch = field!(p, size, P, n_batch as u32).unwrap_or(d.n_batch);
            params.kv_type = match field!(p, size, P, kv_type as u32).unwrap_or(0) {
                0 => KvType::F16,
                1 => KvType::F32,
                2 => KvType::Q8_0,
                v => {
                    return Err(Error::invalid_arg(format!(
                        "params->kv_type = {v} is not an xdan_kv_type"
                    )))
                }
            };
            let n_threads = field!(p, size, P, n_threads as i32).unwrap_or(0);
            params.n_threads = threads_from(n_threads, "params->n_threads")?;
            abort = field!(p, size, P, abort_check as xdan_progress_fn).flatten();
            user = UserPtr(field!(p, size, P, abort_user as *mut c_void).unwrap_or(user.0));
        }
        if params.n_seq_max == 0 {
            return Err(Error::invalid_arg("params->n_seq_max is 0: at least one sequence"));
        }
        if params.n_batch == 0 {
            return Err(Error::invalid_arg("params->n_batch is 0: at least one token per pass"));
        }
        let mut ctx = Context::new(&m.model, &params)?;
        let panic_next_step = Arc::new(AtomicBool::new(false));
        let flag = panic_next_step.clone();
        ctx.set_abort(Some(Box::new(move || {
            let user = user;
            if flag.swap(false, Ordering::SeqCst) {
                panic!("forced by xdan_debug_panic_next_step");
            }
            match abort {
                // SAFETY: the host's callback with the host's pointer, as documented.
                Some(cb) => unsafe { cb(0.0, user.0) },
                None => true,
            }
        })));
        let c = xdan_context {
            state: Mutex::new(State { ctx, broken: false }),
            n_seq_max: params.n_seq_max,
            n_vocab: m.model.n_vocab(),
            panic_next_step,
        };
        *out = Box::into_raw(Box::new(c));
        Ok(())
    })
}

/// Frees a context (its KV cache and, if it was the last user, the model). NULL is ignored.
/// Must not be called while another thread uses the context.
#[no_mangle]
pub unsafe extern "C" fn xdan_context_free(c: *mut xdan_context) {
    super::guard_value((), || {
        if !c.is_null() {
            drop(Box::from_raw(c));
        }
        Ok(())
    })
}

impl xdan_context {
    /// The context's state for one call; `XDAN_E_BUSY` if another thread holds it.
    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, State>> {
        let g = self.state.try_lock().ok_or_else(|| {
            Error::new(ErrorKind::Busy, "the context is in use by another thread")
        })?;
        if g.broken {
            return Err(Error::internal(
                "the context is unusable after an earlier internal error; free it",
            ));
        }
        Ok(g)
    }

    /// Runs `f` on the engine context; a panic inside marks the context broken, then goes on
    /// unwinding to the call's guard.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Context) -> Result<T>) -> Result<T> {
        let mut g = self.lock()?;
        match catch_unwind(AssertUnwindSafe(|| f(&mut g.ctx))) {
            Ok(r) => r,
            Err(payload) => {
                g.broken = true;
                drop(g);
                resume_unwind(payload)
            }
        }
    }

    pub(crate) fn check_seq(&self, seq: xdan_seq, name: &str) -> Result<()> {
        if seq >= self.n_seq_max {
            return Err(Error::invalid_arg(format!(
                "{name} {seq} is out of range: the context has sequences 0..{}",
                self.n_seq_max
            )));
        }
        Ok(())
    }
}

pub(crate) unsafe fn context_ref<'a>(c: *const xdan_context) -> Result<&'a xdan_context> {
    non_null(c, "context")?;
    Ok(&*c)
}

/// Appends `n` tokens to sequence `seq` at its next positions, runs the model, and keeps the
/// logits of the last token (`xdan_logits`). All or nothing: on any error the sequence is
/// exactly as before. `XDAN_E_INVALID_ARG` (NULL, `n == 0`, bad token or sequence),
/// `XDAN_E_CONTEXT_FULL` (no room: nothing changed), `XDAN_E_CANCELLED` (the abort check said
/// stop), `XDAN_E_BUSY`.
///
/// On the CPU the arithmetic is llama.cpp's: a pass holding one token of a sequence sums its
/// attention as llama.cpp's decode steps do, a pass with two or more as its prompt batches do.
/// So a prompt stepped whole or in passes of two or more tokens each (by the caller or by
/// `n_batch`) gives the same bits; a token stepped alone agrees with those to rounding only,
/// as in llama.cpp. Other sequences sharing a pass never change a sequence's results.
#[no_mangle]
pub unsafe extern "C" fn xdan_step(
    c: *mut xdan_context,
    seq: xdan_seq,
    tokens: *const xdan_token,
    n: usize,
) -> xdan_status {
    guard(|| {
        let c = context_ref(c)?;
        non_null(tokens, "tokens")?;
        if n == 0 {
            return Err(Error::invalid_arg("n is 0: a step needs at least one token"));
        }
        let tokens = in_slice(tokens, n, "tokens")?;
        c.check_seq(seq, "seq")?;
        check_tokens(tokens, c.n_vocab)?;
        c.with(|ctx| ctx.step(seq, tokens))
    })
}

/// Tokens for one sequence in `xdan_step_batch`.
#[repr(C)]
pub struct xdan_seq_tokens {
    /// The sequence to append to.
    pub seq: xdan_seq,
    /// The tokens to append (`n` of them, at least one).
    pub tokens: *const xdan_token,
    /// How many tokens.
    pub n: usize,
}

/// Steps several sequences in one forward pass (continuous batching): each item as in
/// `xdan_step`; a sequence may appear only once. Same all-or-nothing rule over all items.
#[no_mangle]
pub unsafe extern "C" fn xdan_step_batch(
    c: *mut xdan_context,
    items: *const xdan_seq_tokens,
    n_items: usize,
) -> xdan_status {
    guard(|| {
        let c = context_ref(c)?;
        non_null(items, "items")?;
        if n_items == 0 {
            return Err(Error::invalid_arg("n_items is 0"));
        }
        let items = in_slice(items, n_items, "items")?;
        let mut list: Vec<(u32, &[xdan_token])> = Vec::with_capacity(items.len());
        for (i, it) in items.iter().enumerate() {
            c.check_seq(it.seq, &format!("items[{i}].seq"))?;
            if it.n == 0 {
                return Err(Error::invalid_arg(format!("items[{i}].n is 0")));
            }
            let toks = in_slice(it.tokens, it.n, &format!("items[{i}].tokens"))?;
            check_tokens(toks, c.n_vocab).map_err(|e| e.context(format!("items[{i}]")))?;
            if list.iter().any(|&(s, _)| s == it.seq) {
                return Err(Error::invalid_arg(format!(
                    "items[{i}].seq {} appears more than once",
                    it.seq
                )));
            }
            list.push((it.seq, toks));
        }
        c.with(|ctx| ctx.step_batch(&list))
    })
}

/// The logits (`*n_vocab` floats) of the last token stepped for `seq`, in `*logits`. They stay
/// valid until the next step, truncate, clear, load or free on this context.
/// `XDAN_E_INVALID_ARG` if the sequence has no logits yet (nothing stepped since it was
/// created, cleared, truncated or loaded).
#[no_mangle]
pub unsafe extern "C" fn xdan_logits(
    c: *mut xdan_context,
    seq: xdan_seq,
    logits: *mut *const f32,
    n_vocab: *mut usize,
) -> xdan_status {
    guard(|| {
        let c = context_ref(c)?;
        non_null_mut(logits, "logits")?;
        non_null_mut(n_vocab, "n_vocab")?;
        c.check_seq(seq, "seq")?;
        let (p, n) = c.with(|ctx| {
            let l = ctx.logits(seq)?;
            Ok((l.as_ptr(), l.len()))
        })?;
        *logits = p;
        *n_vocab = n;
        Ok(())
    })
}
