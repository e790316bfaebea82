//! The CPU backend's view of the block formats: which type an activation row is quantized to
//! for a weight type, quantizing it, the row·activation dot, and dequantizing a row.
//!
//! F32/F16/BF16 weights are handled here (activations rounded to F16/BF16 as llama.cpp does);
//! every block-quantized type goes through `crate::quant`.

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::quant::GgmlType;
use super::qfallback;

/// Views f32s as their bytes (always sound: u8 has no alignment or validity constraints).
pub fn f32_bytes(x: &[f32]) -> &[u8] {
    // SAFETY: any f32 bit pattern is valid bytes; the length covers the same memory.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u8, x.len() * 4) }
}

pub fn f32_bytes_mut(x: &mut [f32]) -> &mut [u8] {
    // SAFETY: as above; u8 writes may produce any f32 bit pattern, all of which are valid.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut u8, x.len() * 4) }
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

/// The type activations are converted to before a dot with a row of `w`.
pub fn act_type(w: GgmlType) -> GgmlType {
    match w {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => w,
        _ => qfallback::vec_dot_type(w),
    }
}

/// Whether the engine can multiply with weights of type `w`.
pub fn supported(w: GgmlType) -> bool {
    matches!(w, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) || qfallback::vec_dot_supported(w)
}

/// Bytes of one activation row of `n` elements in type `a`.
pub fn act_row_bytes(a: GgmlType, n: usize) -> usize {
    a.row_bytes(n as u64).unwrap_or(0) as usize
}

/// Converts one activation row to type `a` (see [`act_type`]).
pub fn quantize_act(a: GgmlType, x: &[f32], out: &mut [u8]) {
    match a {
        GgmlType::F32 => out.copy_from_slice(f32_bytes(x)),
        GgmlType::F16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&bf16::from_f32(*v).to_le_bytes());
            }
        }
        _ => qfallback::quantize_act(a, x, out),
    }
}

/// Dot of a weight row of type `w` (n elements) with an activation row made by [`quantize_act`].
#[inline]
pub fn dot(w: GgmlType, n: usize, wrow: &[u8], act: &[u8]) -> f32 {
    match w {
        GgmlType::F32 => {
            let a = as_f32(act);
            let b = as_f32(wrow);
            dot_f32(&a[..n], &b[..n])
        }
        GgmlType::F16 => {
            let mut s = 0.0f32;
            for (x, y) in wrow.chunks_exact(2).zip(act.chunks_exact(2)) {
                s += f16::from_le_bytes([x[0], x[1]]).to_f32() * f16::from_le_bytes([y[0], y[1]]).to_f32();
            }
            s
        }
        GgmlType::BF16 => {
            let mut s = 0.0f32;
            for (x, y) in wrow.chunks_exact(2).zip(act.chunks_exact(2)) {
                s += bf16::from_le_bytes([x[0], x[1]]).to_f32() * bf16::from_le_bytes([y[0], y[1]]).to_f32();
            }
            s
        }
        _ => qfallback::vec_dot(w, n, wrow, act),
    }
}

/// f32 dot with 8 independent accumulators (lets the compiler vectorise it).
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Dequantizes one row (`out.len()` elements) of type `ty`.
pub fn dequant_row(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<()> {
    match ty {
        GgmlType::F32 => out.copy_from_slice(&as_f32(data)[..out.len()]),
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        _ => qfallback::dequantize(ty, data, out)
            .map_err(|e| Error::unsupported(format!("cannot dequantize {ty}: {}", e.message)))?,
    }
    Ok(())
}
