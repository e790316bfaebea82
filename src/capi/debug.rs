//! Test hooks, outside the contract: they let the C test suite reach states that a correct
//! program cannot produce on demand (an internal panic, a sampler held by another thread).

use std::ffi::c_void;
use std::sync::atomic::Ordering;

use super::context::{context_ref, xdan_context};
use super::sampler::{sampler_ref, xdan_sampler};
use super::{guard, xdan_status};

/// Test hook: makes the next `xdan_step`/`xdan_step_batch` on `c` panic inside the engine (at
/// its first abort-check poll). The step returns `XDAN_E_INTERNAL`, the context is unusable
/// afterwards (calls on it return `XDAN_E_INTERNAL`) and must be freed; the process is
/// unharmed. Not for production use.
#[no_mangle]
pub unsafe extern "C" fn xdan_debug_panic_next_step(c: *mut xdan_context) -> xdan_status {
    guard(|| {
        let c = context_ref(c)?;
        c.panic_next_step.store(true, Ordering::SeqCst);
        Ok(())
    })
}

/// Callback of `xdan_debug_sampler_hold`.
pub type xdan_debug_fn = Option<unsafe extern "C" fn(user: *mut c_void)>;

/// Test hook: calls `fn(user)` while holding `s` as a sampling call does, so that calls on `s`
/// from other threads meanwhile return `XDAN_E_BUSY`. Not for production use.
#[no_mangle]
pub unsafe extern "C" fn xdan_debug_sampler_hold(
    s: *mut xdan_sampler,
    r#fn: xdan_debug_fn,
    user: *mut c_void,
) -> xdan_status {
    guard(|| {
        let s = sampler_ref(s)?;
        let f = r#fn.ok_or_else(|| crate::Error::invalid_arg("fn is NULL"))?;
        let _held = s.lock()?;
        f(user);
        Ok(())
    })
}
