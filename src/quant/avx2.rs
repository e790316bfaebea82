//! AVX2/FMA dot kernels, selected at run time.

use super::GgmlType;

/// The AVX2 dot for `ty`, or `None` when the CPU lacks AVX2/FMA or `ty` has no AVX2 kernel.
/// Sizes are already checked by the caller.
#[inline]
pub fn vec_dot(_ty: GgmlType, _n: usize, _w: &[u8], _act: &[u8]) -> Option<f32> {
    None
}
