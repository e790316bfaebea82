//! Weight quantizers: f32 rows to block formats, for tests and synthetic (benchmark) models.
//!
//! Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 follow ggml's reference quantizers. Q4_K, Q5_K, Q6_K,
//! IQ4_NL and IQ4_XS use a plain min/max scale choice (no error-minimising search, no
//! importance matrix): valid blocks of the format, close to but not the bytes llama-quantize
//! writes. The lattice types (IQ1/IQ2/IQ3), Q2_K and Q3_K have no quantizer here.

use super::block::{as_blocks_mut, f16_to_f32, f32_to_f16, nearest_int, Block};
use super::grids::KVALUES_IQ4NL;
use super::iq::{BlockIQ4NL, BlockIQ4XS};
use super::k_quants::{BlockQ4K, BlockQ5K, BlockQ6K};
use super::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1};
use super::GgmlType;
use crate::error::{Error, Result};

/// Whether [`quantize_weights`] can produce `ty`.
pub fn can_quantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q4_K | Q5_K | Q6_K | IQ4_NL | IQ4_XS
    )
}

/// Quantizes `x` (a whole number of `ty` blocks) to `ty`, appending the blocks to `out`.
pub fn quantize_weights(ty: GgmlType, x: &[f32], out: &mut Vec<u8>) -> Result<()> {
    use GgmlType::*;
    if !can_quantize(ty) {
        return Err(Error::unsupported(format!("quantize_weights: no quantizer for {ty}")));
    }
    if matches!(ty, F32 | F16 | BF16 | Q8_0) {
        return super::quantize_act(ty, x, out);
    }
    let be = ty.block_elems();
    if x.len() % be != 0 {
        return Err(Error::invalid_arg(format!(
            "quantize_weights: {} values is not a whole number of {ty} blocks ({be} each)",
            x.len()
        )));
    }
    let start = out.len();
    out.resize(start + x.len() / be * ty.block_bytes(), 0);
    let dst = &mut out[start..];
    match ty {
        Q4_0 => each(dst, x, q4_0),
        Q4_1 => each(dst, x, q4_1),
        Q5_0 => each(dst, x, q5_0),
        Q5_1 => each(dst, x, q5_1),
        Q4_K => each(dst, x, q4_k),
        Q5_K => each(dst, x, q5_k),
        Q6_K => each(dst, x, q6_k),
        IQ4_NL => each(dst, x, iq4_nl),
        IQ4_XS => each(dst, x, iq4_xs),
        _ => unreachable!("checked by can_quantize"),
    }
    Ok(())
}

fn each<B: Block>(dst: &mut [u8], x: &[f32], f: impl Fn(&[f32], &mut B)) {
    for (b, v) in as_blocks_mut::<B>(dst).iter_mut().zip(x.chunks_exact(B::QK)) {
        f(v, b);
    }
}

/// The value of largest magnitude (keeping its sign), and that magnitude.
fn signed_max(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (max, amax)
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)))
}

fn q4_0(x: &[f32], b: &mut BlockQ4_0) {
    let (max, _) = signed_max(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    b.d = f32_to_f16(d);
    for j in 0..16 {
        let x0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
        let x1 = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
        b.qs[j] = x0 | (x1 << 4);
    }
}

fn q4_1(x: &[f32], b: &mut BlockQ4_1) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    b.d = f32_to_f16(d);
    b.m = f32_to_f16(min);
    for j in 0..16 {
        let x0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let x1 = (((x[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
        b.qs[j] = x0 | (x1 << 4);
    }
}

fn pack5(q: &[u8; 32], qs: &mut [u8; 16], qh: &mut [u8; 4]) {
    let mut h = 0u32;
    for j in 0..16 {
        qs[j] = (q[j] & 0xf) | ((q[j + 16] & 0xf) << 4);
        h |= (((q[j] >> 4) & 1) as u32) << j;
        h |= (((q[j + 16] >> 4) & 1) as u32) << (j + 16);
    }
    *qh = h.to_le_bytes();
}

fn q5_0(x: &[f32], b: &mut BlockQ5_0) {
    let (max, _) = signed_max(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    b.d = f32_to_f16(d);
    let mut q = [0u8; 32];
    for j in 0..32 {
        q[j] = ((x[j] * id + 16.5) as i8).min(31) as u8;
    }
    pack5(&q, &mut b.qs, &mut b.qh);
}

fn q5_1(x: &[f32], b: &mut BlockQ5_1) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    b.d = f32_to_f16(d);
    b.m = f32_to_f16(min);
    let mut q = [0u8; 32];
    for j in 0..32 {
        q[j] = (((x[j] - min) * id + 0.5) as i8).min(31) as u8;
    }
    pack5(&q, &mut b.qs, &mut b.qh);
}

/// Per group of 32: (scale, −min) with min ≤ 0, for `nmax` levels; then 6-bit codes against
/// the block's f16 super-scales. Returns the packed 12 scale bytes, d, dmin and the codes.
fn kquant_asym(x: &[f32], nmax: i32) -> ([u8; 12], [u8; 2], [u8; 2], [u8; 256]) {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for g in 0..8 {
        let (mn, mx) = min_max(&x[32 * g..32 * g + 32]);
        let mn = mn.min(0.0);
        scales[g] = (mx - mn) / nmax as f32;
        mins[g] = -mn;
    }
    let max_scale = scales.iter().fold(0f32, |a, &v| a.max(v));
    let max_min = mins.iter().fold(0f32, |a, &v| a.max(v));
    let d = f32_to_f16(max_scale / 63.0);
    let dmin = f32_to_f16(max_min / 63.0);
    let (df, dminf) = (f16_to_f32(d), f16_to_f32(dmin));
    // Round the 6-bit scales up so each group's range stays covered.
    let code =
        |v: f32, s: f32| if s > 0.0 { ((v / s).ceil() as i32).clamp(0, 63) as u8 } else { 0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for g in 0..8 {
        ls[g] = code(scales[g], df);
        lm[g] = code(mins[g], dminf);
    }
    let mut packed = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            packed[j] = ls[j];
            packed[j + 4] = lm[j];
        } else {
            packed[j + 4] = (ls[j] & 0xf) | ((lm[j] & 0xf) << 4);
            packed[j - 4] |= (ls[j] >> 4) << 6;
            packed[j] |= (lm[j] >> 4) << 6;
        }
    }
    let mut l = [0u8; 256];
    for g in 0..8 {
        let dd = df * ls[g] as f32;
        let dm = dminf * lm[g] as f32;
        for i in 0..32 {
            let v = x[32 * g + i];
            l[32 * g + i] =
                if dd > 0.0 { nearest_int((v + dm) / dd).clamp(0, nmax) as u8 } else { 0 };
        }
    }
    (packed, d, dmin, l)
}

fn q4_k(x: &[f32], b: &mut BlockQ4K) {
    let (scales, d, dmin, l) = kquant_asym(x, 15);
    b.scales = scales;
    b.d = d;
    b.dmin = dmin;
    for c in 0..4 {
        for i in 0..32 {
            b.qs[32 * c + i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
        }
    }
}

fn q5_k(x: &[f32], b: &mut BlockQ5K) {
    let (scales, d, dmin, l) = kquant_asym(x, 31);
    b.scales = scales;
    b.d = d;
    b.dmin = dmin;
    b.qh = [0; 32];
    for c in 0..4 {
        let (m1, m2) = (1u8 << (2 * c), 2u8 << (2 * c));
        for i in 0..32 {
            let (mut l1, mut l2) = (l[64 * c + i], l[64 * c + 32 + i]);
            if l1 > 15 {
                l1 -= 16;
                b.qh[i] |= m1;
            }
            if l2 > 15 {
                l2 -= 16;
                b.qh[i] |= m2;
            }
            b.qs[32 * c + i] = l1 | (l2 << 4);
        }
    }
}

fn q6_k(x: &[f32], b: &mut BlockQ6K) {
    let mut sc = [0f32; 16];
    for g in 0..16 {
        let (max, _) = signed_max(&x[16 * g..16 * g + 16]);
        // Map the largest magnitude to −32 (the end of the range with the extra level).
        sc[g] = max / -32.0;
    }
    let (_, amax) = signed_max(&sc);
    let d = f32_to_f16(amax / 127.0);
    let df = f16_to_f32(d);
    b.d = d;
    let mut l = [0u8; 256];
    for g in 0..16 {
        let s = if df > 0.0 { away(sc[g] / df).clamp(-127, 127) } else { 0 };
        b.scales[g] = s as i8 as u8;
        let dd = df * s as f32;
        for i in 0..16 {
            let v = x[16 * g + i];
            l[16 * g + i] =
                if dd != 0.0 { (nearest_int(v / dd).clamp(-32, 31) + 32) as u8 } else { 32 };
        }
    }
    for n in 0..2 {
        for i in 0..32 {
            let o = 128 * n;
            let (a, bq, c, e) = (l[o + i], l[o + i + 32], l[o + i + 64], l[o + i + 96]);
            b.ql[64 * n + i] = (a & 0xf) | ((c & 0xf) << 4);
            b.ql[64 * n + i + 32] = (bq & 0xf) | ((e & 0xf) << 4);
            b.qh[32 * n + i] = (a >> 4) | ((bq >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
        }
    }
}

/// Rounds away from zero, so a group's scale never shrinks below what its range needs.
fn away(v: f32) -> i32 {
    if v >= 0.0 {
        v.ceil() as i32
    } else {
        -((-v).ceil() as i32)
    }
}

/// Index of the IQ4 level nearest to `v` (in units of the block scale).
fn nearest_iq4(v: f32) -> u8 {
    let mut best = 0;
    for k in 1..16 {
        if (KVALUES_IQ4NL[k] as f32 - v).abs() < (KVALUES_IQ4NL[best] as f32 - v).abs() {
            best = k;
        }
    }
    best as u8
}

fn iq4_nl(x: &[f32], b: &mut BlockIQ4NL) {
    let (max, _) = signed_max(x);
    b.d = f32_to_f16(max / -127.0);
    let d = f16_to_f32(b.d);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for j in 0..16 {
        b.qs[j] = nearest_iq4(x[j] * id) | (nearest_iq4(x[j + 16] * id) << 4);
    }
}

fn iq4_xs(x: &[f32], b: &mut BlockIQ4XS) {
    let mut dg = [0f32; 8];
    for g in 0..8 {
        dg[g] = signed_max(&x[32 * g..32 * g + 32]).0 / -127.0;
    }
    let (_, amax) = signed_max(&dg);
    b.d = f32_to_f16(amax / 31.0);
    let d = f16_to_f32(b.d);
    let mut sh = 0u16;
    b.scales_l = [0; 4];
    for g in 0..8 {
        let ls = if d > 0.0 { away(dg[g] / d).clamp(-32, 31) } else { 0 };
        let u = (ls + 32) as u16;
        b.scales_l[g / 2] |= ((u & 0xf) as u8) << (4 * (g % 2));
        sh |= (u >> 4) << (2 * g);
        let dl = d * ls as f32;
        let id = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        for j in 0..16 {
            let (a, c) = (x[32 * g + j], x[32 * g + j + 16]);
            b.qs[16 * g + j] = nearest_iq4(a * id) | (nearest_iq4(c * id) << 4);
        }
    }
    b.scales_h = sh.to_le_bytes();
}
