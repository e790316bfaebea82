//! What every block struct shares: byte-only layout (alignment 1, so a block slice can be viewed
//! straight over mapped, unaligned file bytes), a size checked against the type table, and the
//! scalar conversions the formats use.

use super::types::{GgmlType, TYPE_FACTS};

/// A GGML block: `#[repr(C)]`, only `u8`/`[u8; N]` fields, so every bit pattern is valid and
/// the alignment is 1.
///
/// # Safety
/// Implementors must be `#[repr(C)]` structs made only of `u8` arrays, `size_of` equal to the
/// table's block bytes of `TY` (checked by `assert_block!`).
pub(crate) unsafe trait Block: Copy {
    const TY: GgmlType;
    /// Elements per block.
    const QK: usize;
}

/// Block bytes of `ty` from the type table, usable in const context.
pub(crate) const fn table_block_bytes(ty: GgmlType) -> usize {
    let mut i = 0;
    while i < TYPE_FACTS.len() {
        if TYPE_FACTS[i].ty as u32 == ty as u32 {
            return TYPE_FACTS[i].block_bytes;
        }
        i += 1;
    }
    0
}

/// Implements [`Block`] and asserts at compile time that the struct's size and alignment match
/// the type table.
macro_rules! impl_block {
    ($t:ty, $ty:ident, $qk:expr) => {
        const _: () = assert!(
            std::mem::size_of::<$t>() == crate::quant::block::table_block_bytes(GgmlType::$ty)
        );
        const _: () = assert!(std::mem::align_of::<$t>() == 1);
        unsafe impl crate::quant::block::Block for $t {
            const TY: GgmlType = GgmlType::$ty;
            const QK: usize = $qk;
        }
    };
}
pub(crate) use impl_block;

/// Views whole blocks of `B` over `bytes` (`bytes.len()` must be a multiple of the block size).
#[inline]
pub(crate) fn as_blocks<B: Block>(bytes: &[u8]) -> &[B] {
    let bs = std::mem::size_of::<B>();
    assert!(bytes.len() % bs == 0, "{}: {} bytes is not whole blocks", B::TY, bytes.len());
    // SAFETY: B is repr(C) of u8 arrays only (Block contract): align 1, any bits valid.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const B, bytes.len() / bs) }
}

/// Mutable view, for building blocks in place.
#[inline]
pub(crate) fn as_blocks_mut<B: Block>(bytes: &mut [u8]) -> &mut [B] {
    let bs = std::mem::size_of::<B>();
    assert!(bytes.len() % bs == 0, "{}: {} bytes is not whole blocks", B::TY, bytes.len());
    // SAFETY: as in `as_blocks`; the borrow is exclusive.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr() as *mut B, bytes.len() / bs) }
}

/// IEEE binary16 (little-endian bytes) to f32; exact.
#[inline(always)]
pub(crate) fn f16_to_f32(b: [u8; 2]) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes(b))
}

/// Binary16 bits to f32, exact, branch-light and inlinable (the scalar kernels convert one or
/// two scales per block; a call per conversion would dominate them). Placing the 15 bits below
/// the f32 exponent field scales every finite value, subnormals included, by exactly 2^-112.
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let em = (h as u32) & 0x7fff;
    if em >= 0x7c00 {
        // Inf stays Inf; NaN keeps its payload and comes out quiet, as F16C converts it.
        let nan_quiet = if em > 0x7c00 { 0x0040_0000 } else { 0 };
        return f32::from_bits(sign | 0x7f80_0000 | nan_quiet | ((em & 0x3ff) << 13));
    }
    let mag = f32::from_bits(em << 13) * f32::from_bits(0x7780_0000); // 2^112
    f32::from_bits(sign | mag.to_bits())
}

/// The f32 bits of every binary16 value (`f16_bits_to_f32`'s results, NaNs quieted as F16C
/// does), made at compile time with integer operations: 256 KiB that the dot kernels read a
/// block scale from with one load, where a conversion instruction costs a block of 32 weights
/// a good share of its time (the AVX2 kernels).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) static F16_TO_F32_BITS: [u32; 1 << 16] = {
    let mut t = [0u32; 1 << 16];
    let mut h = 0;
    while h < 1 << 16 {
        let sign = ((h as u32) & 0x8000) << 16;
        let exp = ((h as u32) >> 10) & 0x1f;
        let mant = (h as u32) & 0x3ff;
        t[h] = sign
            | if exp == 0x1f {
                0x7f80_0000 | (mant << 13) | if mant != 0 { 0x0040_0000 } else { 0 }
            } else if exp != 0 {
                ((exp + 112) << 23) | (mant << 13)
            } else if mant == 0 {
                0
            } else {
                // Subnormal: shift the leading one up to the implicit bit.
                let mut m = mant;
                let mut e = 113u32;
                while m & 0x400 == 0 {
                    m <<= 1;
                    e -= 1;
                }
                (e << 23) | ((m & 0x3ff) << 13)
            };
        h += 1;
    }
    t
};

/// A binary16 (little-endian bytes) as f32 through [`F16_TO_F32_BITS`]; exact.
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn f16_lut(b: [u8; 2]) -> f32 {
    f32::from_bits(F16_TO_F32_BITS[u16::from_le_bytes(b) as usize])
}

/// f32 to binary16 bytes, round to nearest even (what ggml's FP32_TO_FP16 does).
#[inline(always)]
pub(crate) fn f32_to_f16(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

#[inline(always)]
pub(crate) fn u16_le(b: [u8; 2]) -> u16 {
    u16::from_le_bytes(b)
}

#[inline(always)]
pub(crate) fn u32_le(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Round half away from zero, as C's `roundf` (ggml's reference Q8_0/Q8_1 quantizers use it).
#[inline(always)]
pub(crate) fn round_away(x: f32) -> f32 {
    x.round()
}

/// ggml's `nearest_int`: round to nearest, ties to even (valid for |x| <= 2^22).
#[inline(always)]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let v = x + 12582912.0;
    ((v.to_bits() & 0x007f_ffff) as i32) - 0x0040_0000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_table_holds_every_conversion() {
        for h in 0..=u16::MAX {
            let want = f16_bits_to_f32(h).to_bits();
            assert_eq!(F16_TO_F32_BITS[h as usize], want, "f16 bits {h:#06x}");
            if !f16_bits_to_f32(h).is_nan() {
                assert_eq!(f16_lut(h.to_le_bytes()), half::f16::from_bits(h).to_f32(), "f16 bits {h:#06x}");
            }
        }
    }
}
