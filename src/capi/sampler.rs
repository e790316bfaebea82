//! Sampling: pick the next token from a sequence's logits.

use parking_lot::{Mutex, MutexGuard};

use super::context::{context_ref, xdan_context};
use super::model::{model_ref, xdan_model};
use super::{field, guard, guard_value, in_slice, non_null, non_null_mut, struct_size, xdan_seq, xdan_status, xdan_token};
use crate::error::{Error, ErrorKind, Result};
use crate::sample::{Sampler, SamplerParams};

/// A sampler: its parameters, the history of tokens the penalties look at, and a seeded
/// random generator. Used by one thread at a time (else `XDAN_E_BUSY`).
pub struct xdan_sampler {
    pub(crate) inner: Mutex<Sampler>,
}

/// How to sample. Fill with `xdan_sampler_params_init()`, then change what you need.
///
/// The chain, in order: penalties over the last `repeat_last_n` tokens of the history
/// (repeat: a positive logit is divided by `repeat_penalty`, another multiplied; then
/// `count * frequency_penalty + presence_penalty` is subtracted); if `temperature <= 0` the
/// largest logit (ties: lowest id) and stop; otherwise top-k, top-p, min-p, temperature, and a
/// draw from xoshiro256** seeded through SplitMix64 from `seed`, computed without the
/// platform's libm so that the same seed and logits give the same tokens everywhere.
#[repr(C)]
pub struct xdan_sampler_params {
    /// `sizeof(xdan_sampler_params)` as the caller compiled it (set by the init function).
    pub size: u32,
    /// 0 = greedy: the largest logit, ties to the lowest id (default 0.8).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 = off (default 40).
    pub top_k: i32,
    /// Keep the most likely tokens whose probabilities sum to `top_p`; 1 = off (default 0.95).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 = off (default 0.05).
    pub min_p: f32,
    /// Penalty for tokens in the window; 1 = off (default 1).
    pub repeat_penalty: f32,
    /// Window of the penalties in tokens: 0 = off, -1 = the whole history (default 64).
    pub repeat_last_n: i32,
    /// Subtracted once per occurrence in the window (default 0).
    pub frequency_penalty: f32,
    /// Subtracted once if the token occurs in the window (default 0).
    pub presence_penalty: f32,
    /// Seed of the random draw (default 0).
    pub seed: u64,
}

fn defaults() -> xdan_sampler_params {
    let d = SamplerParams::default();
    xdan_sampler_params {
        size: std::mem::size_of::<xdan_sampler_params>() as u32,
        temperature: d.temperature,
        top_k: d.top_k,
        top_p: d.top_p,
        min_p: d.min_p,
        repeat_penalty: d.repeat_penalty,
        repeat_last_n: d.repeat_last_n,
        frequency_penalty: d.frequency_penalty,
        presence_penalty: d.presence_penalty,
        seed: d.seed,
    }
}

/// Fills `*p` with the defaults (and `p->size`). NULL `p` is ignored.
#[no_mangle]
pub unsafe extern "C" fn xdan_sampler_params_init(p: *mut xdan_sampler_params) {
    guard_value((), || {
        if !p.is_null() {
            std::ptr::write_unaligned(p, defaults());
        }
        Ok(())
    })
}

/// Makes a sampler for the vocabulary of model `m` with `p` (NULL = defaults) in `*out`. The
/// sampler does not keep the model alive. `XDAN_E_INVALID_ARG` names a parameter out of its
/// domain (e.g. `top_p` outside [0, 1]).
#[no_mangle]
pub unsafe extern "C" fn xdan_sampler_new(
    m: *const xdan_model,
    p: *const xdan_sampler_params,
    out: *mut *mut xdan_sampler,
) -> xdan_status {
    guard(|| {
        let m = model_ref(m)?;
        non_null_mut(out, "out")?;
        let d = defaults();
        let mut sp = SamplerParams::default();
        if !p.is_null() {
            let size = struct_size(p, "params")?;
            type P = xdan_sampler_params;
            sp.temperature = field!(p, size, P, temperature as f32).unwrap_or(d.temperature);
            sp.top_k = field!(p, size, P, top_k as i32).unwrap_or(d.top_k);
            sp.top_p = field!(p, size, P, top_p as f32).unwrap_or(d.top_p);
            sp.min_p = field!(p, size, P, min_p as f32).unwrap_or(d.min_p);
            sp.repeat_penalty = field!(p, size, P, repeat_penalty as f32).unwrap_or(d.repeat_penalty);
            sp.repeat_last_n = field!(p, size, P, repeat_last_n as i32).unwrap_or(d.repeat_last_n);
            sp.frequency_penalty =
                field!(p, size, P, frequency_penalty as f32).unwrap_or(d.frequency_penalty);
            sp.presence_penalty =
                field!(p, size, P, presence_penalty as f32).unwrap_or(d.presence_penalty);
            sp.seed = field!(p, size, P, seed as u64).unwrap_or(d.seed);
        }
        let s = Sampler::new(sp, m.model.n_vocab())?;
        *out = Box::into_raw(Box::new(xdan_sampler { inner: Mutex::new(s) }));
        Ok(())
    })
}

impl xdan_sampler {
    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, Sampler>> {
        self.inner
            .try_lock()
            .ok_or_else(|| Error::new(ErrorKind::Busy, "the sampler is in use by another thread"))
    }
}

pub(crate) unsafe fn sampler_ref<'a>(s: *const xdan_sampler) -> Result<&'a xdan_sampler> {
    non_null(s, "sampler")?;
    Ok(&*s)
}

/// Picks a token from the logits of `seq`'s last step, writes it to `*out` and records it in
/// the sampler's history. It does not step the context: feed the token with `xdan_step`.
/// `XDAN_E_INVALID_ARG` if the sequence has no logits or the sampler was made for another
/// vocabulary size; `XDAN_E_BUSY` if the context or the sampler is in use.
#[no_mangle]
pub unsafe extern "C" fn xdan_sample(
    c: *mut xdan_context,
    seq: xdan_seq,
    s: *mut xdan_sampler,
    out: *mut xdan_token,
) -> xdan_status {
    guard(|| {
        let c = context_ref(c)?;
        let s = sampler_ref(s)?;
        non_null_mut(out, "out")?;
        c.check_seq(seq, "seq")?;
        let mut sampler = s.lock()?;
        let t = c.with(|ctx| sampler.sample(ctx.logits(seq)?))?;
        *out = t;
        Ok(())
    })
}

/// Records `n` tokens in the sampler's history without sampling (e.g. the prompt, so the
/// penalties see it). All or nothing: an id outside the vocabulary is `XDAN_E_INVALID_ARG`.
#[no_mangle]
pub unsafe extern "C" fn xdan_sampler_accept(
    s: *mut xdan_sampler,
    tokens: *const xdan_token,
    n: usize,
) -> xdan_status {
    guard(|| {
        let s = sampler_ref(s)?;
        let tokens = in_slice(tokens, n, "tokens")?;
        s.lock()?.accept(tokens)
    })
}

/// Empties the history and restarts the random generator from the seed. NULL is ignored; a
/// sampler in use by another thread is left alone (`xdan_last_error()` says so).
#[no_mangle]
pub unsafe extern "C" fn xdan_sampler_reset(s: *mut xdan_sampler) {
    guard_value((), || {
        if !s.is_null() {
            sampler_ref(s)?.lock()?.reset();
        }
        Ok(())
    })
}

/// Frees a sampler. NULL is ignored.
#[no_mangle]
pub unsafe extern "C" fn xdan_sampler_free(s: *mut xdan_sampler) {
    guard_value((), || {
        if !s.is_null() {
            drop(Box::from_raw(s));
        }
        Ok(())
    })
}
