//! AVX2/FMA dot kernels for the hot weight types, selected at run time.
//!
//! Same math as the scalar kernels (exact integer sums inside a block, f32 across blocks); only
//! the f32 summation order differs. The tests compare every kernel with its scalar twin.

use std::arch::x86_64::*;
use std::sync::atomic::{AtomicU8, Ordering};

use super::block::{as_blocks, f16_lut, Block};
use super::grids::{
    IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS,
    KVALUES_IQ4NL, KVALUES_MXFP4,
};
use super::iq::{
    BlockIQ1M, BlockIQ1S, BlockIQ2S, BlockIQ2XS, BlockIQ2XXS, BlockIQ3S, BlockIQ3XXS, BlockIQ4NL,
    BlockIQ4XS,
};
use super::k_quants::{
    q3k_scale_words, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K,
};
use super::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1};
use super::mxfp4::{e8m0_to_f32_half, BlockMXFP4};
use super::GgmlType;

mod prompt;
pub use prompt::vec_dot_rows_tokens;

static HAVE: AtomicU8 = AtomicU8::new(0); // 0 unknown, 1 no, 2 yes

/// Whether this CPU runs the AVX2 kernels (AVX2, FMA and F16C).
#[inline]
pub fn available() -> bool {
    match HAVE.load(Ordering::Relaxed) {
        2 => true,
        1 => false,
        _ => {
            let ok = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            HAVE.store(if ok { 2 } else { 1 }, Ordering::Relaxed);
            ok
        }
    }
}

/// The weight types with an AVX2 kernel: the float types and every block type with a rows kernel.
pub fn has_kernel(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) || rows_kernel(ty).is_some()
}

/// Several weight rows (`rb` bytes each) against one activation row, the kernel inlined into
/// the loop over rows: a decode step's rows are short (a few hundred values), so a dispatch per
/// row would cost a good share of the dot itself.
macro_rules! dot_rows_fn {
    ($($name:ident => $dot:ident),* $(,)?) => {$(
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name(rb: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
            let a = as_blocks(act);
            for (o, row) in out.iter_mut().zip(w.chunks_exact(rb)) {
                *o = $dot(as_blocks(row), a);
            }
        }
    )*};
}

dot_rows_fn!(
    rows_q4_0 => dot_q4_0, rows_q4_1 => dot_q4_1, rows_q5_0 => dot_q5_0, rows_q5_1 => dot_q5_1,
    rows_q8_0 => dot_q8_0, rows_q2_k => dot_q2_k, rows_q3_k => dot_q3_k, rows_q4_k => dot_q4_k,
    rows_q5_k => dot_q5_k, rows_q6_k => dot_q6_k, rows_iq1_s => dot_iq1_s, rows_iq1_m => dot_iq1_m,
    rows_iq2_xxs => dot_iq2_xxs, rows_iq2_xs => dot_iq2_xs, rows_iq2_s => dot_iq2_s,
    rows_iq3_xxs => dot_iq3_xxs, rows_iq3_s => dot_iq3_s, rows_iq4_nl => dot_iq4_nl,
    rows_iq4_xs => dot_iq4_xs, rows_mxfp4 => dot_mxfp4,
);

/// The rows kernel of a block type (every type with a kernel here but the float ones).
type RowsFn = unsafe fn(usize, &[u8], &[u8], &mut [f32]);

fn rows_kernel(ty: GgmlType) -> Option<RowsFn> {
    use GgmlType::*;
    Some(match ty {
        Q4_0 => rows_q4_0,
        Q4_1 => rows_q4_1,
        Q5_0 => rows_q5_0,
        Q5_1 => rows_q5_1,
        Q8_0 => rows_q8_0,
        Q2_K => rows_q2_k,
        Q3_K => rows_q3_k,
        Q4_K => rows_q4_k,
        Q5_K => rows_q5_k,
        Q6_K => rows_q6_k,
        IQ1_S => rows_iq1_s,
        IQ1_M => rows_iq1_m,
        IQ2_XXS => rows_iq2_xxs,
        IQ2_XS => rows_iq2_xs,
        IQ2_S => rows_iq2_s,
        IQ3_XXS => rows_iq3_xxs,
        IQ3_S => rows_iq3_s,
        IQ4_NL => rows_iq4_nl,
        IQ4_XS => rows_iq4_xs,
        MXFP4 => rows_mxfp4,
        _ => return None,
    })
}

/// [`vec_dot`] over consecutive rows of `rb` bytes into `out`; false when there is no such
/// kernel here (the caller goes row by row). Sizes are already checked by the caller.
pub fn vec_dot_rows(ty: GgmlType, rb: usize, w: &[u8], act: &[u8], out: &mut [f32]) -> bool {
    let Some(f) = rows_kernel(ty).filter(|_| available()) else { return false };
    // SAFETY: the CPU features were checked above; the block views come from checked sizes.
    unsafe { f(rb, w, act, out) };
    true
}

/// The AVX2 dot for `ty`, or `None` when the CPU lacks AVX2/FMA/F16C or `ty` has no kernel.
/// Sizes are already checked by the caller.
#[inline]
pub fn vec_dot(ty: GgmlType, n: usize, w: &[u8], act: &[u8]) -> Option<f32> {
    if !available() {
        return None;
    }
    use GgmlType::*;
    // SAFETY: the CPU features were checked above; the block views come from checked sizes.
    unsafe {
        Some(match ty {
            F32 => dot_f32(n, w, act),
            F16 => dot_f16(n, w, act),
            BF16 => dot_bf16(n, w, act),
            // A block type: its rows kernel over this one row.
            _ => {
                let mut o = [0f32];
                rows_kernel(ty)?(w.len(), w, act, &mut o);
                o[0]
            }
        })
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_ps(x: __m256) -> f32 {
    let mut r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r)
}

/// f16 bytes to f32 (exact) by a table lookup: one load, where the F16C conversion costs two
/// instructions on the shuffle port and, for the 32-weight blocks, a good part of a block's time.
#[inline(always)]
fn h2f(b: [u8; 2]) -> f32 {
    f16_lut(b)
}

/// The sum of the 4 i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn hsum_epi32(v: __m128i) -> i32 {
    let v = _mm_hadd_epi32(v, v);
    _mm_cvtsi128_si32(_mm_hadd_epi32(v, v))
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn loadu(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// Little-endian words read in one load (the compiler assembled `from_le_bytes` of four slice
/// elements from four byte loads in some kernels' inner loops).
#[inline(always)]
unsafe fn rd_u16(p: *const u8) -> u16 {
    (p as *const u16).read_unaligned()
}

#[inline(always)]
unsafe fn rd_u32(p: *const u8) -> u32 {
    (p as *const u32).read_unaligned()
}

/// 16 bytes of nibbles to 32 bytes: low nibbles in the lower half, high nibbles in the upper.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn nibbles32(p: *const u8) -> __m256i {
    let t = _mm_loadu_si128(p as *const __m128i);
    let v = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    _mm256_and_si256(v, _mm256_set1_epi8(0x0f))
}

/// Σ pairs of signed bytes x·y as 8 i32 lanes (sign trick: |x| unsigned times y with x's sign).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn dot_i8_i32(x: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(mul_i8_pairs(x, y), _mm256_set1_epi16(1))
}

/// Σ pairs of signed bytes x·y as 16 i16 lanes: [`dot_i8_i32`] before its pairs are summed
/// (|x| · |y| summed in pairs must fit an i16).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn mul_i8_pairs(x: __m256i, y: __m256i) -> __m256i {
    _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

/// Σ pairs of unsigned x times signed y as 8 i32 lanes (x ≤ 127 or products small enough).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn dot_u8_i8_i32(x: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
}

/// Q4_0's 32 weights as signed bytes (nibble − 8).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q4_0_bytes(bx: &BlockQ4_0) -> __m256i {
    _mm256_sub_epi8(nibbles32(bx.qs.as_ptr()), _mm256_set1_epi8(8))
}

/// Q5_0's 32 weights as signed bytes: a clear 5th bit turns the nibble into nibble − 16
/// (0xF0 | nibble as i8).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q5_0_bytes(bx: &BlockQ5_0) -> __m256i {
    let hi = _mm256_andnot_si256(bytes_from_bits(u32::from_le_bytes(bx.qh)), _mm256_set1_epi8(0xF0u8 as i8));
    _mm256_or_si256(nibbles32(bx.qs.as_ptr()), hi)
}

/// Q5_1's 32 weights as unsigned bytes (0..31).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q5_1_bytes(bx: &BlockQ5_1) -> __m256i {
    let hi = _mm256_and_si256(bytes_from_bits(u32::from_le_bytes(bx.qh)), _mm256_set1_epi8(0x10));
    _mm256_or_si256(nibbles32(bx.qs.as_ptr()), hi)
}

/// 32 nibbles (low nibbles first, then high) looked up in the 16 signed bytes `values` (IQ4_NL's
/// and MXFP4's code books).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn lut_bytes(qs: &[u8; 16], values: __m128i) -> __m256i {
    let m4 = _mm_set1_epi8(0x0f);
    let q = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
    let lo = _mm_shuffle_epi8(values, _mm_and_si128(q, m4));
    let hi = _mm_shuffle_epi8(values, _mm_and_si128(_mm_srli_epi16(q, 4), m4));
    _mm256_set_m128i(hi, lo)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr() as *const f32, a.as_ptr() as *const f32);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for k in 0..4 {
            let x = _mm256_loadu_ps(pw.add(i + 8 * k));
            let y = _mm256_loadu_ps(pa.add(i + 8 * k));
            acc[k] = _mm256_fmadd_ps(x, y, acc[k]);
        }
        i += 32;
    }
    let mut s =
        hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    while i < n {
        s += pw.add(i).read_unaligned() * pa.add(i).read_unaligned();
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr(), a.as_ptr() as *const f32);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for k in 0..4 {
            let h = _mm_loadu_si128(pw.add(2 * (i + 8 * k)) as *const __m128i);
            let x = _mm256_cvtph_ps(h);
            let y = _mm256_loadu_ps(pa.add(i + 8 * k));
            acc[k] = _mm256_fmadd_ps(x, y, acc[k]);
        }
        i += 32;
    }
    let mut s =
        hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    while i < n {
        let h = u16::from_le_bytes([w[2 * i], w[2 * i + 1]]);
        s += half::f16::from_bits(h).to_f32() * pa.add(i).read_unaligned();
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y) {
        let d = _mm256_set1_ps(h2f(bx.d) * h2f(by.d));
        let p = dot_i8_i32(loadu(bx.qs.as_ptr()), loadu(by.qs.as_ptr()));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    hsum_ps(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y) {
        let d = _mm256_set1_ps(h2f(bx.d) * h2f(by.d));
        let p = dot_i8_i32(q4_0_bytes(bx), loadu(by.qs.as_ptr()));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    hsum_ps(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0f32;
    for (bx, by) in x.iter().zip(y) {
        summs += h2f(bx.m) * h2f(by.s);
        let d = _mm256_set1_ps(h2f(bx.d) * h2f(by.d));
        let p = dot_u8_i8_i32(nibbles32(bx.qs.as_ptr()), loadu(by.qs.as_ptr()));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    hsum_ps(acc) + summs
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq4_nl(x: &[BlockIQ4NL], y: &[BlockQ8_0]) -> f32 {
    let values = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y) {
        let p = dot_i8_i32(lut_bytes(&bx.qs, values), loadu(by.qs.as_ptr()));
        let d = _mm256_set1_ps(h2f(bx.d) * h2f(by.d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    hsum_ps(acc)
}

/// A byte shuffle that broadcasts i16 element `lo` of each 128-bit lane over the lower half and
/// element `hi` over the upper half.
const fn word_shuffle(lo: usize, hi: usize) -> [u8; 32] {
    let mut t = [0u8; 32];
    let mut i = 0;
    while i < 16 {
        let e = if i < 8 { lo } else { hi };
        t[2 * i] = 2 * e as u8;
        t[2 * i + 1] = 2 * e as u8 + 1;
        i += 1;
    }
    t
}

/// Byte masks picking i16 element 2k of a 128-bit lane for the lower half and 2k+1 for the
/// upper half (used with `scale_pairs`).
static PAIR_MASKS: [[u8; 32]; 4] = [word_shuffle(0, 1), word_shuffle(2, 3), word_shuffle(4, 5), word_shuffle(6, 7)];

/// [`PAIR_MASKS`] in registers. Read as volatile so that each use stays one byte shuffle: with
/// the masks known, the compiler rewrote every such shuffle as three (two word shuffles and a
/// lane permute), all on the one port that runs shuffles, the bottleneck of these dots.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn pair_masks() -> [__m256i; 4] {
    PAIR_MASKS.map(|m| std::ptr::read_volatile(m.as_ptr() as *const __m256i))
}

/// Signed byte scales 8h..8h+8 of `s` widened to i16 and repeated in both 128-bit halves;
/// with `pair_masks()[k]` a shuffle broadcasts scales 2k (lower half) and 2k+1 (upper half).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn byte_scale_pairs(s: __m128i, h: usize) -> __m256i {
    let s = if h == 0 { s } else { _mm_unpackhi_epi64(s, s) };
    _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(s))
}

/// [`byte_scale_pairs`] of the 8 signed byte scales at `p`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn scale_pairs(p: *const i8) -> __m256i {
    byte_scale_pairs(_mm_loadl_epi64(p as *const __m128i), 0)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q2_k(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
    let m3 = _mm256_set1_epi8(3);
    let masks = pair_masks();
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let dy = by.d();
        // The 16 sub-blocks' 4-bit scales (low nibbles) and mins (high nibbles); Σ min · the
        // activations' sum over the sub-block is the integer that dmin multiplies.
        let sv = _mm_loadu_si128(bx.scales.as_ptr() as *const __m128i);
        let m4 = _mm_set1_epi8(0xf);
        let mv = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sv, 4), m4));
        let p = _mm256_madd_epi16(mv, loadu(by.bsums.as_ptr()));
        let summs = hsum_epi32(_mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1)));
        let sc4 = _mm_and_si128(sv, m4);
        mins += dy * h2f(bx.dmin) * summs as f32;
        let mut sumi = _mm256_setzero_si256();
        for n in 0..2 {
            let q2 = loadu(bx.qs.as_ptr().add(32 * n));
            // The scales are 0..15, so widening them as signed is exact.
            let scv = byte_scale_pairs(sc4, n);
            for j in 0..4 {
                let q = _mm256_and_si256(_mm256_srl_epi16(q2, _mm_cvtsi32_si128(2 * j as i32)), m3);
                let q8 = loadu(by.qs.as_ptr().add(128 * n + 32 * j));
                let p = _mm256_maddubs_epi16(q, q8);
                let sc = _mm256_shuffle_epi8(scv, masks[j]);
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, sc));
            }
        }
        let d = _mm256_set1_ps(dy * h2f(bx.d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) - mins
}

/// The 8 scales (lower 8 bytes) and 8 mins (upper 8) of a Q4_K/Q5_K block, whose 6-bit values
/// `scale_min_k4` unpacks one at a time, unpacked together with 32-bit word operations.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn k4_scales_mins(q: &[u8; 12]) -> __m128i {
    let w = |i: usize| rd_u32(q.as_ptr().add(4 * i));
    let (w0, w1, w2) = (w(0), w(1), w(2));
    let (m6, m4, m2) = (0x3f3f_3f3fu32, 0x0f0f_0f0fu32, 0x0303_0303u32);
    let s_lo = w0 & m6;
    let s_hi = (w2 & m4) | (((w0 >> 6) & m2) << 4);
    let m_lo = w1 & m6;
    let m_hi = ((w2 >> 4) & m4) | (((w1 >> 6) & m2) << 4);
    _mm_set_epi32(m_hi as i32, m_lo as i32, s_hi as i32, s_lo as i32)
}

/// Σ over the 8 sub-blocks of 32 of a Q4_K/Q5_K block of its min times the activations' sum
/// there (from the Q8_K block sums), the integer that `dmin` multiplies.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn k4_min_sum(sm: __m128i, by: &BlockQ8K) -> i32 {
    let mins = _mm_cvtepu8_epi16(_mm_unpackhi_epi64(sm, sm));
    let bs = by.bsums.as_ptr() as *const __m128i;
    // |a sum of 32 activations| ≤ 4096: an i16 holds it.
    let pairs = _mm_hadd_epi16(_mm_loadu_si128(bs), _mm_loadu_si128(bs.add(1)));
    hsum_epi32(_mm_madd_epi16(mins, pairs))
}

/// Byte shuffles that broadcast i16 element k of each 128-bit half.
static BROADCAST_I16: [[u8; 32]; 8] = {
    let mut t = [[0u8; 32]; 8];
    let mut k = 0;
    while k < 8 {
        t[k] = word_shuffle(k, k);
        k += 1;
    }
    t
};

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    let m4 = _mm256_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let dy = by.d();
        let sm = k4_scales_mins(&bx.scales);
        let summ = k4_min_sum(sm, by);
        let sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
        let scale = |k: usize| _mm256_shuffle_epi8(sc, loadu(BROADCAST_I16[k].as_ptr()));
        mins += dy * h2f(bx.dmin) * summ as f32;
        let mut sumi = _mm256_setzero_si256();
        for c in 0..4 {
            let q4 = loadu(bx.qs.as_ptr().add(32 * c));
            let ql = _mm256_and_si256(q4, m4);
            let qh = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
            let pl = _mm256_maddubs_epi16(ql, loadu(by.qs.as_ptr().add(64 * c)));
            let ph = _mm256_maddubs_epi16(qh, loadu(by.qs.as_ptr().add(64 * c + 32)));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(pl, scale(2 * c)));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(ph, scale(2 * c + 1)));
        }
        let d = _mm256_set1_ps(dy * h2f(bx.d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) - mins
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_k(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
    let m4 = _mm256_set1_epi8(0x0f);
    let one = _mm256_set1_epi8(1);
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let dy = by.d();
        let sm = k4_scales_mins(&bx.scales);
        let summ = k4_min_sum(sm, by);
        let sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
        let scale = |k: usize| _mm256_shuffle_epi8(sc, loadu(BROADCAST_I16[k].as_ptr()));
        mins += dy * h2f(bx.dmin) * summ as f32;
        let hb = loadu(bx.qh.as_ptr());
        let mut sumi = _mm256_setzero_si256();
        for c in 0..4 {
            let q4 = loadu(bx.qs.as_ptr().add(32 * c));
            let hl = _mm256_slli_epi16(
                _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * c as i32)), one),
                4,
            );
            let hh = _mm256_slli_epi16(
                _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * c as i32 + 1)), one),
                4,
            );
            let ql = _mm256_or_si256(_mm256_and_si256(q4, m4), hl);
            let qh = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4, 4), m4), hh);
            let pl = _mm256_maddubs_epi16(ql, loadu(by.qs.as_ptr().add(64 * c)));
            let ph = _mm256_maddubs_epi16(qh, loadu(by.qs.as_ptr().add(64 * c + 32)));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(pl, scale(2 * c)));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(ph, scale(2 * c + 1)));
        }
        let d = _mm256_set1_ps(dy * h2f(bx.d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) - mins
}

/// A Q6_K code is its weight + 32, so a block's sum of scale · weight · activation is that of
/// the codes less 32 Σ scale · (the activations' sum over the scale's 16 values): with these
/// 16 factors −32 · scale (|each| ≤ 4096) one multiply against the Q8_K block sums per block
/// ([`q6k_offset`]), in place of a second multiply per 32 values.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q6k_offset_scales(scales: &[u8; 16]) -> __m256i {
    let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(scales.as_ptr() as *const __m128i));
    _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc, 5))
}

/// The i32 lanes a Q6_K block's sums start from against `by` (|each| ≤ 2 · 4096 · 2048).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q6k_offset(offset_scales: __m256i, by: &BlockQ8K) -> __m256i {
    _mm256_madd_epi16(offset_scales, loadu(by.bsums.as_ptr()))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q6_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    let m4 = _mm256_set1_epi8(0x0f);
    let m2 = _mm256_set1_epi8(3);
    let mut acc = _mm256_setzero_ps();
    let masks = pair_masks();
    for (bx, by) in x.iter().zip(y) {
        let mut sumi = q6k_offset(q6k_offset_scales(&bx.scales), by);
        for n in 0..2 {
            let scv = scale_pairs(bx.scales.as_ptr().add(8 * n) as *const i8);
            let l1 = loadu(bx.ql.as_ptr().add(64 * n));
            let l2 = loadu(bx.ql.as_ptr().add(64 * n + 32));
            let h = loadu(bx.qh.as_ptr().add(32 * n));
            let hi = |k: i32| {
                _mm256_slli_epi16(
                    _mm256_and_si256(_mm256_srl_epi16(h, _mm_cvtsi32_si128(2 * k)), m2),
                    4,
                )
            };
            let q = [
                _mm256_or_si256(_mm256_and_si256(l1, m4), hi(0)),
                _mm256_or_si256(_mm256_and_si256(l2, m4), hi(1)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), hi(2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l2, 4), m4), hi(3)),
            ];
            for k in 0..4 {
                let q8 = loadu(by.qs.as_ptr().add(128 * n + 32 * k));
                let p = _mm256_maddubs_epi16(q[k], q8);
                let sc = _mm256_shuffle_epi8(scv, masks[k]);
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, sc));
            }
        }
        let d = _mm256_set1_ps(by.d() * h2f(bx.d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

/// Sign patterns of `ksigns_iq2xs` as 8 bytes of ±1.
static KEVEN_SIGNS: [u64; 128] = {
    let mut t = [0u64; 128];
    let mut i = 0;
    while i < 128 {
        let s = KSIGNS_IQ2XS[i];
        let mut v = 0u64;
        let mut j = 0;
        while j < 8 {
            let b: u64 = if s & (1 << j) != 0 { 0xff } else { 0x01 };
            v |= b << (8 * j);
            j += 1;
        }
        t[i] = v;
        i += 1;
    }
    t
};

/// Group `ib` of an IQ2_XXS block: its 32 lattice magnitudes, their ±1 signs, and the word
/// whose top 4 bits are the group's scale.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn iq2xxs_group(bx: &BlockIQ2XXS, ib: usize) -> (__m256i, __m256i, u32) {
    let q = &bx.qs[8 * ib..8 * ib + 8];
    let a1 = rd_u32(q.as_ptr().add(4));
    let g = table4(&IQ2XXS_GRID, [q[0] as usize, q[1] as usize, q[2] as usize, q[3] as usize]);
    let f = |k: u32| ((a1 >> (7 * k)) & 127) as usize;
    let s = table4(&KEVEN_SIGNS, [f(0), f(1), f(2), f(3)]);
    (g, s, a1)
}

/// The 8 group scales of a block as i16 pairs in memory, each put in every lane of a vector by
/// a broadcast load: a broadcast from a register is a shuffle, and the shuffle units are what
/// the IQ dots run short of.
#[repr(align(32))]
struct GroupScales([u64; 8]);

impl GroupScales {
    /// Group `ib`'s scale in all sixteen 16-bit lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn get(&self, ib: usize) -> __m256i {
        _mm256_castps_si256(_mm256_broadcast_ss(&*(self.0.as_ptr().add(ib) as *const f32)))
    }
}

/// `2 · (a >> 28) + 1` of the word `a` in the upper half of each 64-bit lane of `v` (IQ2_XXS's
/// and IQ3_XXS's scale codes), as that value twice over in the lane's low 32 bits.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn odd_scale_pairs(v: __m256i) -> __m256i {
    let c = _mm256_or_si256(_mm256_slli_epi64(_mm256_srli_epi64(v, 60), 1), _mm256_set1_epi64x(1));
    _mm256_or_si256(c, _mm256_slli_epi64(c, 16))
}

/// An IQ2_XXS block's [`GroupScales`]: group g's word with the scale is the upper half of the
/// g-th 8 bytes of `qs`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn iq2xxs_scales(bx: &BlockIQ2XXS) -> GroupScales {
    let mut t = GroupScales([0; 8]);
    for h in 0..2 {
        let v = loadu(bx.qs.as_ptr().add(32 * h));
        _mm256_store_si256(t.0.as_mut_ptr().add(4 * h) as *mut __m256i, odd_scale_pairs(v));
    }
    t
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq2_xxs(x: &[BlockIQ2XXS], y: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y) {
        let ls = iq2xxs_scales(bx);
        let mut sumi = _mm256_setzero_si256();
        for ib in 0..8 {
            let (g, s, _) = iq2xxs_group(bx, ib);
            let q8 = _mm256_sign_epi8(loadu(by.qs.as_ptr().add(32 * ib)), s);
            let p = _mm256_maddubs_epi16(g, q8);
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, ls.get(ib)));
        }
        let d = _mm256_set1_ps(h2f(bx.d) * by.d());
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    0.125 * hsum_ps(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq4_xs(x: &[BlockIQ4XS], y: &[BlockQ8K]) -> f32 {
    let values = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
    let m4 = _mm_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y) {
        let mut sumi = _mm256_setzero_si256();
        for ib in 0..8 {
            let q = _mm_loadu_si128(bx.qs.as_ptr().add(16 * ib) as *const __m128i);
            let lo = _mm_shuffle_epi8(values, _mm_and_si128(q, m4));
            let hi = _mm_shuffle_epi8(values, _mm_and_si128(_mm_srli_epi16(q, 4), m4));
            let q8 = loadu(by.qs.as_ptr().add(32 * ib));
            let v = _mm256_set_m128i(hi, lo);
            let p = _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(q8, v));
            let ls = bx.ls(ib) as i16;
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, _mm256_set1_epi16(ls)));
        }
        let d = _mm256_set1_ps(h2f(bx.d) * by.d());
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_bf16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr(), a.as_ptr() as *const f32);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for k in 0..4 {
            let h = _mm_loadu_si128(pw.add(2 * (i + 8 * k)) as *const __m128i);
            let x = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
            let y = _mm256_loadu_ps(pa.add(i + 8 * k));
            acc[k] = _mm256_fmadd_ps(x, y, acc[k]);
        }
        i += 32;
    }
    let mut s =
        hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    while i < n {
        let h = u16::from_le_bytes([w[2 * i], w[2 * i + 1]]);
        s += f32::from_bits((h as u32) << 16) * pa.add(i).read_unaligned();
        i += 1;
    }
    s
}

/// 32 bits to 32 bytes: 0xff where the bit is set, 0 elsewhere (byte i from bit i).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn bytes_from_bits(x: u32) -> __m256i {
    let shuf =
        _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0);
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x as i32), shuf);
    let bit = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, bit), _mm256_set1_epi64x(-1))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y) {
        let d = _mm256_set1_ps(h2f(bx.d) * h2f(by.d));
        let p = dot_i8_i32(q5_0_bytes(bx), loadu(by.qs.as_ptr()));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    hsum_ps(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_1(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0f32;
    for (bx, by) in x.iter().zip(y) {
        summs += h2f(bx.m) * h2f(by.s);
        let d = _mm256_set1_ps(h2f(bx.d) * h2f(by.d));
        let p = dot_u8_i8_i32(q5_1_bytes(bx), loadu(by.qs.as_ptr()));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    hsum_ps(acc) + summs
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_mxfp4(x: &[BlockMXFP4], y: &[BlockQ8_0]) -> f32 {
    let values = _mm_loadu_si128(KVALUES_MXFP4.as_ptr() as *const __m128i);
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y) {
        let p = dot_i8_i32(lut_bytes(&bx.qs, values), loadu(by.qs.as_ptr()));
        let d = _mm256_set1_ps(e8m0_to_f32_half(bx.e) * h2f(by.d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    hsum_ps(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q3_k(x: &[BlockQ3K], y: &[BlockQ8K]) -> f32 {
    let m3 = _mm256_set1_epi8(3);
    let one = _mm256_set1_epi8(1);
    let masks = pair_masks();
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y) {
        // The 16 signed scales as bytes, assembled from whole words.
        let r = q3k_scale_words(&bx.scales);
        let sc = _mm_sub_epi8(_mm_set_epi32(r[3] as i32, r[2] as i32, r[1] as i32, r[0] as i32), _mm_set1_epi8(32));
        let hb = loadu(bx.hmask.as_ptr());
        let mut sumi = _mm256_setzero_si256();
        for n in 0..2 {
            let q3 = loadu(bx.qs.as_ptr().add(32 * n));
            let scv = byte_scale_pairs(sc, n);
            for j in 0..4 {
                let lo =
                    _mm256_and_si256(_mm256_srl_epi16(q3, _mm_cvtsi32_si128(2 * j as i32)), m3);
                let bit = _mm256_and_si256(
                    _mm256_srl_epi16(hb, _mm_cvtsi32_si128((4 * n + j) as i32)),
                    one,
                );
                // 4 where the high bit is clear: q = lo − 4·(1 − bit).
                let sub = _mm256_slli_epi16(_mm256_xor_si256(bit, one), 2);
                let q8 = loadu(by.qs.as_ptr().add(128 * n + 32 * j));
                let p =
                    _mm256_sub_epi16(_mm256_maddubs_epi16(lo, q8), _mm256_maddubs_epi16(sub, q8));
                sumi = _mm256_add_epi32(
                    sumi,
                    _mm256_madd_epi16(p, _mm256_shuffle_epi8(scv, masks[j])),
                );
            }
        }
        let d = _mm256_set1_ps(by.d() * h2f(bx.d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

/// Entries i0..i3 of a table of 8-byte words as the four 64-bit lanes: each broadcast straight
/// from memory (a load, no shuffle) and the four merged by blends, which any vector ALU runs,
/// where inserting them takes the one or two shuffle units these kernels are short of (IQ2_XXS's
/// dot +10 %). The indices are below `t.len()` (the callers mask them to their table's size).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn table4(t: &[u64], i: [usize; 4]) -> __m256i {
    debug_assert!(i.iter().all(|&k| k < t.len()));
    let b = |k: usize| _mm256_castpd_si256(_mm256_broadcast_sd(&*(t.as_ptr().add(i[k]) as *const f64)));
    let lo = _mm256_blend_epi32(b(0), b(1), 0b0000_1100);
    let hi = _mm256_blend_epi32(b(2), b(3), 0b1100_0000);
    _mm256_blend_epi32(lo, hi, 0b1111_0000)
}

/// [`table4`] for a table of 4-byte words and eight lanes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn table8(t: &[u32], i: [usize; 8]) -> __m256i {
    debug_assert!(i.iter().all(|&k| k < t.len()));
    let b = |k: usize| _mm256_castps_si256(_mm256_broadcast_ss(&*(t.as_ptr().add(i[k]) as *const f32)));
    let lo = _mm256_blend_epi32(_mm256_blend_epi32(b(0), b(1), 0b0000_0010), _mm256_blend_epi32(b(2), b(3), 0b0000_1000), 0b0000_1100);
    let hi = _mm256_blend_epi32(_mm256_blend_epi32(b(4), b(5), 0b0010_0000), _mm256_blend_epi32(b(6), b(7), 0b1000_0000), 0b1100_0000);
    _mm256_blend_epi32(lo, hi, 0b1111_0000)
}

/// The 7 stored sign bits of 16 IQ2_XS/IQ2_XXS sign fields (one per 16-bit lane, bits 0..6)
/// completed with their parity bit 7, as `KSIGNS_IQ2XS` does: the parity of 7 bits is that of
/// bits 0..3 xor 4..6, looked up per lane with a byte shuffle.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn ksigns16(s7: __m256i) -> __m256i {
    const P: i8 = -128;
    let odd = _mm256_setr_epi8(
        0, P, P, 0, P, 0, 0, P, P, 0, 0, P, 0, P, P, 0, 0, P, P, 0, P, 0, 0, P, P, 0, 0, P, 0, P, P, 0,
    );
    _mm256_or_si256(s7, _mm256_shuffle_epi8(odd, _mm256_xor_si256(s7, _mm256_srli_epi16(s7, 4))))
}

/// Four sign bytes (at bytes 2j of `b`'s lower 128 bits, j = 0..3, in both halves) as ±1 bytes
/// for 32 weights: byte 8j + i is −1 where bit i of sign byte j is set.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn sign_bytes32(b: __m256i, pick: __m256i) -> __m256i {
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let x = _mm256_and_si256(_mm256_shuffle_epi8(b, pick), bit);
    _mm256_or_si256(_mm256_cmpeq_epi8(x, bit), _mm256_set1_epi8(1))
}

/// The 16 4-bit scales of an IQ2_XS/IQ2_S block as bytes 2s+1 (for [`byte_scale_pairs`]), in
/// the order of their use:
/// group 0's first 16 weights, its second 16, group 1's first 16…
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn iq2_scales(sc: &[u8; 8]) -> __m128i {
    let v = _mm_loadl_epi64(sc.as_ptr() as *const __m128i);
    let m4 = _mm_set1_epi8(0xf);
    let s = _mm_unpacklo_epi8(_mm_and_si128(v, m4), _mm_and_si128(_mm_srli_epi16(v, 4), m4));
    _mm_add_epi8(_mm_add_epi8(s, s), _mm_set1_epi8(1))
}

/// Four explicit sign bytes (IQ2_S, IQ3_S: bit i of byte j for weight 8j + i) as ±1 bytes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn sign_bytes4(p: *const u8) -> __m256i {
    let pick = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    sign_bytes32(_mm256_set1_epi32(rd_u32(p) as i32), pick)
}

/// Byte shuffles that spread the IQ2_XS sign bytes of sub-groups 0..3 (`[0]`) or 4..7 (`[1]`)
/// of a 128-bit half (from [`ksigns16`]) over 8 bytes each, for [`sign_bytes32`].
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn iq2xs_sign_picks() -> [__m256i; 2] {
    [
        _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4, 6, 6, 6, 6, 6, 6, 6, 6),
        _mm256_setr_epi8(8, 8, 8, 8, 8, 8, 8, 8, 10, 10, 10, 10, 10, 10, 10, 10, 12, 12, 12, 12, 12, 12, 12, 12, 14, 14, 14, 14, 14, 14, 14, 14),
    ]
}

/// Groups `4 half .. 4 half + 4` of an IQ2_XS block (their 16 grid indices and sign bytes are
/// one load): per group its 32 lattice magnitudes, their ±1 signs and its two scales `2s + 1`
/// spread over the 16-bit lanes of each 16 weights. `scales` is [`iq2_scales`] of the block;
/// `picks` and `masks` are [`iq2xs_sign_picks`] and [`pair_masks`], made once by the caller.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn iq2xs_groups(
    bx: &BlockIQ2XS,
    half: usize,
    scales: __m128i,
    picks: &[__m256i; 2],
    masks: &[__m256i; 4],
) -> [(__m256i, __m256i, __m256i); 4] {
    let scv = byte_scale_pairs(scales, half);
    let q = loadu(bx.qs.as_ptr().add(32 * half));
    let mut idx = [0u16; 16];
    _mm256_storeu_si256(idx.as_mut_ptr() as *mut __m256i, _mm256_and_si256(q, _mm256_set1_epi16(511)));
    let signs = ksigns16(_mm256_srli_epi16(q, 9));
    let sg = [_mm256_permute2x128_si256(signs, signs, 0x00), _mm256_permute2x128_si256(signs, signs, 0x11)];
    let group = |j: usize| {
        let i = |l: usize| idx[4 * j + l] as usize;
        let g = table4(&IQ2XS_GRID, [i(0), i(1), i(2), i(3)]);
        (g, sign_bytes32(sg[j / 2], picks[j % 2]), _mm256_shuffle_epi8(scv, masks[j]))
    };
    [group(0), group(1), group(2), group(3)]
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq2_xs(x: &[BlockIQ2XS], y: &[BlockQ8K]) -> f32 {
    let (picks, masks) = (iq2xs_sign_picks(), pair_masks());
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y) {
        let mut sumi = _mm256_setzero_si256();
        let scales = iq2_scales(&bx.scales);
        for half in 0..2 {
            for (j, (g, s, ls)) in iq2xs_groups(bx, half, scales, &picks, &masks).into_iter().enumerate() {
                let q8 = _mm256_sign_epi8(loadu(by.qs.as_ptr().add(32 * (4 * half + j))), s);
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(g, q8), ls));
            }
        }
        let d = _mm256_set1_ps(h2f(bx.d) * by.d());
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    0.125 * hsum_ps(acc)
}

/// Group `ib` of an IQ2_S block: its 32 lattice magnitudes, their ±1 signs and its two scales
/// `2s + 1` spread over the 16-bit lanes of each 16 weights. `scales` is [`iq2_scales`] of the
/// block, `masks` [`pair_masks`], made once by the caller (made here, they halved the dot's rate).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn iq2s_group(bx: &BlockIQ2S, ib: usize, scales: __m128i, masks: &[__m256i; 4]) -> (__m256i, __m256i, __m256i) {
    let qh = bx.qh[ib] as usize;
    let idx = |l: usize| bx.qs[4 * ib + l] as usize | ((qh << (8 - 2 * l)) & 0x300);
    let g = table4(&IQ2S_GRID, [idx(0), idx(1), idx(2), idx(3)]);
    let s = sign_bytes4(bx.qs.as_ptr().add(32 + 4 * ib));
    (g, s, _mm256_shuffle_epi8(byte_scale_pairs(scales, ib / 4), masks[ib % 4]))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq2_s(x: &[BlockIQ2S], y: &[BlockQ8K]) -> f32 {
    let masks = pair_masks();
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y) {
        let mut sumi = _mm256_setzero_si256();
        let scales = iq2_scales(&bx.scales);
        for ib in 0..8 {
            let (g, s, ls) = iq2s_group(bx, ib, scales, &masks);
            let q8 = _mm256_sign_epi8(loadu(by.qs.as_ptr().add(32 * ib)), s);
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(g, q8), ls));
        }
        let d = _mm256_set1_ps(h2f(bx.d) * by.d());
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    0.125 * hsum_ps(acc)
}

/// Group `ib` of an IQ3_XXS block: its 32 lattice magnitudes, their ±1 signs, and its 4-bit
/// scale code.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn iq3xxs_group(bx: &BlockIQ3XXS, ib: usize) -> (__m256i, __m256i, u32) {
    let q = &bx.qs[8 * ib..8 * ib + 8];
    let i = |k: usize| q[k] as usize;
    let g = table8(&IQ3XXS_GRID, [i(0), i(1), i(2), i(3), i(4), i(5), i(6), i(7)]);
    let aux = rd_u32(bx.qs.as_ptr().add(64 + 4 * ib));
    let f = |k: u32| ((aux >> (7 * k)) & 127) as usize;
    let s = table4(&KEVEN_SIGNS, [f(0), f(1), f(2), f(3)]);
    (g, s, aux >> 28)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq3_xxs(x: &[BlockIQ3XXS], y: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y) {
        let mut sumi = _mm256_setzero_si256();
        for ib in 0..8 {
            let (g, s, code) = iq3xxs_group(bx, ib);
            let q8 = _mm256_sign_epi8(loadu(by.qs.as_ptr().add(32 * ib)), s);
            let p = _mm256_maddubs_epi16(g, q8);
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, _mm256_set1_epi16((2 * code + 1) as i16)));
        }
        let d = _mm256_set1_ps(h2f(bx.d) * by.d());
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    0.25 * hsum_ps(acc)
}

/// Group `ib` of an IQ3_S block: its 32 lattice magnitudes, their ±1 signs, and its 4-bit
/// scale code.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn iq3s_group(bx: &BlockIQ3S, ib: usize) -> (__m256i, __m256i, u32) {
    let q = &bx.qs[8 * ib..8 * ib + 8];
    let qh = bx.qh[ib] as usize;
    let i = |k: usize| q[k] as usize | (((qh >> k) & 1) << 8);
    let g = table8(&IQ3S_GRID, [i(0), i(1), i(2), i(3), i(4), i(5), i(6), i(7)]);
    let s = sign_bytes4(bx.signs.as_ptr().add(4 * ib));
    let sc = bx.scales[ib / 2] as u32;
    (g, s, if ib % 2 == 0 { sc & 0xf } else { sc >> 4 })
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq3_s(x: &[BlockIQ3S], y: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y) {
        let mut sumi = _mm256_setzero_si256();
        for ib in 0..8 {
            let (g, s, code) = iq3s_group(bx, ib);
            let q8 = _mm256_sign_epi8(loadu(by.qs.as_ptr().add(32 * ib)), s);
            let p = _mm256_maddubs_epi16(g, q8);
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, _mm256_set1_epi16((2 * code + 1) as i16)));
        }
        let d = _mm256_set1_ps(h2f(bx.d) * by.d());
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

/// Σ over the 8 groups of an IQ1_S block of ±(2s+1) · (the group's 32 activations summed): the
/// integer that the delta (±1/8) multiplies, from the Q8_K block sums, with 16-bit lanes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn iq1s_delta_sum(bx: &BlockIQ1S, by: &BlockQ8K) -> i32 {
    let qh = _mm_loadu_si128(bx.qh.as_ptr() as *const __m128i);
    let ls = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(qh, 11), _mm_set1_epi16(0xe)), _mm_set1_epi16(1));
    // Bit 15 set means −1: the sign of qh (made nonzero) carried onto the scale.
    let lsd = _mm_sign_epi16(ls, _mm_or_si128(qh, _mm_set1_epi16(1)));
    let bs = by.bsums.as_ptr() as *const __m128i;
    // |pair sums| ≤ 2 · 16 · 128, so i16 holds them.
    let pairs = _mm_hadd_epi16(_mm_loadu_si128(bs), _mm_loadu_si128(bs.add(1)));
    hsum_epi32(_mm_madd_epi16(lsd, pairs))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq1_s(x: &[BlockIQ1S], y: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut accd = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let mut sumi = _mm256_setzero_si256();
        for ib in 0..8 {
            let qh = rd_u16(bx.qh.as_ptr().add(2 * ib)) as usize;
            let q = &bx.qs[4 * ib..4 * ib + 4];
            let gi = |l: usize| q[l] as usize | (((qh >> (3 * l)) & 7) << 8);
            let g = table4(&IQ1S_GRID, [gi(0), gi(1), gi(2), gi(3)]);
            let q8 = loadu(by.qs.as_ptr().add(32 * ib));
            let ls = 2 * ((qh >> 12) & 7) as i32 + 1;
            // The scale multiplies the i16 pair sums (a madd), not the i32 sums (a slow mullo):
            // the same integers.
            let p = mul_i8_pairs(g, q8);
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, _mm256_set1_epi16(ls as i16)));
        }
        let sumd = iq1s_delta_sum(bx, by);
        let dd = h2f(bx.d) * by.d();
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(sumi), acc);
        accd += dd * sumd as f32;
    }
    hsum_ps(acc) + 0.125 * accd
}

/// The 2s+1 of IQ1_M groups 2k..2k+3 (k even) as i16 in the order [`pair_masks`] picks them,
/// from scale words k and k+1: each word repeated over four lanes, then shifted.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn iq1m_scale_pairs(bx: &BlockIQ1M, k: usize) -> __m256i {
    // A scale word holds four 3-bit scales: group 2k's two halves at bits 0 and 3, group
    // 2k+1's at 6 and 9. Multiplying by 2^(13 - bit) puts a scale in the top 3 bits of its lane.
    let up = _mm_setr_epi16(1 << 13, 1 << 10, 1 << 7, 1 << 4, 1 << 13, 1 << 10, 1 << 7, 1 << 4);
    let w = _mm_set1_epi32(rd_u32(bx.scales.as_ptr().add(2 * k)) as i32);
    let w = _mm_shufflehi_epi16(_mm_shufflelo_epi16(w, 0x00), 0x55);
    let s3 = _mm_srli_epi16(_mm_mullo_epi16(w, up), 13);
    _mm256_broadcastsi128_si256(_mm_or_si128(_mm_add_epi16(s3, s3), _mm_set1_epi16(1)))
}

/// Groups 2k and 2k+1 of an IQ1_M block: each one's 32 lattice values and its delta signs as
/// bytes (−1 where the group half's bit is set, else 1).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn iq1m_pair(bx: &BlockIQ1M, k: usize) -> [(__m256i, __m256i); 2] {
    // 64-bit lane l of group 2k (resp. 2k+1) tests the delta-sign bit of its 8 weights in the
    // pair's 32 qh bits: bit 3 of nibble l (resp. l + 4).
    let dbit = [_mm256_set_epi64x(1 << 15, 1 << 11, 1 << 7, 1 << 3), _mm256_set_epi64x(1 << 31, 1 << 27, 1 << 23, 1 << 19)];
    let qh = rd_u32(bx.qh.as_ptr().add(4 * k)) as usize;
    let qhv = _mm256_set1_epi64x(qh as i64);
    let group = |h: usize| {
        let qs = &bx.qs[4 * (2 * k + h)..][..4];
        let q = qh >> (16 * h);
        // The lattice points straight into a register: going through a byte array (as
        // `BlockIQ1M::group` does) stalls on the store-to-load forwarding.
        let g = table4(
            &IQ1S_GRID,
            [qs[0] as usize | ((q << 8) & 0x700), qs[1] as usize | ((q << 4) & 0x700), qs[2] as usize | (q & 0x700), qs[3] as usize | ((q >> 4) & 0x700)],
        );
        let dsv = _mm256_or_si256(_mm256_cmpeq_epi64(_mm256_and_si256(qhv, dbit[h]), dbit[h]), _mm256_set1_epi8(1));
        (g, dsv)
    };
    [group(0), group(1)]
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq1_m(x: &[BlockIQ1M], y: &[BlockQ8K]) -> f32 {
    let ones = _mm256_set1_epi8(1);
    let masks = pair_masks();
    let mut acc = _mm256_setzero_ps();
    let mut accd = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y) {
        let mut sumi = _mm256_setzero_si256();
        let mut sumd = _mm256_setzero_si256();
        // Groups 4j..4j+3 share a scale vector; written out per pair so that every mask index
        // is a constant (a loop here is unrolled only in part, its masks then read from memory).
        let mut quad = |j: usize| {
            let scv = iq1m_scale_pairs(bx, 2 * j);
            let [a, b] = iq1m_pair(bx, 2 * j);
            let [c, d] = iq1m_pair(bx, 2 * j + 1);
            for (m, (g, dsv)) in [a, b, c, d].into_iter().enumerate() {
                let ib = 4 * j + m;
                let ls = _mm256_shuffle_epi8(scv, masks[m]);
                let q8 = loadu(by.qs.as_ptr().add(32 * ib));
                let p = mul_i8_pairs(g, q8);
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, ls));
                let pd = _mm256_maddubs_epi16(ones, _mm256_sign_epi8(q8, dsv));
                sumd = _mm256_add_epi32(sumd, _mm256_madd_epi16(pd, ls));
            }
        };
        quad(0);
        quad(1);
        let d = _mm256_set1_ps(h2f(bx.d_bits().to_le_bytes()) * by.d());
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
        accd = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumd), accd);
    }
    hsum_ps(acc) + 0.125 * hsum_ps(accd)
}

/// F16 → f32 for whole slices (`dst.len()` elements from `2·dst.len()` bytes), or `false` when
/// the CPU lacks F16C.
pub fn dequantize_f16(src: &[u8], dst: &mut [f32]) -> bool {
    if !available() {
        return false;
    }
    assert!(src.len() >= 2 * dst.len());
    // SAFETY: features checked; every load/store stays inside the slices (8 at a time, then a tail).
    unsafe { f16_rows(src, dst) };
    true
}

#[target_feature(enable = "avx2,f16c")]
unsafe fn f16_rows(src: &[u8], dst: &mut [f32]) {
    let n = dst.len();
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm_loadu_si128(src.as_ptr().add(2 * i) as *const __m128i);
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        i += 8;
    }
    while i < n {
        dst[i] = h2f([src[2 * i], src[2 * i + 1]]);
        i += 1;
    }
}
