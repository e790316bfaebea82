//! MXFP4 (OCP microscaling): 32 E2M1 values sharing one E8M0 exponent.

use super::block::{f16_to_f32, impl_block};
use super::grids::KVALUES_MXFP4;
use super::legacy::BlockQ8_0;
use super::types::GgmlType;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockMXFP4 {
    /// E8M0 shared exponent.
    pub e: u8,
    /// Low nibbles are elements 0..16, high nibbles 16..32.
    pub qs: [u8; 16],
}
impl_block!(BlockMXFP4, MXFP4, 32);

/// Half of 2^(e−127), as f32 (the table values are doubled E2M1, so the scale is halved). The
/// two smallest exponents give subnormals.
#[inline(always)]
pub fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 { 0x0020_0000u32 << e } else { ((e as u32) - 1) << 23 };
    f32::from_bits(bits)
}

impl BlockMXFP4 {
    pub fn dequantize(&self, y: &mut [f32]) {
        let d = e8m0_to_f32_half(self.e);
        for j in 0..16 {
            y[j] = KVALUES_MXFP4[(self.qs[j] & 0xf) as usize] as f32 * d;
            y[j + 16] = KVALUES_MXFP4[(self.qs[j] >> 4) as usize] as f32 * d;
        }
    }
}

pub fn dot_mxfp4_q8_0(x: &[BlockMXFP4], y: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let mut sumi = 0i32;
        for j in 0..16 {
            sumi += KVALUES_MXFP4[(bx.qs[j] & 0xf) as usize] as i32 * (by.qs[j] as i8) as i32
                + KVALUES_MXFP4[(bx.qs[j] >> 4) as usize] as i32 * (by.qs[j + 16] as i8) as i32;
        }
        sumf += e8m0_to_f32_half(bx.e) * f16_to_f32(by.d) * sumi as f32;
    }
    sumf
}
