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
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has FMA (checked just above).
        return unsafe { softmax_fma(x) };
    }
    softmax_generic(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn softmax_fma(x: &mut [f32]) {
    softmax_generic(x)
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

#[cfg(test)]
mod tests {
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
}
