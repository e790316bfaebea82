//! exp, SiLU and softmax computed to the bit as llama.cpp's CPU backend computes them on
//! AVX2+FMA machines (the reference the engine is measured against). Real models amplify one-ulp
//! differences: an activation that lands on the other side of a Q8 rounding boundary moves
//! later logits by tenths, so these follow ggml's formulas operation for operation.
//!
//! `expf`: range reduction by ln 2 (split in two constants), a degree-5 polynomial, scaling by
//! the exponent bits; ≤ 1.5 ulp from the true value, inputs below ≈ -104 give 0.

#[inline(always)]
fn c(bits: u32) -> f32 {
    f32::from_bits(bits)
}

/// ggml's vectorised `expf` (one lane).
#[inline(always)]
pub fn expf(x: f32) -> f32 {
    let shift = c(0x4b40_0000); // 1.5 * 2^23: adding it rounds to an integer in the low bits
    let z = x.mul_add(c(0x3fb8_aa3b), shift); // x / ln2 + shift
    let n = z - shift;
    let b = (-n).mul_add(c(0x35bf_be8e), (-n).mul_add(c(0x3f31_7200), x)); // x - n ln2
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1.0f32.to_bits()));
    let u = b * b;
    let j = c(0x3c07_2010)
        .mul_add(b, c(0x3d2b_9f17))
        .mul_add(u, c(0x3e2a_af33).mul_add(b, c(0x3eff_fedb)))
        .mul_add(u, c(0x3f7f_fff6) * b);
    if n.abs() <= 126.0 {
        return j.mul_add(k, k);
    }
    // Out of the normal range: scale in two steps (or saturate to 0 / inf).
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        s2.mul_add(j, s2) * s1
    }
}

/// [`expf`] on 8 lanes (ggml_v_expf): the same operations lane by lane, so the same bits; the
/// lanes out of the normal range take the two-step scaling, chosen by masks.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn expf8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let k = |bits: u32| _mm256_set1_ps(c(bits));
    let shift = k(0x4b40_0000);
    let z = _mm256_fmadd_ps(x, k(0x3fb8_aa3b), shift);
    let n = _mm256_sub_ps(z, shift);
    let b = _mm256_fnmadd_ps(n, k(0x35bf_be8e), _mm256_fnmadd_ps(n, k(0x3f31_7200), x));
    let e = _mm256_slli_epi32::<23>(_mm256_castps_si256(z));
    let kk = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_set1_epi32(1.0f32.to_bits() as i32)));
    let u = _mm256_mul_ps(b, b);
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(k(0x3c07_2010), b, k(0x3d2b_9f17)), u, _mm256_fmadd_ps(k(0x3e2a_af33), b, k(0x3eff_fedb))),
        u,
        _mm256_mul_ps(k(0x3f7f_fff6), b),
    );
    let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
    let big = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(126.0));
    let normal = _mm256_fmadd_ps(j, kk, kk);
    if _mm256_movemask_ps(big) == 0 {
        return normal;
    }
    let g = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps())), _mm256_set1_epi32(0x8200_0000u32 as i32));
    let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
    let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    let huge = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0));
    let scaled = _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1);
    _mm256_blendv_ps(_mm256_blendv_ps(normal, scaled, big), _mm256_mul_ps(s1, s1), huge)
}

/// `silu(x) * g` over a row: 8-wide groups use the vector exp, a tail uses libm's `expf`.
pub fn swiglu(x: &mut [f32], g: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has FMA (checked just above).
        return unsafe { swiglu_fma(x, g) };
    }
    swiglu_generic(x, g)
}

/// The same code compiled with hardware FMA (`mul_add` is one instruction, not a libm call).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn swiglu_fma(x: &mut [f32], g: &[f32]) {
    swiglu_generic(x, g)
}

#[inline(always)]
fn swiglu_generic(x: &mut [f32], g: &[f32]) {
    let n8 = x.len() / 8 * 8;
    for (a, &b) in x[..n8].iter_mut().zip(&g[..n8]) {
        *a = *a / (1.0 + expf(0.0 - *a)) * b;
    }
    for (a, &b) in x[n8..].iter_mut().zip(&g[n8..]) {
        *a = *a / (1.0 + (-*a).exp()) * b;
    }
}

/// Softmax in place over `x` (ggml_soft_max: exp(x - max) summed in f64, 8-wide groups
/// reduced pairwise as the vector code does, then scaled by the f32 reciprocal of the sum).
pub fn softmax(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { softmax_avx2(x) };
    }
    softmax_generic(x)
}

/// [`softmax_generic`] with the 8-wide groups' exp in registers ([`expf8`]; the compiler kept
/// the scalar `expf` per lane, branch and all): the same values and sums in the same order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let n8 = x.len() / 8 * 8;
    let mut sum = 0.0f64;
    let (p, m) = (x.as_mut_ptr(), _mm256_set1_ps(max));
    let mut i = 0;
    while i < n8 {
        let v = expf8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m));
        _mm256_storeu_ps(p.add(i), v);
        let a = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
        let b = _mm_add_ps(a, _mm_movehl_ps(a, a));
        sum += _mm_cvtss_f32(_mm_add_ss(b, _mm_movehdup_ps(b))) as f64;
        i += 8;
    }
    for v in x[n8..].iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[inline(always)]
fn softmax_generic(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let n8 = x.len() / 8 * 8;
    let mut sum = 0.0f64;
    for ch in x[..n8].chunks_exact_mut(8) {
        for v in ch.iter_mut() {
            *v = expf(*v - max);
        }
        let a = [ch[0] + ch[4], ch[1] + ch[5], ch[2] + ch[6], ch[3] + ch[7]];
        let b = [a[0] + a[2], a[1] + a[3]];
        sum += (b[0] + b[1]) as f64;
    }
    for v in x[n8..].iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `a · b` summed as ggml_vec_dot_f32 does on AVX2: four 8-lane FMA accumulators over 32-wide
/// steps, folded `(s0 + s2) + (s1 + s3)`, then lanes `l + (l + 4)`, then `(t0 + t1) + (t2 + t3)`;
/// a tail past the last full step is FMA'd onto the total one element at a time.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has FMA (checked just above).
        return unsafe { dot_fma(a, b) };
    }
    dot_generic(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    dot_generic(a, b)
}

#[inline(always)]
fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let np = n / 32 * 32;
    let mut s = [0.0f32; 32];
    for (ca, cb) in a[..np].chunks_exact(32).zip(b[..np].chunks_exact(32)) {
        for (v, (x, y)) in s.iter_mut().zip(ca.iter().zip(cb)) {
            *v = x.mul_add(*y, *v);
        }
    }
    let mut r = fold_vec_dot(&s);
    for (x, y) in a[np..n].iter().zip(&b[np..n]) {
        r = x.mul_add(*y, r);
    }
    r
}

/// The element type of the KV rows attention reads: f32, f16, or Q8_0 blocks, whose values
/// (f16, or an f16 scale times an int8: 19 significant bits at most) are all exact in f32, so
/// a sum over rows read in place has the bits of the same sum over the rows converted. Rows are
/// bytes at any alignment.
pub trait KvElem {
    /// The bytes of a row of `n` elements (for Q8_0, `n` a multiple of 32).
    fn row_bytes(n: usize) -> usize;
    /// Element `i` of `row`.
    fn get(row: &[u8], i: usize) -> f32;
    /// Elements `i..i + 8` of the row at `row` (`i` a multiple of 8).
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C, and the row holds those elements.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(row: *const u8, i: usize) -> std::arch::x86_64::__m256;
}

/// f32 KV rows (and rows converted to f32).
pub struct F32;
/// f16 KV rows.
pub struct F16;
/// Q8_0 KV rows: blocks of an f16 scale and 32 int8 values, the value `scale × q` (the
/// product exact in f32, as the block's dequantization computes it).
pub struct Q8_0;

impl KvElem for F32 {
    #[inline(always)]
    fn row_bytes(n: usize) -> usize {
        4 * n
    }
    #[inline(always)]
    fn get(row: &[u8], i: usize) -> f32 {
        f32::from_le_bytes(row[4 * i..4 * i + 4].try_into().unwrap())
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(row: *const u8, i: usize) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(row.add(4 * i) as *const f32)
    }
}

impl KvElem for F16 {
    #[inline(always)]
    fn row_bytes(n: usize) -> usize {
        2 * n
    }
    #[inline(always)]
    fn get(row: &[u8], i: usize) -> f32 {
        half::f16::from_le_bytes([row[2 * i], row[2 * i + 1]]).to_f32()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(row: *const u8, i: usize) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(row.add(2 * i) as *const __m128i))
    }
}

impl KvElem for Q8_0 {
    #[inline(always)]
    fn row_bytes(n: usize) -> usize {
        n / 32 * 34
    }
    #[inline(always)]
    fn get(row: &[u8], i: usize) -> f32 {
        let b = &row[i / 32 * 34..][..34];
        crate::quant::block::f16_lut([b[0], b[1]]) * (b[2 + i % 32] as i8) as f32
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(row: *const u8, i: usize) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // The four loads of a 32-value step share the block's scale, which the compiler loads
        // once for them.
        let b = row.add(i / 32 * 34);
        let d = _mm256_set1_ps(crate::quant::block::f16_lut([*b, *b.add(1)]));
        let q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(b.add(2 + i % 32) as *const __m128i));
        _mm256_mul_ps(d, _mm256_cvtepi32_ps(q))
    }
}

/// Where a pass over attention's K or V rows finds row p: the paged cache's reader (cpu/mod.rs)
/// or [`Strided`] rows. The SIMD loops call `row` once per row; implementations mark it
/// `#[inline(always)]`, since a call there (a closure's stayed out of line) spills the loop's
/// accumulators around it.
pub trait Rows<'a>: Copy {
    /// Row p's bytes, from its first element on.
    fn row(&self, p: usize) -> &'a [u8];
}

/// Rows `stride` bytes apart in one buffer.
#[derive(Clone, Copy)]
pub struct Strided<'a> {
    pub data: &'a [u8],
    pub stride: usize,
}

impl<'a> Rows<'a> for Strided<'a> {
    #[inline(always)]
    fn row(&self, p: usize) -> &'a [u8] {
        &self.data[p * self.stride..]
    }
}

/// Row p of `rows`, checked to hold `n` elements of `E` (the SIMD loops read it by pointer).
#[inline(always)]
fn checked_row<'a, E: KvElem>(rows: impl Rows<'a>, p: usize, n: usize) -> &'a [u8] {
    let r = rows.row(p);
    assert!(r.len() >= E::row_bytes(n), "attention row {p} has {} bytes, {n} elements wanted", r.len());
    r
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma_f16c() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// `out[p] = dot(q, row p)` for every `p`, `rows.row(p)` the bytes of row p (at least `q.len()`
/// elements of `E`): [`dot`]'s bits, with `q` loaded once and the horizontal sums of 8 rows at
/// a time done together (attention's scores).
pub fn dot_rows<'a, E: KvElem>(q: &[f32], rows: impl Rows<'a>, out: &mut [f32]) {
    let n = out.len();
    dot_rows_heads::<E>(q, q.len(), rows, n, out, n);
}

/// [`dot_rows`] for the query heads that share a KV head (`qs`: heads of `hd` values one after
/// another): head h's `n` results at `out[h * stride..]`. Each row is read once for up to three
/// heads, which the cache of a long context otherwise serves again per head; every result has
/// [`dot_rows`]' bits.
pub fn dot_rows_heads<'a, E: KvElem>(qs: &[f32], hd: usize, rows: impl Rows<'a>, n: usize, out: &mut [f32], stride: usize) {
    let g = qs.len() / hd;
    assert!(stride >= n && out.len() >= (g.max(1) - 1) * stride + n, "dot_rows_heads: {g} heads of {n} results, stride {stride}, {} outputs", out.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma_f16c() {
        let mut h = 0;
        while h < g {
            let take = heads_per_pass(g - h);
            let q = &qs[h * hd..(h + take) * hd];
            let o = &mut out[h * stride..(h + take - 1) * stride + n];
            // SAFETY: the CPU has AVX2, FMA and F16C (checked just above); each row's length is
            // asserted before it is read.
            unsafe {
                match take {
                    3 => dot_rows_avx2::<E, 3>(q, rows, o, stride),
                    2 => dot_rows_avx2::<E, 2>(q, rows, o, stride),
                    _ => dot_rows_avx2::<E, 1>(q, rows, o, stride),
                }
            }
            h += take;
        }
        return;
    }
    for (h, q) in qs.chunks_exact(hd).enumerate() {
        dot_rows_generic::<E>(q, rows, 0, &mut out[h * stride..h * stride + n]);
    }
}

/// How many of the `left` heads of a group one pass over the rows takes: up to three (their
/// twelve accumulators, four per head, fit the 16 AVX2 registers), four as two and two.
fn heads_per_pass(left: usize) -> usize {
    if left == 4 {
        2
    } else {
        left.min(3)
    }
}

/// [`dot_rows`] without SIMD, for rows `p0..` (row `p0 + j` into `out[j]`): each row
/// converted, then [`dot`].
fn dot_rows_generic<'a, E: KvElem>(q: &[f32], rows: impl Rows<'a>, p0: usize, out: &mut [f32]) {
    let n = q.len();
    let mut k = vec![0f32; n];
    for (j, o) in out.iter_mut().enumerate() {
        let row = checked_row::<E>(rows, p0 + j, n);
        for (i, x) in k.iter_mut().enumerate() {
            *x = E::get(row, i);
        }
        *o = dot(q, &k);
    }
}

/// [`dot_rows_heads`] for `G` heads (`qs`: G × hd values; head h's results at
/// `out[h * stride..]`, as many as `out` has past the last head's start): per row and head
/// [`dot_generic`]'s four 8-lane FMA chains and their vertical fold, each 32 values of the row
/// loaded once for all G heads; then per head 8 rows' lanes folded at once: `l + (l + 4)` for
/// two rows per add (their 128-bit halves paired), `(t0 + t1) + (t2 + t3)` by two horizontal
/// adds; the rows come out in the order 0, 2, 4, 6, 1, 3, 5, 7, put back by one permute. The
/// tail past the last 32 is FMA'd per row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_avx2<'a, E: KvElem, const G: usize>(qs: &[f32], rows: impl Rows<'a>, out: &mut [f32], stride: usize) {
    use std::arch::x86_64::*;
    let n = qs.len() / G;
    let nrows = out.len() - (G - 1) * stride;
    let np = n / 32 * 32;
    let qp = qs.as_ptr();
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let mut p = 0;
    while p + 8 <= nrows {
        // Written row by row before it is read: left uninitialised, as a zeroed array of G × 8
        // registers was a memset per 8 rows.
        let mut v = [[std::mem::MaybeUninit::<__m256>::uninit(); 8]; G];
        for j in 0..8 {
            let kr = checked_row::<E>(rows, p + j, n).as_ptr();
            let mut s = [[_mm256_setzero_ps(); 4]; G];
            let mut i = 0;
            while i < np {
                for r in 0..4 {
                    let k = E::load8(kr, i + 8 * r);
                    for (h, sh) in s.iter_mut().enumerate() {
                        sh[r] = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(h * n + i + 8 * r)), k, sh[r]);
                    }
                }
                i += 32;
            }
            for (vh, sh) in v.iter_mut().zip(&s) {
                vh[j].write(_mm256_add_ps(_mm256_add_ps(sh[0], sh[2]), _mm256_add_ps(sh[1], sh[3])));
            }
        }
        for (h, vh) in v.iter().enumerate() {
            let t: [__m256; 4] = std::array::from_fn(|m| {
                // SAFETY: every vh[j] was written in the loop over j above.
                let (a, b) = (vh[2 * m].assume_init(), vh[2 * m + 1].assume_init());
                _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31))
            });
            let hs = _mm256_hadd_ps(_mm256_hadd_ps(t[0], t[1]), _mm256_hadd_ps(t[2], t[3]));
            let o = &mut out[h * stride + p..h * stride + p + 8];
            _mm256_storeu_ps(o.as_mut_ptr(), _mm256_permutevar8x32_ps(hs, order));
            if np < n {
                let q = &qs[h * n..(h + 1) * n];
                for (j, oj) in o.iter_mut().enumerate() {
                    let kr = checked_row::<E>(rows, p + j, n);
                    let mut r = *oj;
                    for (i, qi) in q.iter().enumerate().skip(np) {
                        r = qi.mul_add(E::get(kr, i), r);
                    }
                    *oj = r;
                }
            }
        }
        p += 8;
    }
    if p < nrows {
        for h in 0..G {
            dot_rows_generic::<E>(&qs[h * n..(h + 1) * n], rows, p, &mut out[h * stride + p..h * stride + nrows]);
        }
    }
}

/// Which of llama.cpp's two F32 dot-product orders a sum follows (see [`weighted_rows`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SumOrder {
    /// ggml_vec_dot_f32 (single-token passes): 4 × 8 accumulators over 32-wide steps.
    VecDot,
    /// tinyBLAS (passes of two or more tokens): 8 lanes, one FMA chain each.
    Gemm,
}

/// `out = Σ_p w[p] · v_p` with `v_p` the first `out.len()` elements of `rows.row(p)`, each output
/// summed over `p` in `order`: `VecDot` as [`dot`] does; `Gemm` as llama.cpp's F32 GEMM
/// (tinyBLAS) does on AVX2: eight lanes (`p mod 8`), each an FMA chain in order of `p`, folded
/// `l + (l + 4)`, then `(t0 + t2) + (t1 + t3)`. Terms past `w.len()` count as zero, as
/// llama.cpp's zero-weight padding does. `acc` is scratch.
pub fn weighted_rows<'a, E: KvElem>(w: &[f32], rows: impl Rows<'a>, order: SumOrder, acc: &mut Vec<f32>, out: &mut [f32]) {
    weighted_rows_heads::<E>(w, w.len(), w.len(), rows, order, acc, out)
}

/// [`weighted_rows`] for the query heads that share a KV head: `ws` holds one run of `stride`
/// values per head, head h's `n` weights at `ws[h * stride..]`; its `d` sums go to
/// `out[h * d..]` (`d` = `out.len()` / heads). Each 32 columns of a V row are read once for up
/// to three heads (four as two and two). Every head's sums have [`weighted_rows`]' bits.
pub fn weighted_rows_heads<'a, E: KvElem>(ws: &[f32], stride: usize, n: usize, rows: impl Rows<'a>, order: SumOrder, acc: &mut Vec<f32>, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    let simd = has_avx2_fma_f16c();
    #[cfg(not(target_arch = "x86_64"))]
    let simd = false;
    weighted_rows_with::<E>(simd, ws, stride, n, rows, order, acc, out)
}

/// [`weighted_rows_heads`], the column steps in AVX2 registers when `simd` (the CPU has AVX2,
/// FMA and F16C), else element by element: the same FMAs in the same order either way.
#[allow(clippy::too_many_arguments)]
fn weighted_rows_with<'a, E: KvElem>(simd: bool, ws: &[f32], stride: usize, n: usize, rows: impl Rows<'a>, order: SumOrder, acc: &mut Vec<f32>, out: &mut [f32]) {
    let g = ws.len().div_ceil(stride.max(1)).max(1);
    let d = out.len() / g;
    assert!(n <= stride && (g - 1) * stride + n <= ws.len() && g * d == out.len(), "weighted_rows: {} weights, stride {stride}, {n} rows, {} outputs", ws.len(), out.len());
    // One accumulator row per (head, register, lane): 8 for the GEMM order, 32 for
    // ggml_vec_dot_f32. Accumulator row a of a head sums the rows p ≡ a (mod n_acc) in order of
    // p; it is run to its end a column step at a time, so those columns stay in registers
    // instead of being loaded and stored for every row (the same FMAs in the same order per
    // column).
    let n_acc = if order == SumOrder::Gemm { 8 } else { 32 };
    acc.clear();
    acc.resize(g * n_acc * d, 0.0);
    let mut h0 = 0;
    while h0 < g {
        let take = heads_per_pass(g - h0);
        // One head keeps 64 columns in 8 registers; two or three heads 32 columns each.
        let ch = if take == 1 { 64 } else { 32 };
        for c0 in (0..d).step_by(ch) {
            let cw = ch.min(d - c0);
            for a in 0..n_acc.min(n) {
                if cw == ch && simd {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `simd` says the CPU has AVX2, FMA and F16C; every row holds `d`
                    // elements (asserted); the accumulator rows are in `acc` (sized above).
                    unsafe {
                        let at = Chunk { ws, stride, h0, n, a, n_acc, c0, d };
                        match take {
                            3 => weighted_chunk_avx2::<E, 3, 4>(&at, rows, acc),
                            2 => weighted_chunk_avx2::<E, 2, 4>(&at, rows, acc),
                            _ => weighted_chunk_avx2::<E, 1, 8>(&at, rows, acc),
                        }
                    }
                } else {
                    for h in h0..h0 + take {
                        let dst = &mut acc[(h * n_acc + a) * d + c0..][..cw];
                        for p in (a..n).step_by(n_acc) {
                            let (wp, r) = (ws[h * stride + p], checked_row::<E>(rows, p, d));
                            for (j, sj) in dst.iter_mut().enumerate() {
                                *sj = wp.mul_add(E::get(r, c0 + j), *sj);
                            }
                        }
                    }
                }
            }
        }
        h0 += take;
    }
    for (h, oh) in out.chunks_exact_mut(d.max(1)).enumerate() {
        for (i, o) in oh.iter_mut().enumerate() {
            let at = |a: usize| acc[(h * n_acc + a) * d + i];
            *o = match order {
                SumOrder::Gemm => {
                    let t: [f32; 4] = std::array::from_fn(|l| at(l) + at(l + 4));
                    (t[0] + t[2]) + (t[1] + t[3])
                }
                SumOrder::VecDot => fold_vec_dot(&std::array::from_fn(at)),
            };
        }
    }
}

/// Where a [`weighted_chunk_avx2`] works: heads `h0..` of `ws` (`stride` apart, `n` weights
/// each), accumulator row `a` of `n_acc`, columns from `c0` of rows of `d`.
#[cfg(target_arch = "x86_64")]
struct Chunk<'w> {
    ws: &'w [f32],
    stride: usize,
    h0: usize,
    n: usize,
    a: usize,
    n_acc: usize,
    c0: usize,
    d: usize,
}

/// Accumulator row `a` of [`weighted_rows_heads`] for heads `h0..h0 + G`, over `8 * W`
/// columns from `c0`, in `G * W` registers; each row's columns loaded once for the G heads.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weighted_chunk_avx2<'a, E: KvElem, const G: usize, const W: usize>(at: &Chunk<'_>, rows: impl Rows<'a>, acc: &mut [f32]) {
    use std::arch::x86_64::*;
    let Chunk { ws, stride, h0, n, a, n_acc, c0, d } = *at;
    assert!((h0 + G - 1) * stride + n <= ws.len() && ((h0 + G - 1) * n_acc + a) * d + c0 + 8 * W <= acc.len());
    let wp = ws.as_ptr().add(h0 * stride);
    let mut s = [[_mm256_setzero_ps(); W]; G];
    let mut p = a;
    while p < n {
        let r = checked_row::<E>(rows, p, d).as_ptr();
        for j in 0..W {
            let v = E::load8(r, c0 + 8 * j);
            for (h, sh) in s.iter_mut().enumerate() {
                sh[j] = _mm256_fmadd_ps(_mm256_set1_ps(*wp.add(h * stride + p)), v, sh[j]);
            }
        }
        p += n_acc;
    }
    for (h, sh) in s.iter().enumerate() {
        let dst = acc.as_mut_ptr().add(((h0 + h) * n_acc + a) * d + c0);
        for (j, sj) in sh.iter().enumerate() {
            _mm256_storeu_ps(dst.add(8 * j), *sj);
        }
    }
}

/// ggml_vec_dot_f32's reduction of its 4 × 8 accumulators (register-major) on AVX2.
#[inline(always)]
fn fold_vec_dot(s: &[f32; 32]) -> f32 {
    let x: [f32; 8] = std::array::from_fn(|l| (s[l] + s[16 + l]) + (s[8 + l] + s[24 + l]));
    let t: [f32; 4] = std::array::from_fn(|l| x[l] + x[l + 4]);
    (t[0] + t[1]) + (t[2] + t[3])
}

#[cfg(test)]
mod tests {
    /// Pseudo-random numbers uniform in [-1, 1) (a 64-bit LCG).
    fn uniform(mut seed: u64) -> impl FnMut() -> f32 {
        move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    /// Rows of `stride` values of `v`.
    fn f32_rows(v: &[f32], stride: usize) -> super::Strided<'_> {
        super::Strided { data: super::super::qops::f32_bytes(v), stride: 4 * stride }
    }

    /// Rows of `stride` f16 values in `b`.
    fn f16_rows(b: &[u8], stride: usize) -> super::Strided<'_> {
        super::Strided { data: b, stride: 2 * stride }
    }

    /// `v` rounded to f16: the values (exact in f32) and their bytes.
    fn to_f16(v: &[f32]) -> (Vec<f32>, Vec<u8>) {
        let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
        (h.iter().map(|x| x.to_f32()).collect(), h.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    /// `rows` rows of `w` values (a multiple of 32), `stride` apart in `v`, as Q8_0 rows with a
    /// spare block each: the values the blocks hold (rows of `w`), the bytes, and the bytes per row.
    fn to_q8_0(v: &[f32], stride: usize, rows: usize, w: usize) -> (Vec<f32>, Vec<u8>, usize) {
        use crate::quant::legacy::BlockQ8_0;
        let rb = (w / 32 + 1) * 34;
        let (mut deq, mut bytes) = (vec![0f32; rows * w], vec![0xa5u8; rows * rb]);
        for p in 0..rows {
            for k in 0..w / 32 {
                let blk = BlockQ8_0::quantize(&v[p * stride + 32 * k..][..32]);
                let at = p * rb + 34 * k;
                bytes[at..at + 2].copy_from_slice(&blk.d);
                bytes[at + 2..at + 34].copy_from_slice(&blk.qs);
                blk.dequantize(&mut deq[p * w + 32 * k..][..32]);
            }
        }
        (deq, bytes, rb)
    }

    /// Q8_0 rows read in place: each result has the bits of the same dot products and weighted
    /// sums over the rows dequantized first, for one head and groups of 2 to 4.
    #[test]
    fn q8_0_rows_read_in_place() {
        use super::{Q8_0, SumOrder, Strided};
        let mut rnd = uniform(17);
        let mut acc = Vec::new();
        for hd in [32usize, 64, 96, 128, 256] {
            for rows in [1usize, 7, 8, 9, 23, 64] {
                let v: Vec<f32> = (0..rows * (hd + 7)).map(|_| rnd() * 4.0).collect();
                let (deq, bytes, rb) = to_q8_0(&v, hd + 7, rows, hd);
                let q8 = Strided { data: &bytes, stride: rb };
                for g in 1..=4usize {
                    let qs: Vec<f32> = (0..g * hd).map(|_| rnd() * 2.0).collect();
                    let np = rows.div_ceil(8) * 8;
                    let mut got = vec![f32::NAN; g * np];
                    super::dot_rows_heads::<Q8_0>(&qs, hd, q8, rows, &mut got, np);
                    for h in 0..g {
                        for p in 0..rows {
                            let want = super::dot(&qs[h * hd..(h + 1) * hd], &deq[p * hd..(p + 1) * hd]);
                            assert_eq!(got[h * np + p].to_bits(), want.to_bits(), "scores: head_dim {hd}, {g} heads: head {h} row {p}");
                        }
                    }
                    let ws: Vec<f32> = (0..g * np).map(|_| rnd().abs()).collect();
                    for order in [SumOrder::VecDot, SumOrder::Gemm] {
                        let mut got = vec![f32::NAN; g * hd];
                        super::weighted_rows_heads::<Q8_0>(&ws, np, rows, q8, order, &mut acc, &mut got);
                        for h in 0..g {
                            let mut want = vec![0f32; hd];
                            weighted_rows_by_row(&ws[h * np..h * np + rows], &deq, hd, order, &mut want);
                            for i in 0..hd {
                                assert_eq!(got[h * hd + i].to_bits(), want[i].to_bits(), "sums: head_dim {hd}, {rows} rows, {g} heads, {order:?}: head {h} column {i}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// `weighted_rows` as first written: one pass over the rows, each FMA'd into its
    /// accumulator row in memory.
    fn weighted_rows_by_row(w: &[f32], v: &[f32], stride: usize, order: super::SumOrder, out: &mut [f32]) {
        let d = out.len();
        let n_acc = if order == super::SumOrder::Gemm { 8 } else { 32 };
        let mut acc = vec![0f32; n_acc * d];
        for (p, &wp) in w.iter().enumerate() {
            let a = p % n_acc;
            for (s, &x) in acc[a * d..(a + 1) * d].iter_mut().zip(&v[p * stride..p * stride + d]) {
                *s = wp.mul_add(x, *s);
            }
        }
        for (i, o) in out.iter_mut().enumerate() {
            let at = |a: usize| acc[a * d + i];
            *o = match order {
                super::SumOrder::Gemm => {
                    let t: [f32; 4] = std::array::from_fn(|l| at(l) + at(l + 4));
                    (t[0] + t[2]) + (t[1] + t[3])
                }
                super::SumOrder::VecDot => super::fold_vec_dot(&std::array::from_fn(at)),
            };
        }
    }

    #[test]
    fn weighted_rows_equals_a_pass_by_row() {
        let mut rnd = uniform(3);
        let mut acc = Vec::new();
        for order in [super::SumOrder::Gemm, super::SumOrder::VecDot] {
            for d in [8usize, 40, 64, 100, 128, 256] {
                for n in [1usize, 5, 8, 31, 32, 33, 100, 300] {
                    let stride = d + 5;
                    let w: Vec<f32> = (0..n).map(|_| rnd().abs()).collect();
                    let v: Vec<f32> = (0..n * stride).map(|_| rnd()).collect();
                    let (mut got, mut want) = (vec![f32::NAN; d], vec![0f32; d]);
                    super::weighted_rows::<super::F32>(&w, f32_rows(&v, stride), order, &mut acc, &mut got);
                    weighted_rows_by_row(&w, &v, stride, order, &mut want);
                    for (i, (g, x)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(g.to_bits(), x.to_bits(), "{order:?}, d {d}, {n} rows: column {i}");
                    }
                    // Without SIMD (other CPUs): the same bits.
                    let mut plain = vec![f32::NAN; d];
                    super::weighted_rows_with::<super::F32>(false, &w, w.len(), w.len(), f32_rows(&v, stride), order, &mut acc, &mut plain);
                    assert_eq!(plain.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "no SIMD, {order:?}, d {d}, {n} rows");
                    // f16 rows read in place: the sums of the same rows converted first.
                    let (v16, b16) = to_f16(&v);
                    super::weighted_rows::<super::F16>(&w, f16_rows(&b16, stride), order, &mut acc, &mut got);
                    weighted_rows_by_row(&w, &v16, stride, order, &mut want);
                    for (i, (g, x)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(g.to_bits(), x.to_bits(), "f16, {order:?}, d {d}, {n} rows: column {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn dot_rows_equals_dot() {
        let mut rnd = uniform(7);
        for hd in [8usize, 31, 32, 40, 64, 80, 96, 128, 256] {
            for rows in [1usize, 7, 8, 9, 16, 23, 64] {
                let stride = hd + 3;
                let q: Vec<f32> = (0..hd).map(|_| rnd() * 3.0).collect();
                let k: Vec<f32> = (0..rows * stride).map(|_| rnd()).collect();
                let mut out = vec![f32::NAN; rows];
                super::dot_rows::<super::F32>(&q, f32_rows(&k, stride), &mut out);
                for (p, o) in out.iter().enumerate() {
                    let want = super::dot(&q, &k[p * stride..][..hd]);
                    assert_eq!(o.to_bits(), want.to_bits(), "head_dim {hd}, {rows} rows: row {p}");
                }
                let (k16, b16) = to_f16(&k);
                super::dot_rows::<super::F16>(&q, f16_rows(&b16, stride), &mut out);
                let mut plain = vec![f32::NAN; rows];
                super::dot_rows_generic::<super::F16>(&q, f16_rows(&b16, stride), 0, &mut plain);
                for (p, (o, g)) in out.iter().zip(&plain).enumerate() {
                    let want = super::dot(&q, &k16[p * stride..][..hd]);
                    assert_eq!(o.to_bits(), want.to_bits(), "f16, head_dim {hd}, {rows} rows: row {p}");
                    assert_eq!(g.to_bits(), want.to_bits(), "f16 without SIMD, head_dim {hd}, {rows} rows: row {p}");
                }
            }
        }
    }

    /// Several heads against the same rows: each head's results are [`dot_rows`]' bits, for
    /// group sizes that take each path (1, 2, 3, 4 as two and two, 5 as three and two).
    #[test]
    fn dot_rows_heads_equals_dot_rows() {
        let mut rnd = uniform(11);
        for g in 1..=5usize {
            for (hd, rows) in [(64usize, 23usize), (40, 8), (128, 17), (32, 5)] {
                let stride = hd + 5;
                let qs: Vec<f32> = (0..g * hd).map(|_| rnd() * 2.0).collect();
                let k: Vec<f32> = (0..rows * stride).map(|_| rnd()).collect();
                let (_, b16) = to_f16(&k);
                let np = rows.div_ceil(8) * 8;
                let mut got = vec![f32::NAN; g * np];
                super::dot_rows_heads::<super::F16>(&qs, hd, f16_rows(&b16, stride), rows, &mut got, np);
                for h in 0..g {
                    let mut want = vec![f32::NAN; rows];
                    super::dot_rows::<super::F16>(&qs[h * hd..(h + 1) * hd], f16_rows(&b16, stride), &mut want);
                    for p in 0..rows {
                        assert_eq!(got[h * np + p].to_bits(), want[p].to_bits(), "{g} heads, head_dim {hd}: head {h} row {p}");
                    }
                    assert!(got[h * np + rows..(h + 1) * np].iter().all(|x| x.is_nan()), "{g} heads: head {h} wrote past its {rows} results");
                }
            }
        }
    }

    /// Several heads' weights against the same V rows: each head's sums are
    /// [`weighted_rows`]' bits, in both orders, for group sizes 1-5 and row widths that take
    /// the 32- and 64-column steps and the element-by-element rest.
    #[test]
    fn weighted_rows_heads_equals_weighted_rows() {
        use super::SumOrder;
        let mut rnd = uniform(13);
        let mut acc = Vec::new();
        for g in 1..=5usize {
            for (d, rows) in [(64usize, 45usize), (80, 9), (128, 33), (32, 3)] {
                let (stride, vstride) = (rows.div_ceil(8) * 8, d + 3);
                let ws: Vec<f32> = (0..g * stride).map(|_| rnd().abs()).collect();
                let v: Vec<f32> = (0..rows * vstride).map(|_| rnd()).collect();
                let (_, b16) = to_f16(&v);
                for order in [SumOrder::VecDot, SumOrder::Gemm] {
                    let mut got = vec![f32::NAN; g * d];
                    super::weighted_rows_heads::<super::F16>(&ws, stride, rows, f16_rows(&b16, vstride), order, &mut acc, &mut got);
                    for h in 0..g {
                        let mut want = vec![f32::NAN; d];
                        let w = &ws[h * stride..h * stride + rows];
                        super::weighted_rows::<super::F16>(w, f16_rows(&b16, vstride), order, &mut acc, &mut want);
                        for i in 0..d {
                            assert_eq!(got[h * d + i].to_bits(), want[i].to_bits(), "{g} heads, d {d}, {order:?}: head {h} column {i}");
                        }
                    }
                }
            }
        }
    }

    /// The vector exp and softmax against the scalar ones, bit for bit, across the normal
    /// range, the two-step scaling (|n| > 126) and the saturation (|n| > 192), with tails.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_and_softmax_equal_the_scalar_ones() {
        if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
            eprintln!("skipped: the CPU lacks AVX2/FMA");
            return;
        }
        let mut rnd = uniform(19);
        let special = [f32::NEG_INFINITY, 0.0, -0.0, 88.7, -87.4, -103.9, -150.0, 1e-30];
        let xs: Vec<f32> = special.into_iter().chain((0..40_000).map(|i| rnd() * [1.0f32, 20.0, 100.0, 160.0][i % 4])).collect();
        for ch in xs.chunks(8).filter(|c| c.len() == 8) {
            let mut got = [0f32; 8];
            // SAFETY: the CPU has AVX2 and FMA (checked above); 8 values in and out.
            unsafe {
                use std::arch::x86_64::*;
                _mm256_storeu_ps(got.as_mut_ptr(), super::expf8(_mm256_loadu_ps(ch.as_ptr())));
            }
            for (g, &x) in got.iter().zip(ch) {
                assert_eq!(g.to_bits(), super::expf(x).to_bits(), "exp({x})");
            }
        }
        for n in [1usize, 7, 8, 9, 31, 64, 100, 1031] {
            for scale in [1.0f32, 30.0, 200.0] {
                let x: Vec<f32> = (0..n).map(|_| rnd() * scale).collect();
                let (mut a, mut b) = (x.clone(), x.clone());
                // SAFETY: as above.
                unsafe { super::softmax_avx2(&mut a) };
                super::softmax_generic(&mut b);
                assert_eq!(a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{n} values of scale {scale}");
            }
        }
    }

    #[test]
    fn expf_is_close_to_libm() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let a = super::expf(x) as f64;
            let b = (x as f64).exp();
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(super::expf(-200.0), 0.0);
        assert_eq!(super::expf(f32::NEG_INFINITY), 0.0);
    }

    /// Both orders are exact on small integers; on rounding data, `VecDot` equals `dot` over
    /// the zero-padded row (llama.cpp's padded KV view), and `Gemm` sums in another order.
    #[test]
    fn weighted_rows_orders() {
        use super::{dot, weighted_rows, SumOrder, F32};
        let n = 45;
        let w: Vec<f32> = (0..n).map(|i| ((i * 7919 % 101) as f32 / 37.0).sin()).collect();
        let v: Vec<f32> = (0..2 * n).map(|i| ((i * 104729 % 211) as f32 / 13.0).cos() * 1e3).collect();
        let mut acc = Vec::new();
        let (mut vd, mut gm) = ([0.0f32; 2], [0.0f32; 2]);
        weighted_rows::<F32>(&w, f32_rows(&v, 2), SumOrder::VecDot, &mut acc, &mut vd);
        weighted_rows::<F32>(&w, f32_rows(&v, 2), SumOrder::Gemm, &mut acc, &mut gm);
        for c in 0..2 {
            let mut wp = w.clone();
            wp.resize(64, 0.0);
            let mut vc: Vec<f32> = (0..n).map(|p| v[2 * p + c]).collect();
            vc.resize(64, 0.0);
            assert_eq!(vd[c], dot(&wp, &vc), "column {c}");
            let exact: f64 = (0..n).map(|p| w[p] as f64 * v[2 * p + c] as f64).sum();
            assert!((gm[c] as f64 - exact).abs() < 1e-3 && (vd[c] as f64 - exact).abs() < 1e-3);
        }
        assert_ne!(vd, gm, "the two orders should round differently on this data");
        let ones = vec![1.0f32; n];
        let ints: Vec<f32> = (0..n).map(|p| p as f32).collect();
        let (mut a, mut b) = ([0.0f32], [0.0f32]);
        weighted_rows::<F32>(&ones, f32_rows(&ints, 1), SumOrder::VecDot, &mut acc, &mut a);
        weighted_rows::<F32>(&ones, f32_rows(&ints, 1), SumOrder::Gemm, &mut acc, &mut b);
        assert_eq!((a[0], b[0]), (990.0, 990.0));
    }
}
