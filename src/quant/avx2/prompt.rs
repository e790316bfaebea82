//! Prompt kernels: weight rows against many activation rows at once (`vec_dot_rows_tokens`),
//! where a dot per (row, token) would load and decode every block once per token. Each keeps
//! its `dot_*` twin's integer sums and float order, so every (row, token) gets that dot's bits.
//!
//! Q2_K … Q6_K, IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S and IQ4_XS go through
//! [`prompt_rows`]: a pair of rows decoded once, then every token run along them. Weights that
//! are small integers (|w| ≤ 62: all but IQ4_XS) become signed bytes against activations biased
//! by 128 ([`Decoded`]; IQ1_M with its delta signs, [`DeltaBlock`]); IQ4_XS's (±127) keep its
//! kernel's sign trick ([`SignedBlock`]). The blocks of 32 with Q8_0/Q8_1 activations (Q4_0,
//! Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, MXFP4) go through [`prompt_rows32`] the same way.

use super::*;

/// One super-block decoded for [`prompt_rows`]: each 32-weight sub-block's signed weights and
/// its scales (16 lanes), what activations biased by 128 add to the sums (the weights' products
/// with 128, in the same lanes), the block scale, and what a type's second term needs (IQ1_S:
/// the signed scales of its deltas; Q2_K, Q4_K, Q5_K: the mins and their scale), and Q6_K's
/// `q6k_offset_scales` (zero for the others).
struct Decoded {
    w: [__m256i; 8],
    ls: [__m256i; 8],
    corr: __m256i,
    offset: __m256i,
    d: f32,
    extra: f32,
    aux: __m128i,
}

/// A decoded block's products with a token's 32 activations of sub-block `ib`, as i32 lanes.
trait Lanes {
    /// The activations as the products take them, made once per token for the rows.
    unsafe fn prep(a: __m256i) -> __m256i;
    unsafe fn lanes(&self, ib: usize, a: __m256i) -> __m256i;
    /// The summed lanes made equal to the `dot_*` kernel's.
    unsafe fn fix(&self, sumi: __m256i) -> __m256i;
    fn scale(&self) -> f32;
    /// Whether a second set of lanes (IQ1_M's deltas) is summed, scaled and accumulated apart.
    const SECOND: bool = false;
    #[inline(always)]
    unsafe fn lanes2(&self, _ib: usize, _a: __m256i) -> __m256i {
        _mm256_setzero_si256()
    }
    #[inline(always)]
    unsafe fn fix2(&self, sumd: __m256i) -> __m256i {
        sumd
    }
}

impl Lanes for Decoded {
    #[inline(always)]
    unsafe fn prep(a: __m256i) -> __m256i {
        _mm256_xor_si256(a, _mm256_set1_epi8(-128))
    }
    #[inline(always)]
    unsafe fn lanes(&self, ib: usize, a: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(a, self.w[ib]), self.ls[ib])
    }
    #[inline(always)]
    unsafe fn fix(&self, sumi: __m256i) -> __m256i {
        _mm256_sub_epi32(sumi, self.corr)
    }
    fn scale(&self) -> f32 {
        self.d
    }
}

/// A block whose weights reach ±127 (IQ4_XS), decoded for the sign trick of its `dot_*`
/// kernel: magnitudes, the weights themselves (their signs go onto the raw activations), and
/// the scales.
struct SignedBlock {
    mag: [__m256i; 8],
    w: [__m256i; 8],
    ls: [__m256i; 8],
    d: f32,
}

impl Lanes for SignedBlock {
    #[inline(always)]
    unsafe fn prep(a: __m256i) -> __m256i {
        a
    }
    #[inline(always)]
    unsafe fn lanes(&self, ib: usize, a: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(self.mag[ib], _mm256_sign_epi8(a, self.w[ib])), self.ls[ib])
    }
    #[inline(always)]
    unsafe fn fix(&self, sumi: __m256i) -> __m256i {
        sumi
    }
    fn scale(&self) -> f32 {
        self.d
    }
}

/// An IQ1_M block: its lattice values with their scales and correction as a [`Decoded`], and
/// its delta signs (±1, so biased activations suit them too) with their correction.
struct DeltaBlock {
    base: Decoded,
    wd: [__m256i; 8],
    corrd: __m256i,
}

impl Lanes for DeltaBlock {
    #[inline(always)]
    unsafe fn prep(a: __m256i) -> __m256i {
        Decoded::prep(a)
    }
    #[inline(always)]
    unsafe fn lanes(&self, ib: usize, a: __m256i) -> __m256i {
        self.base.lanes(ib, a)
    }
    #[inline(always)]
    unsafe fn fix(&self, sumi: __m256i) -> __m256i {
        self.base.fix(sumi)
    }
    fn scale(&self) -> f32 {
        self.base.d
    }
    const SECOND: bool = true;
    #[inline(always)]
    unsafe fn lanes2(&self, ib: usize, a: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(a, self.wd[ib]), self.base.ls[ib])
    }
    #[inline(always)]
    unsafe fn fix2(&self, sumd: __m256i) -> __m256i {
        _mm256_sub_epi32(sumd, self.corrd)
    }
}

/// A weight type whose super-blocks decode for [`prompt_rows`].
trait PromptType: Block {
    type Dec: Lanes;
    /// Whether a second term per block (IQ1_S's deltas, the mins of Q2_K, Q4_K, Q5_K) is summed apart.
    const TERM: bool;
    unsafe fn decode(&self) -> Self::Dec;
    /// What a block's lane sums against a token's block start from (Q6_K's offset).
    #[inline(always)]
    unsafe fn start(_d: &Self::Dec, _by: &BlockQ8K) -> __m256i {
        _mm256_setzero_si256()
    }
    /// That term of a block against a token's block, as the `dot_*` kernel makes it.
    #[inline(always)]
    unsafe fn term(_d: &Self::Dec, _by: &BlockQ8K, _dy: f32) -> f32 {
        0.0
    }
    /// The dot from the lane accumulators and the terms' sum, in the `dot_*` kernel's order
    /// (here the mins' form; with no terms, `- 0` leaves every sum, −0 included, as it is).
    #[inline(always)]
    unsafe fn finish(acc: __m256, _acc2: __m256, terms: f32) -> f32 {
        hsum_ps(acc) - terms
    }
}

/// A block of weights and their scales with the bias correction made from them.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn decoded(w: [__m256i; 8], ls: [__m256i; 8], d: f32, extra: f32, aux: __m128i) -> Decoded {
    let bias = _mm256_set1_epi8(-128);
    let mut corr = _mm256_setzero_si256();
    for ib in 0..8 {
        corr = _mm256_add_epi32(corr, _mm256_madd_epi16(_mm256_maddubs_epi16(bias, w[ib]), ls[ib]));
    }
    Decoded { w, ls, corr, offset: _mm256_setzero_si256(), d, extra, aux }
}

/// Scales `2c + 1` of 3- or 4-bit codes, one per sub-block, over all 16 lanes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn odd_scales(codes: [u32; 8]) -> [__m256i; 8] {
    codes.map(|c| _mm256_set1_epi16((2 * c + 1) as i16))
}

impl PromptType for BlockIQ2XXS {
    type Dec = Decoded;
    const TERM: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&self) -> Decoded {
        let mut w = [_mm256_setzero_si256(); 8];
        let mut codes = [0u32; 8];
        for ib in 0..8 {
            let (g, s, a1) = iq2xxs_group(self, ib);
            w[ib] = _mm256_sign_epi8(g, s);
            codes[ib] = a1 >> 28;
        }
        decoded(w, odd_scales(codes), h2f(self.d), 0.0, _mm_setzero_si128())
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(acc: __m256, _acc2: __m256, _terms: f32) -> f32 {
        0.125 * hsum_ps(acc)
    }
}

impl PromptType for BlockIQ1S {
    type Dec = Decoded;
    const TERM: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&self) -> Decoded {
        let mut w = [_mm256_setzero_si256(); 8];
        let mut codes = [0u32; 8];
        for ib in 0..8 {
            let qh = rd_u16(self.qh.as_ptr().add(2 * ib)) as usize;
            let q = &self.qs[4 * ib..4 * ib + 4];
            let gi = |l: usize| q[l] as usize | (((qh >> (3 * l)) & 7) << 8);
            w[ib] = table4(&IQ1S_GRID, [gi(0), gi(1), gi(2), gi(3)]);
            codes[ib] = ((qh >> 12) & 7) as u32;
        }
        // `iq1s_delta_sum`'s scales, once per block.
        let qh = _mm_loadu_si128(self.qh.as_ptr() as *const __m128i);
        let ls = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(qh, 11), _mm_set1_epi16(0xe)), _mm_set1_epi16(1));
        let lsd = _mm_sign_epi16(ls, _mm_or_si128(qh, _mm_set1_epi16(1)));
        decoded(w, odd_scales(codes), h2f(self.d), 0.0, lsd)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn term(d: &Decoded, by: &BlockQ8K, dy: f32) -> f32 {
        // `iq1s_delta_sum`'s: |pair sums| ≤ 2 · 16 · 128, so i16 holds them.
        let bs = by.bsums.as_ptr() as *const __m128i;
        let pairs = _mm_hadd_epi16(_mm_loadu_si128(bs), _mm_loadu_si128(bs.add(1)));
        d.d * dy * hsum_epi32(_mm_madd_epi16(d.aux, pairs)) as f32
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(acc: __m256, _acc2: __m256, terms: f32) -> f32 {
        hsum_ps(acc) + 0.125 * terms
    }
}

impl PromptType for BlockIQ2XS {
    type Dec = Decoded;
    const TERM: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&self) -> Decoded {
        let mut w = [_mm256_setzero_si256(); 8];
        let mut ls = [_mm256_setzero_si256(); 8];
        let (picks, masks) = (iq2xs_sign_picks(), pair_masks());
        let scales = iq2_scales(&self.scales);
        for half in 0..2 {
            for (j, (g, s, l)) in iq2xs_groups(self, half, scales, &picks, &masks).into_iter().enumerate() {
                w[4 * half + j] = _mm256_sign_epi8(g, s);
                ls[4 * half + j] = l;
            }
        }
        decoded(w, ls, h2f(self.d), 0.0, _mm_setzero_si128())
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(acc: __m256, _acc2: __m256, _terms: f32) -> f32 {
        0.125 * hsum_ps(acc)
    }
}

impl PromptType for BlockIQ2S {
    type Dec = Decoded;
    const TERM: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&self) -> Decoded {
        let mut w = [_mm256_setzero_si256(); 8];
        let mut ls = [_mm256_setzero_si256(); 8];
        let masks = pair_masks();
        let scales = iq2_scales(&self.scales);
        for ib in 0..8 {
            let (g, s, l) = iq2s_group(self, ib, scales, &masks);
            w[ib] = _mm256_sign_epi8(g, s);
            ls[ib] = l;
        }
        decoded(w, ls, h2f(self.d), 0.0, _mm_setzero_si128())
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(acc: __m256, _acc2: __m256, _terms: f32) -> f32 {
        0.125 * hsum_ps(acc)
    }
}

impl PromptType for BlockIQ3XXS {
    type Dec = Decoded;
    const TERM: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&self) -> Decoded {
        let mut w = [_mm256_setzero_si256(); 8];
        let mut codes = [0u32; 8];
        for ib in 0..8 {
            let (g, s, code) = iq3xxs_group(self, ib);
            w[ib] = _mm256_sign_epi8(g, s);
            codes[ib] = code;
        }
        decoded(w, odd_scales(codes), h2f(self.d), 0.0, _mm_setzero_si128())
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(acc: __m256, _acc2: __m256, _terms: f32) -> f32 {
        0.25 * hsum_ps(acc)
    }
}

impl PromptType for BlockIQ3S {
    type Dec = Decoded;
    const TERM: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&self) -> Decoded {
        let mut w = [_mm256_setzero_si256(); 8];
        let mut codes = [0u32; 8];
        for ib in 0..8 {
            let (g, s, code) = iq3s_group(self, ib);
            w[ib] = _mm256_sign_epi8(g, s);
            codes[ib] = code;
        }
        decoded(w, odd_scales(codes), h2f(self.d), 0.0, _mm_setzero_si128())
    }
}

/// Q4_K's and Q5_K's mins term, as `dot_q4_k`/`dot_q5_k` make it.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k4_term(d: &Decoded, by: &BlockQ8K, dy: f32) -> f32 {
    dy * d.extra * k4_min_sum(d.aux, by) as f32
}

/// A Q4_K or Q5_K block: sub-block k is the low nibbles of byte group k/2 when k is even, else
/// the high ones, with (Q5_K) bit k of the 32 `qh` bytes above them.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k4_decoded(qs: &[u8; 128], qh: Option<&[u8; 32]>, scales: &[u8; 12], d: [u8; 2], dmin: [u8; 2]) -> Decoded {
    let m4 = _mm256_set1_epi8(0x0f);
    let one = _mm256_set1_epi8(1);
    let sm = k4_scales_mins(scales);
    let sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
    let mut w = [_mm256_setzero_si256(); 8];
    let mut ls = [_mm256_setzero_si256(); 8];
    for k in 0..8 {
        let q4 = loadu(qs.as_ptr().add(32 * (k / 2)));
        w[k] = _mm256_and_si256(if k % 2 == 0 { q4 } else { _mm256_srli_epi16(q4, 4) }, m4);
        if let Some(qh) = qh {
            let h = _mm256_and_si256(_mm256_srl_epi16(loadu(qh.as_ptr()), _mm_cvtsi32_si128(k as i32)), one);
            w[k] = _mm256_or_si256(w[k], _mm256_slli_epi16(h, 4));
        }
        ls[k] = _mm256_shuffle_epi8(sc, loadu(BROADCAST_I16[k].as_ptr()));
    }
    decoded(w, ls, h2f(d), h2f(dmin), sm)
}

impl PromptType for BlockQ4K {
    type Dec = Decoded;
    const TERM: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&self) -> Decoded {
        k4_decoded(&self.qs, None, &self.scales, self.d, self.dmin)
    }
    #[inline(always)]
    unsafe fn term(d: &Decoded, by: &BlockQ8K, dy: f32) -> f32 {
        k4_term(d, by, dy)
    }
}

impl PromptType for BlockQ5K {
    type Dec = Decoded;
    const TERM: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&self) -> Decoded {
        k4_decoded(&self.qs, Some(&self.qh), &self.scales, self.d, self.dmin)
    }
    #[inline(always)]
    unsafe fn term(d: &Decoded, by: &BlockQ8K, dy: f32) -> f32 {
        k4_term(d, by, dy)
    }
}

impl PromptType for BlockQ6K {
    type Dec = Decoded;
    const TERM: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&self) -> Decoded {
        let m4 = _mm256_set1_epi8(0x0f);
        let m2 = _mm256_set1_epi8(3);
        let masks = pair_masks();
        let mut w = [_mm256_setzero_si256(); 8];
        let mut ls = [_mm256_setzero_si256(); 8];
        // Half n, sub-block k: low (k < 2) or high nibbles of the (k mod 2)-th 32 ql bytes, bits
        // 2k, 2k+1 of the 32 qh bytes above them: the codes, weight + 32, as `dot_q6_k` takes
        // them, with its offset per token.
        for n in 0..2 {
            let scv = scale_pairs(self.scales.as_ptr().add(8 * n) as *const i8);
            let h = loadu(self.qh.as_ptr().add(32 * n));
            for k in 0..4 {
                let l = loadu(self.ql.as_ptr().add(64 * n + 32 * (k % 2)));
                let hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(h, _mm_cvtsi32_si128(2 * k as i32)), m2), 4);
                let lo = _mm256_and_si256(if k < 2 { l } else { _mm256_srli_epi16(l, 4) }, m4);
                w[4 * n + k] = _mm256_or_si256(lo, hi);
                ls[4 * n + k] = _mm256_shuffle_epi8(scv, masks[k]);
            }
        }
        let mut d = decoded(w, ls, h2f(self.d), 0.0, _mm_setzero_si128());
        d.offset = q6k_offset_scales(&self.scales);
        d
    }
    #[inline(always)]
    unsafe fn start(d: &Decoded, by: &BlockQ8K) -> __m256i {
        q6k_offset(d.offset, by)
    }
}

impl PromptType for BlockQ2K {
    type Dec = Decoded;
    const TERM: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&self) -> Decoded {
        let m3 = _mm256_set1_epi8(3);
        let m4 = _mm_set1_epi8(0xf);
        let masks = pair_masks();
        let sv = _mm_loadu_si128(self.scales.as_ptr() as *const __m128i);
        let mut w = [_mm256_setzero_si256(); 8];
        let mut ls = [_mm256_setzero_si256(); 8];
        for n in 0..2 {
            let q2 = loadu(self.qs.as_ptr().add(32 * n));
            let scv = byte_scale_pairs(_mm_and_si128(sv, m4), n);
            for j in 0..4 {
                w[4 * n + j] = _mm256_and_si256(_mm256_srl_epi16(q2, _mm_cvtsi32_si128(2 * j as i32)), m3);
                ls[4 * n + j] = _mm256_shuffle_epi8(scv, masks[j]);
            }
        }
        // The 16 mins (high nibbles) for the term.
        decoded(w, ls, h2f(self.d), h2f(self.dmin), _mm_and_si128(_mm_srli_epi16(sv, 4), m4))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn term(d: &Decoded, by: &BlockQ8K, dy: f32) -> f32 {
        let p = _mm256_madd_epi16(_mm256_cvtepu8_epi16(d.aux), loadu(by.bsums.as_ptr()));
        let summs = hsum_epi32(_mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1)));
        dy * d.extra * summs as f32
    }
}

impl PromptType for BlockQ3K {
    type Dec = Decoded;
    const TERM: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&self) -> Decoded {
        let m3 = _mm256_set1_epi8(3);
        let one = _mm256_set1_epi8(1);
        let masks = pair_masks();
        let r = q3k_scale_words(&self.scales);
        let sc = _mm_sub_epi8(_mm_set_epi32(r[3] as i32, r[2] as i32, r[1] as i32, r[0] as i32), _mm_set1_epi8(32));
        let hb = loadu(self.hmask.as_ptr());
        let mut w = [_mm256_setzero_si256(); 8];
        let mut ls = [_mm256_setzero_si256(); 8];
        for n in 0..2 {
            let q3 = loadu(self.qs.as_ptr().add(32 * n));
            let scv = byte_scale_pairs(sc, n);
            for j in 0..4 {
                let lo = _mm256_and_si256(_mm256_srl_epi16(q3, _mm_cvtsi32_si128(2 * j as i32)), m3);
                let bit = _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128((4 * n + j) as i32)), one);
                // q = lo − 4 where the high bit is clear.
                w[4 * n + j] = _mm256_sub_epi8(lo, _mm256_slli_epi16(_mm256_xor_si256(bit, one), 2));
                ls[4 * n + j] = _mm256_shuffle_epi8(scv, masks[j]);
            }
        }
        decoded(w, ls, h2f(self.d), 0.0, _mm_setzero_si128())
    }
}

impl PromptType for BlockIQ4XS {
    type Dec = SignedBlock;
    const TERM: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&self) -> SignedBlock {
        let values = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
        let m4 = _mm_set1_epi8(0x0f);
        let mut b = SignedBlock { mag: [_mm256_setzero_si256(); 8], w: [_mm256_setzero_si256(); 8], ls: [_mm256_setzero_si256(); 8], d: h2f(self.d) };
        for ib in 0..8 {
            let q = _mm_loadu_si128(self.qs.as_ptr().add(16 * ib) as *const __m128i);
            let lo = _mm_shuffle_epi8(values, _mm_and_si128(q, m4));
            let hi = _mm_shuffle_epi8(values, _mm_and_si128(_mm_srli_epi16(q, 4), m4));
            b.w[ib] = _mm256_set_m128i(hi, lo);
            b.mag[ib] = _mm256_sign_epi8(b.w[ib], b.w[ib]);
            b.ls[ib] = _mm256_set1_epi16(self.ls(ib) as i16);
        }
        b
    }
}

impl PromptType for BlockIQ1M {
    type Dec = DeltaBlock;
    const TERM: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&self) -> DeltaBlock {
        let bias = _mm256_set1_epi8(-128);
        let masks = pair_masks();
        let z = _mm256_setzero_si256();
        let (mut w, mut wd, mut ls) = ([z; 8], [z; 8], [z; 8]);
        let mut scv = z;
        for k in 0..4 {
            if k % 2 == 0 {
                scv = iq1m_scale_pairs(self, k);
            }
            for (h, &(g, dsv)) in iq1m_pair(self, k).iter().enumerate() {
                let ib = 2 * k + h;
                (w[ib], wd[ib]) = (g, dsv);
                ls[ib] = _mm256_shuffle_epi8(scv, masks[ib % 4]);
            }
        }
        let mut corrd = z;
        for ib in 0..8 {
            corrd = _mm256_add_epi32(corrd, _mm256_madd_epi16(_mm256_maddubs_epi16(bias, wd[ib]), ls[ib]));
        }
        DeltaBlock { base: decoded(w, ls, h2f(self.d_bits().to_le_bytes()), 0.0, _mm_setzero_si128()), wd, corrd }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(acc: __m256, acc2: __m256, _terms: f32) -> f32 {
        hsum_ps(acc) + 0.125 * hsum_ps(acc2)
    }
}

/// Rows of a [`PromptType`] against `n_tok` activation rows (`arb` bytes apart) into
/// `out[row * n_tok + t]`, `R` rows at a time. The `R` rows are decoded once (the decoding is
/// most of a dot's work) for all the tokens; then each token runs along them, its activations
/// loaded (and, for [`Decoded`], biased by 128 into the unsigned operand of `maddubs`: |w| ≤ 62,
/// so no pair saturates) once for the `R` rows, and the bias's products, made once per block,
/// come off again. Every lane's integer sum is then the `dot_*` kernel's and so is the float
/// order: the results are its bits.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prompt_rows<B: PromptType, const R: usize>(rb: usize, w: &[u8], acts: &[u8], arb: usize, n_tok: usize, out: &mut [f32]) {
    let rows = w.len() / rb;
    let nb = rb / std::mem::size_of::<B>();
    // SAFETY (zeroed): the decoded blocks are vectors and f32s, for which zero bits are valid.
    let mut dec: Vec<[B::Dec; R]> = (0..nb).map(|_| std::mem::zeroed()).collect();
    let mut r = 0;
    while r < rows {
        let nr = (rows - r).min(R);
        for i in 0..nr {
            for (j, bx) in as_blocks::<B>(&w[(r + i) * rb..][..rb]).iter().enumerate() {
                dec[j][i] = bx.decode();
            }
        }
        for t in 0..n_tok {
            let y: &[BlockQ8K] = as_blocks(&acts[t * arb..][..arb]);
            let mut acc = [_mm256_setzero_ps(); R];
            let mut acc2 = [_mm256_setzero_ps(); R];
            let mut terms = [0f32; R];
            for (d, by) in dec.iter().zip(y) {
                let mut sumi: [__m256i; R] = std::array::from_fn(|i| B::start(&d[i], by));
                let mut sumd = [_mm256_setzero_si256(); R];
                for ib in 0..8 {
                    let a = B::Dec::prep(loadu(by.qs.as_ptr().add(32 * ib)));
                    for i in 0..R {
                        sumi[i] = _mm256_add_epi32(sumi[i], d[i].lanes(ib, a));
                        if B::Dec::SECOND {
                            sumd[i] = _mm256_add_epi32(sumd[i], d[i].lanes2(ib, a));
                        }
                    }
                }
                let dy = by.d();
                for i in 0..R {
                    let dd = _mm256_set1_ps(d[i].scale() * dy);
                    acc[i] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(d[i].fix(sumi[i])), acc[i]);
                    if B::Dec::SECOND {
                        acc2[i] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(d[i].fix2(sumd[i])), acc2[i]);
                    }
                    if B::TERM {
                        terms[i] += B::term(&d[i], by, dy);
                    }
                }
            }
            for i in 0..nr {
                out[(r + i) * n_tok + t] = B::finish(acc[i], acc2[i], terms[i]);
            }
        }
        r += nr;
    }
}

/// The activation blocks of the 32-weight types: Q8_0, and Q8_1 with its `d · Σq` for a min.
trait Act32: Block {
    fn qs(&self) -> *const u8;
    fn d(&self) -> f32;
    fn s(&self) -> f32;
}

impl Act32 for BlockQ8_0 {
    fn qs(&self) -> *const u8 {
        self.qs.as_ptr()
    }
    fn d(&self) -> f32 {
        h2f(self.d)
    }
    fn s(&self) -> f32 {
        0.0
    }
}

impl Act32 for BlockQ8_1 {
    fn qs(&self) -> *const u8 {
        self.qs.as_ptr()
    }
    fn d(&self) -> f32 {
        h2f(self.d)
    }
    fn s(&self) -> f32 {
        h2f(self.s)
    }
}

/// A block of 32 weights with one scale (the legacy types, IQ4_NL, MXFP4), as its `dot_*`
/// multiplies it: signed bytes by the sign trick, or unsigned bytes as they are.
trait Prompt32: Block {
    type Act: Act32;
    const SIGNED: bool;
    /// Whether a min (`m`, times the activation block's `s`) is summed apart (Q4_1, Q5_1).
    const MINS: bool;
    unsafe fn weights(&self) -> __m256i;
    fn scale(&self) -> f32;
    fn min(&self) -> f32 {
        0.0
    }
}

macro_rules! prompt32 {
    ($($b:ty, $act:ty, $signed:expr, $mins:expr, |$x:ident| $w:expr, $d:expr, $m:expr;)*) => {$(
        impl Prompt32 for $b {
            type Act = $act;
            const SIGNED: bool = $signed;
            const MINS: bool = $mins;
            #[inline]
            #[target_feature(enable = "avx2")]
            unsafe fn weights(&self) -> __m256i {
                let $x = self;
                $w
            }
            fn scale(&self) -> f32 {
                let $x = self;
                $d
            }
            #[allow(unused_variables)]
            fn min(&self) -> f32 {
                let $x = self;
                $m
            }
        }
    )*};
}

prompt32!(
    BlockQ4_0, BlockQ8_0, true, false, |b| q4_0_bytes(b), h2f(b.d), 0.0;
    BlockQ4_1, BlockQ8_1, false, true, |b| nibbles32(b.qs.as_ptr()), h2f(b.d), h2f(b.m);
    BlockQ5_0, BlockQ8_0, true, false, |b| q5_0_bytes(b), h2f(b.d), 0.0;
    BlockQ5_1, BlockQ8_1, false, true, |b| q5_1_bytes(b), h2f(b.d), h2f(b.m);
    BlockQ8_0, BlockQ8_0, true, false, |b| loadu(b.qs.as_ptr()), h2f(b.d), 0.0;
    BlockIQ4NL, BlockQ8_0, true, false,
        |b| lut_bytes(&b.qs, _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i)), h2f(b.d), 0.0;
    BlockMXFP4, BlockQ8_0, true, false,
        |b| lut_bytes(&b.qs, _mm_loadu_si128(KVALUES_MXFP4.as_ptr() as *const __m128i)), e8m0_to_f32_half(b.e), 0.0;
);

/// A [`Prompt32`] block decoded once for every token: the bytes `maddubs` takes unsigned (the
/// magnitudes of signed weights) and what signs the activations (the signed weights), scale
/// and min.
#[derive(Clone, Copy)]
struct Dec32 {
    w: __m256i,
    sign: __m256i,
    d: f32,
    m: f32,
}

/// [`prompt_rows`] for the blocks of 32 with one activation scale per 32: the `R` rows decoded
/// once (nibbles unpacked or looked up, scales converted), then every token run along them, its
/// activation block loaded and its scales converted once for the `R` rows. Per (row, token) the
/// `dot_*` kernel's integer sums, products and float order: its bits.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prompt_rows32<B: Prompt32, const R: usize>(rb: usize, w: &[u8], acts: &[u8], arb: usize, n_tok: usize, out: &mut [f32]) {
    let rows = w.len() / rb;
    let z = Dec32 { w: _mm256_setzero_si256(), sign: _mm256_setzero_si256(), d: 0.0, m: 0.0 };
    let nb = rb / std::mem::size_of::<B>();
    let mut dec = vec![[z; R]; nb];
    // The activation blocks' scales (and Q8_1's sums) as f32, converted once for all the rows.
    let mut scales = Vec::with_capacity(n_tok * nb);
    for t in 0..n_tok {
        let y: &[B::Act] = as_blocks(&acts[t * arb..][..arb]);
        scales.extend(y.iter().map(|by| (by.d(), by.s())));
    }
    let ones = _mm256_set1_epi16(1);
    let mut r = 0;
    while r < rows {
        let nr = (rows - r).min(R);
        for i in 0..nr {
            for (j, bx) in as_blocks::<B>(&w[(r + i) * rb..][..rb]).iter().enumerate() {
                let q = bx.weights();
                let w = if B::SIGNED { _mm256_sign_epi8(q, q) } else { q };
                dec[j][i] = Dec32 { w, sign: q, d: bx.scale(), m: bx.min() };
            }
        }
        for t in 0..n_tok {
            let y: &[B::Act] = as_blocks(&acts[t * arb..][..arb]);
            let mut acc = [_mm256_setzero_ps(); R];
            let mut summs = [0f32; R];
            for ((d, by), &(da, sa)) in dec.iter().zip(y).zip(&scales[t * nb..(t + 1) * nb]) {
                let a = loadu(by.qs());
                for i in 0..R {
                    let p = if B::SIGNED {
                        _mm256_maddubs_epi16(d[i].w, _mm256_sign_epi8(a, d[i].sign))
                    } else {
                        _mm256_maddubs_epi16(d[i].w, a)
                    };
                    let p = _mm256_madd_epi16(p, ones);
                    acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(d[i].d * da), _mm256_cvtepi32_ps(p), acc[i]);
                    if B::MINS {
                        summs[i] += d[i].m * sa;
                    }
                }
            }
            for i in 0..nr {
                out[(r + i) * n_tok + t] = if B::MINS { hsum_ps(acc[i]) + summs[i] } else { hsum_ps(acc[i]) };
            }
        }
        r += nr;
    }
}

/// Several weight rows (`rb` bytes each) against several activation rows at once, into
/// `out[row * n_tok + t]`; false when there is no such kernel for `ty` here (the caller goes
/// token by token). Sizes are already checked by the caller.
pub fn vec_dot_rows_tokens(ty: GgmlType, rb: usize, w: &[u8], acts: &[u8], arb: usize, n_tok: usize, out: &mut [f32]) -> bool {
    if !available() {
        return false;
    }
    let f = match ty {
        GgmlType::IQ2_XXS => prompt_rows::<BlockIQ2XXS, 2>,
        GgmlType::IQ1_S => prompt_rows::<BlockIQ1S, 2>,
        GgmlType::IQ1_M => prompt_rows::<BlockIQ1M, 2>,
        GgmlType::IQ2_XS => prompt_rows::<BlockIQ2XS, 2>,
        GgmlType::IQ2_S => prompt_rows::<BlockIQ2S, 2>,
        GgmlType::IQ3_XXS => prompt_rows::<BlockIQ3XXS, 2>,
        GgmlType::IQ3_S => prompt_rows::<BlockIQ3S, 2>,
        GgmlType::IQ4_XS => prompt_rows::<BlockIQ4XS, 2>,
        GgmlType::Q2_K => prompt_rows::<BlockQ2K, 2>,
        GgmlType::Q3_K => prompt_rows::<BlockQ3K, 2>,
        GgmlType::Q4_K => prompt_rows::<BlockQ4K, 2>,
        GgmlType::Q5_K => prompt_rows::<BlockQ5K, 2>,
        GgmlType::Q6_K => prompt_rows::<BlockQ6K, 2>,
        GgmlType::Q4_0 => prompt_rows32::<BlockQ4_0, 2>,
        GgmlType::Q4_1 => prompt_rows32::<BlockQ4_1, 2>,
        GgmlType::Q5_0 => prompt_rows32::<BlockQ5_0, 2>,
        GgmlType::Q5_1 => prompt_rows32::<BlockQ5_1, 2>,
        GgmlType::Q8_0 => prompt_rows32::<BlockQ8_0, 2>,
        GgmlType::IQ4_NL => prompt_rows32::<BlockIQ4NL, 2>,
        GgmlType::MXFP4 => prompt_rows32::<BlockMXFP4, 2>,
        _ => return false,
    };
    // SAFETY: the CPU features were checked above; the block views come from checked sizes.
    unsafe { f(rb, w, acts, arb, n_tok, out) };
    true
}

