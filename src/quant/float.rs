//! The plain float element types F32, F16 and BF16 (one element per "block").

/// BF16 bits to f32: the top half of an f32; exact.
#[inline(always)]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// f32 to BF16 with round to nearest even; NaNs stay quiet NaNs (ggml's `fp32_to_bf16`).
#[inline(always)]
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

pub fn dequantize_f32(src: &[u8], dst: &mut [f32]) {
    for (o, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

pub fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
    for (o, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *o = super::block::f16_bits_to_f32(u16::from_le_bytes([c[0], c[1]]));
    }
}

pub fn dequantize_bf16(src: &[u8], dst: &mut [f32]) {
    for (o, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
    }
}

/// Reads the little-endian f32 at element `i`.
#[inline(always)]
fn f32_at(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

// The float dots keep 8 independent partial sums: the compiler vectorises them, and the
// rounding error grows like n/8 instead of n.
macro_rules! float_dot {
    ($name:ident, $wbytes:expr, $conv:expr) => {
        pub fn $name(n: usize, w: &[u8], act: &[u8]) -> f32 {
            let conv = $conv;
            let mut acc = [0f32; 8];
            let full = n / 8 * 8;
            let mut i = 0;
            while i < full {
                for k in 0..8 {
                    acc[k] += conv(&w[(i + k) * $wbytes..]) * f32_at(act, i + k);
                }
                i += 8;
            }
            let mut s = 0f32;
            while i < n {
                s += conv(&w[i * $wbytes..]) * f32_at(act, i);
                i += 1;
            }
            s + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
        }
    };
}

float_dot!(dot_f32_f32, 4, |b: &[u8]| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
float_dot!(dot_f16_f32, 2, |b: &[u8]| super::block::f16_bits_to_f32(u16::from_le_bytes([
    b[0], b[1]
])));
float_dot!(dot_bf16_f32, 2, |b: &[u8]| bf16_to_f32(u16::from_le_bytes([b[0], b[1]])));
