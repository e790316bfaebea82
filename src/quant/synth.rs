//! Random weights in any block format, for synthetic models (benchmarks of a real model's shape,
//! backend parity checks): random bytes from a seeded PRNG with every block's scale fields set so
//! that the decoded values stay within about ±0.1 and the dot products of a forward pass finite.
//!
//! Random bytes are valid blocks of every type: quant codes, grid indices and sign bits take any
//! value; only the float scales need care (a random f16 may be Inf/NaN or huge). The chosen
//! scale of each type is its largest code magnitude inverted, roughly (see [`scale_fields`]).

use rayon::prelude::*;

use super::block::f32_to_f16;
use super::GgmlType;
use crate::error::{Error, Result};

/// splitmix64: fast, seedable, and good enough for weights nobody reads for meaning.
fn splitmix(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The f16 fields of a `ty` block as (byte offset, value); `None` for a type without
/// synthetic support here.
fn scale_fields(ty: GgmlType) -> Option<&'static [(usize, f32)]> {
    use GgmlType::*;
    Some(match ty {
        Q4_0 => &[(0, 0.01)],
        Q4_1 => &[(0, 0.005), (2, -0.04)],
        Q5_0 => &[(0, 0.005)],
        Q5_1 => &[(0, 0.0025), (2, -0.04)],
        Q8_0 => &[(0, 0.0005)],
        Q2_K => &[(80, 0.002), (82, 0.002)],
        Q3_K => &[(108, 0.0005)],
        Q4_K => &[(0, 0.0001), (2, 0.0005)],
        Q5_K => &[(0, 0.00005), (2, 0.0005)],
        Q6_K => &[(208, 0.00002)],
        IQ2_XXS | IQ2_XS | IQ2_S => &[(0, 0.0005)],
        IQ3_XXS | IQ3_S => &[(0, 0.0002)],
        IQ1_S => &[(0, 0.004)],
        IQ4_NL => &[(0, 0.0005)],
        IQ4_XS => &[(0, 0.00002)],
        // IQ1_M keeps its scale in the top nibbles of the scales words; MXFP4 has an E8M0
        // exponent byte; the float types are drawn as values: handled in `fix_block`.
        IQ1_M | MXFP4 | F32 | F16 | BF16 => &[],
        _ => return None,
    })
}

/// Whether [`random_weights`] can fill `ty`.
pub fn can_randomize(ty: GgmlType) -> bool {
    scale_fields(ty).is_some()
}

/// A uniform value in [-0.05, 0.05) from 32 random bits.
fn small(bits: u32) -> f32 {
    (bits as f32 / 4294967296.0 - 0.5) * 0.1
}

fn fix_block(ty: GgmlType, fields: &[(usize, f32)], b: &mut [u8]) {
    for &(off, v) in fields {
        b[off..off + 2].copy_from_slice(&f32_to_f16(v));
    }
    match ty {
        GgmlType::IQ1_M => {
            // The block scale is an f16 spread over the top nibble of the four u16 scale words
            // at byte 48 (low nibble first).
            let d = u16::from_le_bytes(f32_to_f16(0.004));
            for i in 0..4 {
                let p = 48 + 2 * i;
                let w = u16::from_le_bytes([b[p], b[p + 1]]) & 0x0fff | (((d >> (4 * i)) & 0xf) << 12);
                b[p..p + 2].copy_from_slice(&w.to_le_bytes());
            }
        }
        // 2^(e-128) times codes up to 12: about ±0.05.
        GgmlType::MXFP4 => b[0] = 120,
        GgmlType::F32 => {
            for c in b.chunks_exact_mut(4) {
                let v = small(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        GgmlType::F16 | GgmlType::BF16 => {
            for c in b.chunks_exact_mut(2) {
                let v = small((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
                let h = if ty == GgmlType::F16 { f32_to_f16(v) } else { ((v.to_bits() >> 16) as u16).to_le_bytes() };
                c.copy_from_slice(&h);
            }
        }
        _ => {}
    }
}

/// Fills `out` (a whole number of `ty` blocks) with random valid blocks, the same bytes for the
/// same `seed` whatever the thread count; in parallel over 1 MiB chunks.
pub fn random_weights(ty: GgmlType, seed: u64, out: &mut [u8]) -> Result<()> {
    let fields = scale_fields(ty).ok_or_else(|| Error::unsupported(format!("random_weights: no random blocks for {ty}")))?;
    let bb = ty.block_bytes();
    if out.len() % bb != 0 {
        return Err(Error::invalid_arg(format!(
            "random_weights: {} bytes is not a whole number of {ty} blocks ({bb} bytes each)",
            out.len()
        )));
    }
    let chunk = (1 << 20) / bb * bb;
    out.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| {
        let mut s = seed ^ (i as u64).wrapping_mul(0xd1b5_4a32_d192_ed03);
        let mut words = c.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&splitmix(&mut s).to_le_bytes());
        }
        let tail = words.into_remainder();
        let last = splitmix(&mut s).to_le_bytes();
        tail.copy_from_slice(&last[..tail.len()]);
        for b in c.chunks_exact_mut(bb) {
            fix_block(ty, fields, b);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize, TYPE_FACTS};

    /// Every type with random blocks decodes to finite values of a sane size (not all zero,
    /// within ±1), and the bytes depend on the seed only.
    #[test]
    fn random_blocks_decode_to_small_finite_values() {
        let mut n_types = 0;
        for f in TYPE_FACTS.iter().filter(|f| can_randomize(f.ty)) {
            let ty = f.ty;
            let n_blocks = (3 << 20) / f.block_bytes + 7; // crosses chunk boundaries
            let mut a = vec![0u8; n_blocks * f.block_bytes];
            random_weights(ty, 42, &mut a).unwrap();
            let mut b = vec![0u8; a.len()];
            random_weights(ty, 42, &mut b).unwrap();
            assert!(a == b, "{ty}: same seed, other bytes");
            random_weights(ty, 43, &mut b).unwrap();
            assert!(a != b, "{ty}: the seed is not used");
            let mut x = vec![0f32; n_blocks * f.block_elems];
            dequantize(ty, &a, &mut x).unwrap();
            let max = x.iter().fold(0f32, |m, v| if v.is_finite() { m.max(v.abs()) } else { f32::INFINITY });
            let rms = (x.iter().map(|v| (v * v) as f64).sum::<f64>() / x.len() as f64).sqrt();
            assert!(max <= 1.0, "{ty}: max |w| {max}");
            assert!(rms > 1e-3, "{ty}: rms {rms}");
            n_types += 1;
        }
        // F32, F16, BF16, 5 legacy, 5 K, 10 IQ types and MXFP4.
        assert_eq!(n_types, 23);
        let mut odd = vec![0u8; 35];
        assert!(random_weights(GgmlType::Q8_0, 1, &mut odd).is_err());
        assert!(random_weights(GgmlType::Q8_K, 1, &mut [0u8; 292]).is_err());
    }
}
