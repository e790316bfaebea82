//! The CPU backend's view of the block formats, all from `crate::quant`: which type an
//! activation row is converted to for a weight type, converting it, the row·activation dot, and
//! dequantizing a row. Kept in one place so the matmuls name no format.

use crate::error::{Error, Result};
use crate::quant::{self, GgmlType};

/// Views f32s as their bytes (always sound: u8 has no alignment or validity constraints).
pub fn f32_bytes(x: &[f32]) -> &[u8] {
    // SAFETY: any f32 bit pattern is valid bytes; the length covers the same memory.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u8, x.len() * 4) }
}

/// Reads little-endian f32s from bytes, borrowing when aligned (GGUF data is 32-aligned).
pub fn as_f32(b: &[u8]) -> std::borrow::Cow<'_, [f32]> {
    // SAFETY: f32 has no invalid bit patterns; align_to only returns an aligned middle part.
    let (pre, mid, post) = unsafe { b.align_to::<f32>() };
    if pre.is_empty() && post.is_empty() {
        std::borrow::Cow::Borrowed(mid)
    } else {
        std::borrow::Cow::Owned(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}

/// The type activations are converted to before a dot with a row of `w` (llama.cpp's pairing
/// for quantized weights; f32 for float weights).
pub fn act_type(w: GgmlType) -> GgmlType {
    quant::vec_dot_type(w)
}

/// Whether the engine can multiply with (and dequantize) weights of type `w`.
pub fn supported(w: GgmlType) -> bool {
    quant::is_supported(w)
}

/// Bytes of one activation row of `n` elements in type `a`.
pub fn act_row_bytes(a: GgmlType, n: usize) -> usize {
    a.row_bytes(n as u64).unwrap_or(0) as usize
}

/// Converts one activation row to type `a` (see [`act_type`]); `out` is exactly its bytes.
pub fn quantize_act(a: GgmlType, x: &[f32], out: &mut [u8]) {
    match a {
        GgmlType::Q8_0 => q8_x86(x, out, 34, false),
        GgmlType::Q8_1 => q8_x86(x, out, 36, true),
        // Shapes are checked at load (every row length is whole blocks), so this cannot fail.
        _ => quant::quantize_act_into(a, x, out).expect("activation row sizes are checked at load"),
    }
}

/// Q8_0 / Q8_1 activation blocks as llama.cpp's CPU backend makes them on x86 (its SIMD
/// quantizer, not the reference one): scale 127 / amax, round half to even. The two differ on
/// rare values, and a real model turns one such code into visible logit differences.
/// Layout: d (f16) [, s = d * sum(q) (f16)], 32 signed codes.
fn q8_x86(x: &[f32], out: &mut [u8], block_bytes: usize, with_sum: bool) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.1") {
        // SAFETY: the CPU has SSE4.1 (checked just above).
        return unsafe { q8_sse41(x, out, block_bytes, with_sum) };
    }
    q8_generic(x, out, block_bytes, with_sum)
}

/// The same code with SSE4.1, where rounding to even is one instruction, not a libm call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.1")]
unsafe fn q8_sse41(x: &[f32], out: &mut [u8], block_bytes: usize, with_sum: bool) {
    q8_generic(x, out, block_bytes, with_sum)
}

#[inline(always)]
fn q8_generic(x: &[f32], out: &mut [u8], block_bytes: usize, with_sum: bool) {
    let off = if with_sum { 4 } else { 2 };
    for (v, o) in x.chunks_exact(32).zip(out.chunks_exact_mut(block_bytes)) {
        let amax = v.iter().fold(0.0f32, |m, &y| m.max(y.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &y) in o[off..].iter_mut().zip(v) {
            let r = (y * id).round_ties_even() as i32;
            sum += r;
            *q = r as i8 as u8;
        }
        o[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
        if with_sum {
            o[2..4].copy_from_slice(&half::f16::from_f32(d * sum as f32).to_le_bytes());
        }
    }
}

/// Dots rows `w` with `n_tok` activation rows, `out[row * n_tok + t]` (see
/// [`quant::vec_dot_rows_tokens`]).
#[inline]
pub fn dot_rows_tokens(ty: GgmlType, n: usize, w: &[u8], acts: &[u8], n_tok: usize, out: &mut [f32]) {
    quant::vec_dot_rows_tokens(ty, n, w, acts, n_tok, out)
}

/// Dots rows `w` (consecutive rows of `n` elements of type `ty`) with one activation row.
#[inline]
pub fn dot_rows(ty: GgmlType, n: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
    quant::vec_dot_rows(ty, n, w, act, out)
}

/// Dot of a weight row of type `w` (n elements) with an activation row made by [`quantize_act`].
#[inline]
pub fn dot(w: GgmlType, n: usize, wrow: &[u8], act: &[u8]) -> f32 {
    quant::vec_dot(w, n, wrow, act)
}

/// Dequantizes one row (`out.len()` elements) of type `ty`.
pub fn dequant_row(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<()> {
    quant::dequantize(ty, data, out).map_err(|e| Error::internal(format!("dequantize {ty}: {}", e.message)))
}
