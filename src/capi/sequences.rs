//! Sequences: the KV-cache manager (length, truncate, clear, fork, save, load, statistics).

use std::ffi::c_char;
use std::mem::offset_of;

use super::context::{context_ref, xdan_context};
use super::{c_path, guard, guard_value, non_null_mut, struct_size, write_field, xdan_seq, xdan_status};

/// Tokens cached for `seq`. 0 for NULL `c`, a sequence out of range, or a context in use by
/// another thread (`xdan_last_error()` then says which).
#[no_mangle]
pub unsafe extern "C" fn xdan_seq_len(c: *const xdan_context, seq: xdan_seq) -> u32 {
    guard_value(0, || {
        let c = context_ref(c)?;
        c.check_seq(seq, "seq")?;
        c.with(|ctx| Ok(ctx.seq_len(seq)))
    })
}

/// Keeps the first `len` tokens of `seq` and drops the rest (`len` >= the current length
/// changes nothing). The sequence's logits are gone until its next step.
#[no_mangle]
pub unsafe extern "C" fn xdan_seq_truncate(c: *mut xdan_context, seq: xdan_seq, len: u32) -> xdan_status {
    guard(|| {
        let c = context_ref(c)?;
        c.check_seq(seq, "seq")?;
        c.with(|ctx| ctx.seq_truncate(seq, len))
    })
}

/// Empties `seq` and releases its KV blocks.
#[no_mangle]
pub unsafe extern "C" fn xdan_seq_clear(c: *mut xdan_context, seq: xdan_seq) -> xdan_status {
    guard(|| {
        let c = context_ref(c)?;
        c.check_seq(seq, "seq")?;
        c.with(|ctx| ctx.seq_clear(seq))
    })
}

/// Makes `dst` a copy of `src` (its previous content is dropped): tokens, KV and logits. The
/// KV blocks are shared copy-on-write, so no KV memory is copied. `src == dst` is
/// `XDAN_E_INVALID_ARG`.
#[no_mangle]
pub unsafe extern "C" fn xdan_seq_fork(c: *mut xdan_context, src: xdan_seq, dst: xdan_seq) -> xdan_status {
    guard(|| {
        let c = context_ref(c)?;
        c.check_seq(src, "src")?;
        c.check_seq(dst, "dst")?;
        if src == dst {
            return Err(crate::Error::invalid_arg(format!("src and dst are both sequence {src}")));
        }
        c.with(|ctx| ctx.seq_fork(src, dst))
    })
}

/// Writes `seq` (its tokens and KV cache) to the file `path`, replacing it. `XDAN_E_IO` if the
/// file cannot be written.
#[no_mangle]
pub unsafe extern "C" fn xdan_seq_save(c: *mut xdan_context, seq: xdan_seq, path: *const c_char) -> xdan_status {
    guard(|| {
        let c = context_ref(c)?;
        let path = c_path(path, "path")?;
        c.check_seq(seq, "seq")?;
        c.with(|ctx| ctx.seq_save(seq, &path))
    })
}

/// Replaces `seq` with the state saved in `path` by `xdan_seq_save`. The file must come from
/// the same model (checked) and fit the context; otherwise nothing changes. `XDAN_E_IO`,
/// `XDAN_E_FORMAT` (not a state file, truncated, or another model), `XDAN_E_CONTEXT_FULL`.
#[no_mangle]
pub unsafe extern "C" fn xdan_seq_load(c: *mut xdan_context, seq: xdan_seq, path: *const c_char) -> xdan_status {
    guard(|| {
        let c = context_ref(c)?;
        let path = c_path(path, "path")?;
        c.check_seq(seq, "seq")?;
        c.with(|ctx| ctx.seq_load(seq, &path))
    })
}

/// KV-cache occupancy of a context. Set `size = sizeof(xdan_kv_stats)` before calling
/// `xdan_kv_stats_get`; only fields that fit in `size` are written.
#[repr(C)]
pub struct xdan_kv_stats {
    /// `sizeof(xdan_kv_stats)`, set by the caller.
    pub size: u32,
    /// Tokens the KV pool can hold over all sequences.
    pub capacity_tokens: u64,
    /// Token slots in use (a slot shared by forked sequences counts once).
    pub used_tokens: u64,
    /// Token slots used by more than one sequence (shared copy-on-write after a fork).
    pub shared_tokens: u64,
    /// Bytes of KV memory allocated.
    pub bytes: u64,
}

/// Writes the context's KV-cache statistics into `*out`; set `out->size` first.
#[no_mangle]
pub unsafe extern "C" fn xdan_kv_stats_get(c: *const xdan_context, out: *mut xdan_kv_stats) -> xdan_status {
    guard(|| {
        let c = context_ref(c)?;
        non_null_mut(out, "out")?;
        let size = struct_size(out as *const xdan_kv_stats, "out")?;
        let s = c.with(|ctx| Ok(ctx.kv_stats()))?;
        let base = out as *mut u8;
        type S = xdan_kv_stats;
        write_field(base, size, offset_of!(S, capacity_tokens), s.capacity_tokens);
        write_field(base, size, offset_of!(S, used_tokens), s.used_tokens);
        write_field(base, size, offset_of!(S, shared_tokens), s.shared_tokens);
        write_field(base, size, offset_of!(S, bytes), s.bytes);
        Ok(())
    })
}
