//! GGML block formats: the type table, one block struct per type, dequantization bit-exact with
//! llama.cpp (ggml's `to_float`), activation quantizers and the row·vector dot products the
//! matmuls use.
//!
//! # Dequantization
//! [`dequantize`] evaluates, per element, the same f32 expression in the same order as the
//! format's reference dequantizer, so results are bit-identical (checked against the fixtures
//! in `tests/data/quant`).
//!
//! # Dot products and the activation pairing
//! A weight row of type `ty` is dotted with activations already converted to
//! [`vec_dot_type`]`(ty)` by [`quantize_act`]:
//!
//! | weights | activations | note |
//! |---|---|---|
//! | F32, F16, BF16 | F32 | llama.cpp rounds activations to F16/BF16 here; keeping f32 is cheap and closer to exact |
//! | Q4_0, Q5_0, Q8_0, IQ4_NL, MXFP4 | Q8_0 | as llama.cpp |
//! | Q4_1, Q5_1 | Q8_1 | as llama.cpp (the block sum folds the minimum in) |
//! | Q2_K … Q6_K, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M, IQ4_XS | Q8_K | as llama.cpp |
//! | Q8_1 (weights) | Q8_0 | ggml has no Q8_1 weight dot; same math as Q8_0 |
//! | Q8_K (weights) | Q8_K | |
//!
//! Integer sums inside a block are exact; the only error beyond the weights' own quantization is
//! the activation rounding (half a step of the activation block scale per element, plus the f16
//! rounding of that scale for Q8_0/Q8_1 and of the block sum for Q8_1) and f32 accumulation
//! across blocks (the bound is spelled out in `tests/quant_dot.rs`).
//!
//! # Speed
//! On x86-64 with AVX2+FMA+F16C (detected once at run time) every weight type except Q8_1 and
//! Q8_K dots through an [`avx2`] kernel; the portable scalar kernels are always present
//! ([`vec_dot_scalar`]) and the tests check both agree. [`vec_dot_rows`] dots many rows with one
//! activation row; [`quantize_act_into`] quantizes into a reused buffer.
//!
//! # Quantizing weights
//! [`quantize_weights`] writes Q4_0 … Q8_0, Q4_K, Q5_K, Q6_K, IQ4_NL and IQ4_XS blocks from f32
//! (for tests and synthetic models; see [`quantize`]).

pub mod block;
pub mod float;
pub mod grids;
pub mod iq;
pub mod k_quants;
pub mod legacy;
pub mod mxfp4;
pub mod quantize;
pub mod synth;
pub mod types;
#[cfg(target_arch = "x86_64")]
pub mod avx2;

pub use quantize::{can_quantize, quantize_weights};
pub use synth::{can_randomize, random_weights};
pub use types::{GgmlType, TypeFacts, TYPE_FACTS};

use crate::error::{Error, Result};
use block::{as_blocks, as_blocks_mut, Block};
use iq::*;
use k_quants::*;
use legacy::*;
use mxfp4::*;

/// Whether [`dequantize`] and [`vec_dot`] handle `ty` (every type of the llama.cpp model
/// formats; not the integer tensor types, F64, or the ternary TQ types).
pub fn is_supported(ty: GgmlType) -> bool {
    use GgmlType::*;
    !matches!(ty, I8 | I16 | I32 | I64 | F64 | TQ1_0 | TQ2_0)
}

fn deq<B: Block>(src: &[u8], dst: &mut [f32], f: impl Fn(&B, &mut [f32])) {
    for (b, y) in as_blocks::<B>(src).iter().zip(dst.chunks_exact_mut(B::QK)) {
        f(b, y);
    }
}

/// Dequantizes whole blocks of `ty` in `src` into `dst` (one f32 per element).
///
/// `src.len()` must be exactly the bytes of `dst.len()` elements of `ty`, otherwise
/// `Err(InvalidArg)`; an unsupported type gives `Err(Unsupported)`.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    if !is_supported(ty) {
        return Err(Error::unsupported(format!("dequantize: tensor type {ty} is not supported")));
    }
    let n = dst.len();
    match ty.row_bytes(n as u64) {
        None => {
            return Err(Error::invalid_arg(format!(
                "dequantize: {n} elements is not a whole number of {ty} blocks ({} elements each)",
                ty.block_elems()
            )))
        }
        Some(b) if b != src.len() as u64 => {
            return Err(Error::invalid_arg(format!(
                "dequantize: {n} elements of {ty} take {b} bytes, got {}",
                src.len()
            )))
        }
        _ => {}
    }
    use GgmlType::*;
    match ty {
        F32 => float::dequantize_f32(src, dst),
        F16 => {
            #[cfg(target_arch = "x86_64")]
            if avx2::dequantize_f16(src, dst) {
                return Ok(());
            }
            float::dequantize_f16(src, dst)
        }
        BF16 => float::dequantize_bf16(src, dst),
        Q4_0 => deq(src, dst, BlockQ4_0::dequantize),
        Q4_1 => deq(src, dst, BlockQ4_1::dequantize),
        Q5_0 => deq(src, dst, BlockQ5_0::dequantize),
        Q5_1 => deq(src, dst, BlockQ5_1::dequantize),
        Q8_0 => deq(src, dst, BlockQ8_0::dequantize),
        Q8_1 => deq(src, dst, BlockQ8_1::dequantize),
        Q2_K => deq(src, dst, BlockQ2K::dequantize),
        Q3_K => deq(src, dst, BlockQ3K::dequantize),
        Q4_K => deq(src, dst, BlockQ4K::dequantize),
        Q5_K => deq(src, dst, BlockQ5K::dequantize),
        Q6_K => deq(src, dst, BlockQ6K::dequantize),
        Q8_K => deq(src, dst, BlockQ8K::dequantize),
        IQ2_XXS => deq(src, dst, BlockIQ2XXS::dequantize),
        IQ2_XS => deq(src, dst, BlockIQ2XS::dequantize),
        IQ2_S => deq(src, dst, BlockIQ2S::dequantize),
        IQ3_XXS => deq(src, dst, BlockIQ3XXS::dequantize),
        IQ3_S => deq(src, dst, BlockIQ3S::dequantize),
        IQ1_S => deq(src, dst, BlockIQ1S::dequantize),
        IQ1_M => deq(src, dst, BlockIQ1M::dequantize),
        IQ4_NL => deq(src, dst, BlockIQ4NL::dequantize),
        IQ4_XS => deq(src, dst, BlockIQ4XS::dequantize),
        MXFP4 => deq(src, dst, BlockMXFP4::dequantize),
        I8 | I16 | I32 | I64 | F64 | TQ1_0 | TQ2_0 => unreachable!("checked by is_supported"),
    }
    Ok(())
}

/// The activation format paired with weight type `ty` for [`vec_dot`] (table in the module docs).
/// Unsupported types map to F32 (and [`vec_dot`] refuses them).
pub fn vec_dot_type(ty: GgmlType) -> GgmlType {
    use GgmlType::*;
    match ty {
        F32 | F16 | BF16 => F32,
        Q4_0 | Q5_0 | Q8_0 | Q8_1 | IQ4_NL | MXFP4 => Q8_0,
        Q4_1 | Q5_1 => Q8_1,
        Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K | IQ2_XXS | IQ2_XS | IQ2_S | IQ3_XXS | IQ3_S
        | IQ1_S | IQ1_M | IQ4_XS => Q8_K,
        I8 | I16 | I32 | I64 | F64 | TQ1_0 | TQ2_0 => F32,
    }
}

/// Whether `ty` can be produced by [`quantize_act`].
pub fn is_act_type(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, F32 | F16 | BF16 | Q8_0 | Q8_1 | Q8_K)
}

/// Quantizes activations `x` (length a multiple of `act_ty`'s block) into `act_ty` blocks,
/// appended to `out`. `act_ty` is one of F32, F16, BF16, Q8_0, Q8_1, Q8_K.
pub fn quantize_act(act_ty: GgmlType, x: &[f32], out: &mut Vec<u8>) -> Result<()> {
    check_act(act_ty, x)?;
    let start = out.len();
    out.resize(start + x.len() / act_ty.block_elems() * act_ty.block_bytes(), 0);
    quantize_unchecked(act_ty, x, &mut out[start..]);
    Ok(())
}

fn check_act(act_ty: GgmlType, x: &[f32]) -> Result<()> {
    if !is_act_type(act_ty) {
        return Err(Error::invalid_arg(format!(
            "quantize_act: {act_ty} is not an activation type (F32, F16, BF16, Q8_0, Q8_1, Q8_K)"
        )));
    }
    let be = act_ty.block_elems();
    if x.len() % be != 0 {
        return Err(Error::invalid_arg(format!(
            "quantize_act: {} values is not a whole number of {act_ty} blocks ({be} each)",
            x.len()
        )));
    }
    Ok(())
}

fn quantize_unchecked(act_ty: GgmlType, x: &[f32], dst: &mut [u8]) {
    use GgmlType::*;
    match act_ty {
        F32 => {
            for (o, v) in dst.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        F16 => {
            for (o, v) in dst.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&half::f16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        BF16 => {
            for (o, v) in dst.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&float::f32_to_bf16(*v).to_le_bytes());
            }
        }
        Q8_0 => {
            for (b, v) in as_blocks_mut::<BlockQ8_0>(dst).iter_mut().zip(x.chunks_exact(32)) {
                *b = BlockQ8_0::quantize(v);
            }
        }
        Q8_1 => {
            for (b, v) in as_blocks_mut::<BlockQ8_1>(dst).iter_mut().zip(x.chunks_exact(32)) {
                *b = BlockQ8_1::quantize(v);
            }
        }
        Q8_K => {
            for (b, v) in as_blocks_mut::<BlockQ8K>(dst).iter_mut().zip(x.chunks_exact(256)) {
                *b = BlockQ8K::quantize(v);
            }
        }
        _ => unreachable!("checked by is_act_type"),
    }
}

/// [`quantize_act`] into a caller-provided slice of exactly the activation row's bytes (no
/// allocation; for per-token scratch buffers).
pub fn quantize_act_into(act_ty: GgmlType, x: &[f32], out: &mut [u8]) -> Result<()> {
    check_act(act_ty, x)?;
    let want = act_ty.row_bytes(x.len() as u64);
    if want != Some(out.len() as u64) {
        return Err(Error::invalid_arg(format!(
            "quantize_act_into: {} values as {act_ty} need {want:?} bytes, got {}",
            x.len(),
            out.len()
        )));
    }
    quantize_unchecked(act_ty, x, out);
    Ok(())
}

/// Bytes of `n` activations in `vec_dot_type(ty)`.
pub fn act_row_bytes(ty: GgmlType, n: usize) -> Option<usize> {
    vec_dot_type(ty).row_bytes(n as u64).map(|b| b as usize)
}

/// Checks the sizes of a dot: `n` whole blocks of `ty` and of its activation type, `w` and `act`
/// exactly one row each.
pub fn check_dot(ty: GgmlType, n: usize, w: &[u8], act: &[u8]) -> Result<()> {
    if !is_supported(ty) {
        return Err(Error::unsupported(format!("vec_dot: tensor type {ty} is not supported")));
    }
    let wb = ty.row_bytes(n as u64);
    let ab = act_row_bytes(ty, n);
    match (wb, ab) {
        (Some(wb), Some(ab)) if wb == w.len() as u64 && ab == act.len() => Ok(()),
        _ => Err(Error::invalid_arg(format!(
            "vec_dot: {n} elements of {ty}: weights {} bytes (want {:?}), activations {} bytes \
             of {} (want {:?})",
            w.len(),
            wb,
            act.len(),
            vec_dot_type(ty),
            ab
        ))),
    }
}

/// Dot product of one weight row (`n` elements of `ty`) with activations already in
/// [`vec_dot_type`]`(ty)`. Uses the SIMD kernels when the CPU has them.
///
/// # Panics
/// When the sizes do not match (see [`check_dot`]); callers validate shapes once, up front.
#[inline]
pub fn vec_dot(ty: GgmlType, n: usize, w: &[u8], act: &[u8]) -> f32 {
    if let Err(e) = check_dot(ty, n, w, act) {
        panic!("{}", e.message);
    }
    dot_unchecked(ty, n, w, act)
}

/// [`vec_dot`] once the sizes are known to match.
#[inline]
fn dot_unchecked(ty: GgmlType, n: usize, w: &[u8], act: &[u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(v) = avx2::vec_dot(ty, n, w, act) {
            return v;
        }
    }
    dot_scalar_unchecked(ty, n, w, act)
}

/// [`vec_dot`] restricted to the portable scalar kernels (the reference for the SIMD ones).
pub fn vec_dot_scalar(ty: GgmlType, n: usize, w: &[u8], act: &[u8]) -> f32 {
    if let Err(e) = check_dot(ty, n, w, act) {
        panic!("{}", e.message);
    }
    dot_scalar_unchecked(ty, n, w, act)
}

/// Dots several weight rows (`rows` consecutive rows of `n` elements in `w`) with the same
/// activations, writing `out[r]`.
pub fn vec_dot_rows(ty: GgmlType, n: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
    let rb = ty.row_bytes(n as u64).unwrap_or(0) as usize;
    assert!(
        rb > 0 && w.len() == rb * out.len(),
        "vec_dot_rows: {} rows of {n} {ty} need {} bytes, got {}",
        out.len(),
        rb * out.len(),
        w.len()
    );
    // Every row has the same size: one check for all of them.
    if let Err(e) = check_dot(ty, n, &w[..rb], act) {
        panic!("{}", e.message);
    }
    rows_unchecked(ty, n, rb, w, act, out);
}

/// [`vec_dot_rows`] once the sizes are known to match: the SIMD rows kernel, else row by row.
fn rows_unchecked(ty: GgmlType, n: usize, rb: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2::vec_dot_rows(ty, rb, w, act, out) {
        return;
    }
    for (o, row) in out.iter_mut().zip(w.chunks_exact(rb)) {
        *o = dot_unchecked(ty, n, row, act);
    }
}

/// Weight rows (`w`: whole rows of `n` elements of `ty`) against `n_tok` activation rows
/// (`acts`: `n_tok` rows of [`vec_dot_type`]`(ty)`), `out[row * n_tok + t]`: each value is
/// [`vec_dot`]'s for that row and token, bit for bit, computed with the weights decoded once
/// for several tokens where a kernel does that.
pub fn vec_dot_rows_tokens(ty: GgmlType, n: usize, w: &[u8], acts: &[u8], n_tok: usize, out: &mut [f32]) {
    let rb = ty.row_bytes(n as u64).unwrap_or(0) as usize;
    let arb = act_row_bytes(ty, n).unwrap_or(0);
    let rows = if rb > 0 { w.len() / rb } else { 0 };
    assert!(
        rb > 0 && w.len() == rb * rows && acts.len() == arb * n_tok && out.len() == rows * n_tok,
        "vec_dot_rows_tokens: {rows} rows x {n_tok} tokens of {n} {ty}: {} weight bytes, {} activation bytes, {} outputs",
        w.len(),
        acts.len(),
        out.len()
    );
    if rows == 0 || n_tok == 0 {
        return;
    }
    if let Err(e) = check_dot(ty, n, &w[..rb], &acts[..arb]) {
        panic!("{}", e.message);
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::vec_dot_rows_tokens(ty, rb, w, acts, arb, n_tok, out) {
        return;
    }
    // Otherwise token by token over bands of 16 rows (the rows path of `vec_dot_rows`).
    let mut tmp = [0f32; 16];
    for (bi, band) in w.chunks(16 * rb).enumerate() {
        let nr = band.len() / rb;
        for (t, act) in acts.chunks_exact(arb).enumerate() {
            let col = &mut tmp[..nr];
            rows_unchecked(ty, n, rb, band, act, col);
            for (j, &v) in col.iter().enumerate() {
                out[(16 * bi + j) * n_tok + t] = v;
            }
        }
    }
}

fn dot_scalar_unchecked(ty: GgmlType, n: usize, w: &[u8], act: &[u8]) -> f32 {
    use GgmlType::*;
    match ty {
        F32 => float::dot_f32_f32(n, w, act),
        F16 => float::dot_f16_f32(n, w, act),
        BF16 => float::dot_bf16_f32(n, w, act),
        Q4_0 => dot_q4_0_q8_0(as_blocks(w), as_blocks(act)),
        Q4_1 => dot_q4_1_q8_1(as_blocks(w), as_blocks(act)),
        Q5_0 => dot_q5_0_q8_0(as_blocks(w), as_blocks(act)),
        Q5_1 => dot_q5_1_q8_1(as_blocks(w), as_blocks(act)),
        Q8_0 => dot_q8_0_q8_0(as_blocks(w), as_blocks(act)),
        Q8_1 => dot_q8_1_q8_0(as_blocks(w), as_blocks(act)),
        Q2_K => dot_q2_k_q8_k(as_blocks(w), as_blocks(act)),
        Q3_K => dot_q3_k_q8_k(as_blocks(w), as_blocks(act)),
        Q4_K => dot_q4_k_q8_k(as_blocks(w), as_blocks(act)),
        Q5_K => dot_q5_k_q8_k(as_blocks(w), as_blocks(act)),
        Q6_K => dot_q6_k_q8_k(as_blocks(w), as_blocks(act)),
        Q8_K => dot_q8_k_q8_k(as_blocks(w), as_blocks(act)),
        IQ2_XXS => dot_iq2_xxs_q8_k(as_blocks(w), as_blocks(act)),
        IQ2_XS => dot_iq2_xs_q8_k(as_blocks(w), as_blocks(act)),
        IQ2_S => dot_iq2_s_q8_k(as_blocks(w), as_blocks(act)),
        IQ3_XXS => dot_iq3_xxs_q8_k(as_blocks(w), as_blocks(act)),
        IQ3_S => dot_iq3_s_q8_k(as_blocks(w), as_blocks(act)),
        IQ1_S => dot_iq1_s_q8_k(as_blocks(w), as_blocks(act)),
        IQ1_M => dot_iq1_m_q8_k(as_blocks(w), as_blocks(act)),
        IQ4_NL => dot_iq4_nl_q8_0(as_blocks(w), as_blocks(act)),
        IQ4_XS => dot_iq4_xs_q8_k(as_blocks(w), as_blocks(act)),
        MXFP4 => dot_mxfp4_q8_0(as_blocks(w), as_blocks(act)),
        I8 | I16 | I32 | I64 | F64 | TQ1_0 | TQ2_0 => unreachable!("checked by check_dot"),
    }
}
