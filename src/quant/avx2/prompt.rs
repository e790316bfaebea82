//! Prompt kernels: weight rows against many activation rows at once (`vec_dot_rows_tokens`),
//! where a dot per (row, token) would load and decode every block once per token. Each keeps
//! its `dot_*` twin's integer sums and float order, so every (row, token) gets that dot's bits.
//!
//! - K-quants (Q4_K, Q5_K, Q6_K): tiles of 2 rows × 4 tokens in registers.
//! - IQ types whose lattice values are small (IQ1_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S): a
//!   pair of rows decoded once into signed bytes for every token ([`prompt_rows`]).

use super::*;

/// One super-block decoded for [`prompt_rows`]: each 32-weight sub-block's signed weights and
/// its scale (16 lanes), what activations biased by 128 add to the sums (the weights' products
/// with 128, in the same lanes), the block scale, and for IQ1_S the signed scales of the deltas.
struct Decoded {
    w: [__m256i; 8],
    ls: [__m256i; 8],
    corr: __m256i,
    d: f32,
    lsd: __m128i,
}

/// A weight type whose super-blocks decode to signed bytes (|w| ≤ 62) with a scale per 16 lanes.
trait PromptType: Block {
    /// Whether a delta term (IQ1_S) adds `dx·dy·Σ lsd·bsums` per block beside the lanes.
    const DELTA: bool;
    unsafe fn decode(&self) -> Decoded;
    /// The dot from the lane accumulator and the delta sum, in the `dot_*` kernel's order.
    unsafe fn finish(acc: __m256, accd: f32) -> f32;
}

/// A block of weights and their scales with the bias correction made from them.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn decoded(w: [__m256i; 8], ls: [__m256i; 8], d: f32, lsd: __m128i) -> Decoded {
    let bias = _mm256_set1_epi8(-128);
    let mut corr = _mm256_setzero_si256();
    for ib in 0..8 {
        corr = _mm256_add_epi32(corr, _mm256_madd_epi16(_mm256_maddubs_epi16(bias, w[ib]), ls[ib]));
    }
    Decoded { w, ls, corr, d, lsd }
}

/// Scales `2c + 1` of 3- or 4-bit codes, one per sub-block, over all 16 lanes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn odd_scales(codes: [u32; 8]) -> [__m256i; 8] {
    codes.map(|c| _mm256_set1_epi16((2 * c + 1) as i16))
}

impl PromptType for BlockIQ2XXS {
    const DELTA: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&self) -> Decoded {
        let mut w = [_mm256_setzero_si256(); 8];
        let mut codes = [0u32; 8];
        for ib in 0..8 {
            let q = &self.qs[8 * ib..8 * ib + 8];
            let a1 = rd_u32(q.as_ptr().add(4));
            let g = _mm256_set_epi64x(
                IQ2XXS_GRID[q[3] as usize] as i64,
                IQ2XXS_GRID[q[2] as usize] as i64,
                IQ2XXS_GRID[q[1] as usize] as i64,
                IQ2XXS_GRID[q[0] as usize] as i64,
            );
            let s = _mm256_set_epi64x(
                KEVEN_SIGNS[((a1 >> 21) & 127) as usize] as i64,
                KEVEN_SIGNS[((a1 >> 14) & 127) as usize] as i64,
                KEVEN_SIGNS[((a1 >> 7) & 127) as usize] as i64,
                KEVEN_SIGNS[(a1 & 127) as usize] as i64,
            );
            w[ib] = _mm256_sign_epi8(g, s);
            codes[ib] = a1 >> 28;
        }
        decoded(w, odd_scales(codes), h2f(self.d), _mm_setzero_si128())
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(acc: __m256, _accd: f32) -> f32 {
        0.125 * hsum_ps(acc)
    }
}

impl PromptType for BlockIQ1S {
    const DELTA: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&self) -> Decoded {
        let mut w = [_mm256_setzero_si256(); 8];
        let mut codes = [0u32; 8];
        for ib in 0..8 {
            let qh = rd_u16(self.qh.as_ptr().add(2 * ib)) as usize;
            let q = &self.qs[4 * ib..4 * ib + 4];
            let gi = |l: usize| IQ1S_GRID[q[l] as usize | (((qh >> (3 * l)) & 7) << 8)];
            w[ib] = set_u64x4(gi(0), gi(1), gi(2), gi(3));
            codes[ib] = ((qh >> 12) & 7) as u32;
        }
        // `iq1s_delta_sum`'s scales, once per block.
        let qh = _mm_loadu_si128(self.qh.as_ptr() as *const __m128i);
        let ls = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(qh, 11), _mm_set1_epi16(0xe)), _mm_set1_epi16(1));
        let lsd = _mm_sign_epi16(ls, _mm_or_si128(qh, _mm_set1_epi16(1)));
        decoded(w, odd_scales(codes), h2f(self.d), lsd)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(acc: __m256, accd: f32) -> f32 {
        hsum_ps(acc) + 0.125 * accd
    }
}

impl PromptType for BlockIQ2XS {
    const DELTA: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&self) -> Decoded {
        let picks = iq2xs_sign_picks();
        let masks = pair_masks();
        let mut w = [_mm256_setzero_si256(); 8];
        let mut ls = [_mm256_setzero_si256(); 8];
        let mut idx = [0u16; 16];
        let scales = iq2_scales(&self.scales);
        for half in 0..2 {
            let scv = byte_scale_pairs(scales, half);
            let q = loadu(self.qs.as_ptr().add(32 * half));
            _mm256_storeu_si256(idx.as_mut_ptr() as *mut __m256i, _mm256_and_si256(q, _mm256_set1_epi16(511)));
            let signs = ksigns16(_mm256_srli_epi16(q, 9));
            let sg = [_mm256_permute2x128_si256(signs, signs, 0x00), _mm256_permute2x128_si256(signs, signs, 0x11)];
            for j in 0..4 {
                let g = set_u64x4(
                    IQ2XS_GRID[idx[4 * j] as usize],
                    IQ2XS_GRID[idx[4 * j + 1] as usize],
                    IQ2XS_GRID[idx[4 * j + 2] as usize],
                    IQ2XS_GRID[idx[4 * j + 3] as usize],
                );
                w[4 * half + j] = _mm256_sign_epi8(g, sign_bytes32(sg[j / 2], picks[j % 2]));
                ls[4 * half + j] = _mm256_shuffle_epi8(scv, masks[j]);
            }
        }
        decoded(w, ls, h2f(self.d), _mm_setzero_si128())
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(acc: __m256, _accd: f32) -> f32 {
        0.125 * hsum_ps(acc)
    }
}

impl PromptType for BlockIQ2S {
    const DELTA: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&self) -> Decoded {
        let masks = pair_masks();
        let mut w = [_mm256_setzero_si256(); 8];
        let mut ls = [_mm256_setzero_si256(); 8];
        let scales = iq2_scales(&self.scales);
        for ib in 0..8 {
            let qh = self.qh[ib] as usize;
            let idx = |l: usize| self.qs[4 * ib + l] as usize | ((qh << (8 - 2 * l)) & 0x300);
            let g = set_u64x4(IQ2S_GRID[idx(0)], IQ2S_GRID[idx(1)], IQ2S_GRID[idx(2)], IQ2S_GRID[idx(3)]);
            w[ib] = _mm256_sign_epi8(g, sign_bytes4(self.qs.as_ptr().add(32 + 4 * ib)));
            ls[ib] = _mm256_shuffle_epi8(byte_scale_pairs(scales, ib / 4), masks[ib % 4]);
        }
        decoded(w, ls, h2f(self.d), _mm_setzero_si128())
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(acc: __m256, _accd: f32) -> f32 {
        0.125 * hsum_ps(acc)
    }
}

impl PromptType for BlockIQ3XXS {
    const DELTA: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&self) -> Decoded {
        let mut w = [_mm256_setzero_si256(); 8];
        let mut codes = [0u32; 8];
        for ib in 0..8 {
            let q = &self.qs[8 * ib..8 * ib + 8];
            let gi = |k: usize| IQ3XXS_GRID[q[k] as usize] as i32;
            let g = _mm256_set_epi32(gi(7), gi(6), gi(5), gi(4), gi(3), gi(2), gi(1), gi(0));
            let aux = rd_u32(self.qs.as_ptr().add(64 + 4 * ib));
            let s = set_u64x4(
                KEVEN_SIGNS[(aux & 127) as usize],
                KEVEN_SIGNS[((aux >> 7) & 127) as usize],
                KEVEN_SIGNS[((aux >> 14) & 127) as usize],
                KEVEN_SIGNS[((aux >> 21) & 127) as usize],
            );
            w[ib] = _mm256_sign_epi8(g, s);
            codes[ib] = aux >> 28;
        }
        decoded(w, odd_scales(codes), h2f(self.d), _mm_setzero_si128())
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(acc: __m256, _accd: f32) -> f32 {
        0.25 * hsum_ps(acc)
    }
}

impl PromptType for BlockIQ3S {
    const DELTA: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&self) -> Decoded {
        let mut w = [_mm256_setzero_si256(); 8];
        let mut codes = [0u32; 8];
        for ib in 0..8 {
            let q = &self.qs[8 * ib..8 * ib + 8];
            let qh = self.qh[ib] as usize;
            let gi = |k: usize| IQ3S_GRID[q[k] as usize | (((qh >> k) & 1) << 8)] as i32;
            let g = _mm256_set_epi32(gi(7), gi(6), gi(5), gi(4), gi(3), gi(2), gi(1), gi(0));
            w[ib] = _mm256_sign_epi8(g, sign_bytes4(self.signs.as_ptr().add(4 * ib)));
            let sc = self.scales[ib / 2] as u32;
            codes[ib] = if ib % 2 == 0 { sc & 0xf } else { sc >> 4 };
        }
        decoded(w, odd_scales(codes), h2f(self.d), _mm_setzero_si128())
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(acc: __m256, _accd: f32) -> f32 {
        hsum_ps(acc)
    }
}

/// Rows of an IQ type against `n_tok` activation rows (`arb` bytes apart) into
/// `out[row * n_tok + t]`, `R` rows at a time. The `R` rows are decoded once, into signed weights
/// (the decoding is most of a dot's work), for all the tokens; then each token runs along them,
/// its activations biased by 128 to the unsigned operand of `maddubs` (|w| ≤ 62, so no pair
/// saturates) and loaded once for the `R` rows, and the bias's products, made once per block,
/// come off again. Every lane's integer sum is then the `dot_*` kernel's and so is the float
/// order: the results are its bits.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prompt_rows<B: PromptType, const R: usize>(rb: usize, w: &[u8], acts: &[u8], arb: usize, n_tok: usize, out: &mut [f32]) {
    let rows = w.len() / rb;
    let nb = rb / std::mem::size_of::<B>();
    let bias = _mm256_set1_epi8(-128);
    // SAFETY (zeroed): Decoded is vectors and an f32, for which zero bits are valid.
    let mut dec: Vec<[Decoded; R]> = (0..nb).map(|_| std::mem::zeroed()).collect();
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
            let mut accd = [0f32; R];
            for (d, by) in dec.iter().zip(y) {
                let mut sumi = [_mm256_setzero_si256(); R];
                for ib in 0..8 {
                    let a = _mm256_xor_si256(loadu(by.qs.as_ptr().add(32 * ib)), bias);
                    for i in 0..R {
                        let p = _mm256_maddubs_epi16(a, d[i].w[ib]);
                        sumi[i] = _mm256_add_epi32(sumi[i], _mm256_madd_epi16(p, d[i].ls[ib]));
                    }
                }
                // |pair sums| ≤ 2 · 16 · 128, so i16 holds them.
                let bs = by.bsums.as_ptr() as *const __m128i;
                let pairs = if B::DELTA { _mm_hadd_epi16(_mm_loadu_si128(bs), _mm_loadu_si128(bs.add(1))) } else { _mm_setzero_si128() };
                let dy = by.d();
                for i in 0..R {
                    let dd = d[i].d * dy;
                    let s = _mm256_sub_epi32(sumi[i], d[i].corr);
                    acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(s), acc[i]);
                    if B::DELTA {
                        accd[i] += dd * hsum_epi32(_mm_madd_epi16(d[i].lsd, pairs)) as f32;
                    }
                }
            }
            for i in 0..nr {
                out[(r + i) * n_tok + t] = B::finish(acc[i], accd[i]);
            }
        }
        r += nr;
    }
}

/// A tile's block step: `acc[i][t] += (dy[t] · dx[i]) · sumi[i][t]`, the scales multiplied in
/// the `dot_*` kernels' order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_fma<const R: usize, const T: usize>(acc: &mut [[__m256; T]; R], sumi: &[[__m256i; T]; R], dx: [f32; R], dy: [f32; T]) {
    for i in 0..R {
        for t in 0..T {
            acc[i][t] = _mm256_fmadd_ps(_mm256_set1_ps(dy[t] * dx[i]), _mm256_cvtepi32_ps(sumi[i][t]), acc[i][t]);
        }
    }
}

/// A tile's results: each accumulator's lanes summed, minus the tile's min terms (subtracting
/// 0 leaves every value, −0 included, as it is).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_sums<const R: usize, const T: usize>(acc: &[[__m256; T]; R], mins: &[[f32; T]; R]) -> [[f32; T]; R] {
    let mut out = [[0f32; T]; R];
    for i in 0..R {
        for t in 0..T {
            out[i][t] = hsum_ps(acc[i][t]) - mins[i][t];
        }
    }
    out
}

/// Q4_K rows × tokens in tiles of `R` rows and `T` tokens: each 32-byte load of a token's
/// activations serves the `R` rows and each row's unpacked nibbles serve the `T` tokens, where
/// a dot per (row, token) loads both for every product. Each (row, token) keeps `dot_q4_k`'s
/// integer sums and float order, so its result is that dot's bits.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_q4_k<const R: usize, const T: usize>(x: [&[BlockQ4K]; R], y: [&[BlockQ8K]; T]) -> [[f32; T]; R] {
    let m4 = _mm256_set1_epi8(0x0f);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut mins = [[0f32; T]; R];
    for j in 0..x[0].len() {
        let mut sc = [_mm256_setzero_si256(); R];
        let mut sumi = [[_mm256_setzero_si256(); T]; R];
        for i in 0..R {
            let sm = k4_scales_mins(&x[i][j].scales);
            sc[i] = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
            let dmin = h2f(x[i][j].dmin);
            for t in 0..T {
                mins[i][t] += y[t][j].d() * dmin * k4_min_sum(sm, &y[t][j]) as f32;
            }
        }
        // Sub-blocks of 32: k even takes the low nibbles of byte group k/2, k odd the high.
        for k in 0..8 {
            let mut q = [_mm256_setzero_si256(); R];
            let mut s = [_mm256_setzero_si256(); R];
            for i in 0..R {
                let q4 = loadu(x[i][j].qs.as_ptr().add(32 * (k / 2)));
                q[i] = _mm256_and_si256(if k % 2 == 0 { q4 } else { _mm256_srli_epi16(q4, 4) }, m4);
                s[i] = _mm256_shuffle_epi8(sc[i], loadu(BROADCAST_I16[k].as_ptr()));
            }
            for t in 0..T {
                let a = loadu(y[t][j].qs.as_ptr().add(32 * k));
                for i in 0..R {
                    sumi[i][t] = _mm256_add_epi32(sumi[i][t], _mm256_madd_epi16(_mm256_maddubs_epi16(q[i], a), s[i]));
                }
            }
        }
        tile_fma(&mut acc, &sumi, x.map(|r| h2f(r[j].d)), y.map(|a| a[j].d()));
    }
    tile_sums(&acc, &mins)
}

/// Q5_K as [`tile_q4_k`] does Q4_K, each sub-block's fifth bits (bit k of the 32 qh bytes)
/// put above the nibbles once for the `T` tokens.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_q5_k<const R: usize, const T: usize>(x: [&[BlockQ5K]; R], y: [&[BlockQ8K]; T]) -> [[f32; T]; R] {
    let m4 = _mm256_set1_epi8(0x0f);
    let one = _mm256_set1_epi8(1);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut mins = [[0f32; T]; R];
    for j in 0..x[0].len() {
        let mut sc = [_mm256_setzero_si256(); R];
        let mut hb = [_mm256_setzero_si256(); R];
        let mut sumi = [[_mm256_setzero_si256(); T]; R];
        for i in 0..R {
            let sm = k4_scales_mins(&x[i][j].scales);
            sc[i] = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
            hb[i] = loadu(x[i][j].qh.as_ptr());
            let dmin = h2f(x[i][j].dmin);
            for t in 0..T {
                mins[i][t] += y[t][j].d() * dmin * k4_min_sum(sm, &y[t][j]) as f32;
            }
        }
        for k in 0..8 {
            let mut q = [_mm256_setzero_si256(); R];
            let mut s = [_mm256_setzero_si256(); R];
            for i in 0..R {
                let q4 = loadu(x[i][j].qs.as_ptr().add(32 * (k / 2)));
                let lo = _mm256_and_si256(if k % 2 == 0 { q4 } else { _mm256_srli_epi16(q4, 4) }, m4);
                let h = _mm256_and_si256(_mm256_srl_epi16(hb[i], _mm_cvtsi32_si128(k as i32)), one);
                q[i] = _mm256_or_si256(lo, _mm256_slli_epi16(h, 4));
                s[i] = _mm256_shuffle_epi8(sc[i], loadu(BROADCAST_I16[k].as_ptr()));
            }
            for t in 0..T {
                let a = loadu(y[t][j].qs.as_ptr().add(32 * k));
                for i in 0..R {
                    sumi[i][t] = _mm256_add_epi32(sumi[i][t], _mm256_madd_epi16(_mm256_maddubs_epi16(q[i], a), s[i]));
                }
            }
        }
        tile_fma(&mut acc, &sumi, x.map(|r| h2f(r[j].d)), y.map(|a| a[j].d()));
    }
    tile_sums(&acc, &mins)
}

/// Q6_K as [`tile_q4_k`] does Q4_K; the −32 offset's term (32 times the activations' pair
/// sums) depends on the token alone and is made once for the `R` rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_q6_k<const R: usize, const T: usize>(x: [&[BlockQ6K]; R], y: [&[BlockQ8K]; T]) -> [[f32; T]; R] {
    let m4 = _mm256_set1_epi8(0x0f);
    let m2 = _mm256_set1_epi8(3);
    let m32 = _mm256_set1_epi8(32);
    let masks = pair_masks();
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for j in 0..x[0].len() {
        let mut sumi = [[_mm256_setzero_si256(); T]; R];
        for n in 0..2 {
            let mut scv = [_mm256_setzero_si256(); R];
            for i in 0..R {
                scv[i] = scale_pairs(x[i][j].scales.as_ptr().add(8 * n) as *const i8);
            }
            // Sub-block k of this half: low (k < 2) or high nibbles of the k-th 32 ql bytes
            // (mod 2), with bits 2k, 2k+1 of the 32 qh bytes above them.
            for k in 0..4 {
                let mut q = [_mm256_setzero_si256(); R];
                let mut sc = [_mm256_setzero_si256(); R];
                for i in 0..R {
                    let bx = &x[i][j];
                    let l = loadu(bx.ql.as_ptr().add(64 * n + 32 * (k % 2)));
                    let h = loadu(bx.qh.as_ptr().add(32 * n));
                    let hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(h, _mm_cvtsi32_si128(2 * k as i32)), m2), 4);
                    let lo = if k < 2 { l } else { _mm256_srli_epi16(l, 4) };
                    q[i] = _mm256_or_si256(_mm256_and_si256(lo, m4), hi);
                    sc[i] = _mm256_shuffle_epi8(scv[i], masks[k]);
                }
                for t in 0..T {
                    let a = loadu(y[t][j].qs.as_ptr().add(128 * n + 32 * k));
                    let off = _mm256_maddubs_epi16(m32, a);
                    for i in 0..R {
                        let p = _mm256_sub_epi16(_mm256_maddubs_epi16(q[i], a), off);
                        sumi[i][t] = _mm256_add_epi32(sumi[i][t], _mm256_madd_epi16(p, sc[i]));
                    }
                }
            }
        }
        tile_fma(&mut acc, &sumi, x.map(|r| h2f(r[j].d)), y.map(|a| a[j].d()));
    }
    tile_sums(&acc, &[[0.0; T]; R])
}

/// One tile of [`tiled_rows_tokens`]: rows `r + ri…` against tokens `t + ti…`.
macro_rules! run_tile {
    ($tile:ident, $row:ident, $tok:ident, $out:ident, $r:ident, $t:ident, $n_tok:ident; $($ri:literal),+; $($ti:literal),+) => {{
        let v = $tile([$($row($r + $ri)),+], [$($tok($t + $ti)),+]);
        for (i, vr) in v.iter().enumerate() {
            $out[($r + i) * $n_tok + $t..][..vr.len()].copy_from_slice(vr);
        }
    }};
}

/// Rows of a block type against `n_tok` activation rows in tiles of 2 rows × 4 tokens (smaller
/// at the edges) of its `tile_*` kernel, into `out[row * n_tok + t]`.
macro_rules! tiled_rows_tokens {
    ($($name:ident => $tile:ident, $block:ty;)*) => {$(
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name(rb: usize, w: &[u8], acts: &[u8], arb: usize, n_tok: usize, out: &mut [f32]) {
            let rows = w.len() / rb;
            let row = |r: usize| as_blocks::<$block>(&w[r * rb..(r + 1) * rb]);
            let tok = |t: usize| as_blocks::<BlockQ8K>(&acts[t * arb..(t + 1) * arb]);
            let mut r = 0;
            while r < rows {
                let nr = (rows - r).min(2);
                let mut t = 0;
                while t < n_tok {
                    let nt = (n_tok - t).min(4);
                    match (nr, nt) {
                        (2, 4) => run_tile!($tile, row, tok, out, r, t, n_tok; 0, 1; 0, 1, 2, 3),
                        (2, 3) => run_tile!($tile, row, tok, out, r, t, n_tok; 0, 1; 0, 1, 2),
                        (2, 2) => run_tile!($tile, row, tok, out, r, t, n_tok; 0, 1; 0, 1),
                        (2, _) => run_tile!($tile, row, tok, out, r, t, n_tok; 0, 1; 0),
                        (_, 4) => run_tile!($tile, row, tok, out, r, t, n_tok; 0; 0, 1, 2, 3),
                        (_, 3) => run_tile!($tile, row, tok, out, r, t, n_tok; 0; 0, 1, 2),
                        (_, 2) => run_tile!($tile, row, tok, out, r, t, n_tok; 0; 0, 1),
                        (_, _) => run_tile!($tile, row, tok, out, r, t, n_tok; 0; 0),
                    }
                    t += nt;
                }
                r += nr;
            }
        }
    )*};
}

tiled_rows_tokens! {
    rows_tokens_q4_k => tile_q4_k, BlockQ4K;
    rows_tokens_q5_k => tile_q5_k, BlockQ5K;
    rows_tokens_q6_k => tile_q6_k, BlockQ6K;
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
        GgmlType::IQ2_XS => prompt_rows::<BlockIQ2XS, 2>,
        GgmlType::IQ2_S => prompt_rows::<BlockIQ2S, 2>,
        GgmlType::IQ3_XXS => prompt_rows::<BlockIQ3XXS, 2>,
        GgmlType::IQ3_S => prompt_rows::<BlockIQ3S, 2>,
        GgmlType::Q4_K => rows_tokens_q4_k,
        GgmlType::Q5_K => rows_tokens_q5_k,
        GgmlType::Q6_K => rows_tokens_q6_k,
        _ => return false,
    };
    // SAFETY: the CPU features were checked above; the block views come from checked sizes.
    unsafe { f(rb, w, acts, arb, n_tok, out) };
    true
}

