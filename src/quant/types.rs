//! The table of GGML tensor type facts: id, name, elements per block, bytes per block.
//!
//! Ids are the on-disk values of GGUF tensor infos (`ggml_type` in ggml.h); the gaps (4, 5,
//! 31–33, 36–38) are ids ggml retired and never reuses.

/// A GGML tensor element type as stored in a GGUF tensor info.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
}

/// Facts about one type: `(type, name, block elements, block bytes)`.
pub struct TypeFacts {
    pub ty: GgmlType,
    pub name: &'static str,
    pub block_elems: usize,
    pub block_bytes: usize,
}

macro_rules! facts {
    ($($ty:ident, $name:literal, $be:expr, $bb:expr;)*) => {
        /// Every type the reader accepts, in id order.
        pub const TYPE_FACTS: &[TypeFacts] = &[
            $(TypeFacts { ty: GgmlType::$ty, name: $name, block_elems: $be, block_bytes: $bb },)*
        ];
    };
}

// K-quants and most IQ types use 256-element super-blocks (QK_K); the legacy quants 32 (QK4_0 …).
facts! {
    F32, "F32", 1, 4;
    F16, "F16", 1, 2;
    Q4_0, "Q4_0", 32, 18;
    Q4_1, "Q4_1", 32, 20;
    Q5_0, "Q5_0", 32, 22;
    Q5_1, "Q5_1", 32, 24;
    Q8_0, "Q8_0", 32, 34;
    Q8_1, "Q8_1", 32, 36;
    Q2_K, "Q2_K", 256, 84;
    Q3_K, "Q3_K", 256, 110;
    Q4_K, "Q4_K", 256, 144;
    Q5_K, "Q5_K", 256, 176;
    Q6_K, "Q6_K", 256, 210;
    Q8_K, "Q8_K", 256, 292;
    IQ2_XXS, "IQ2_XXS", 256, 66;
    IQ2_XS, "IQ2_XS", 256, 74;
    IQ3_XXS, "IQ3_XXS", 256, 98;
    IQ1_S, "IQ1_S", 256, 50;
    IQ4_NL, "IQ4_NL", 32, 18;
    IQ3_S, "IQ3_S", 256, 110;
    IQ2_S, "IQ2_S", 256, 82;
    IQ4_XS, "IQ4_XS", 256, 136;
    I8, "I8", 1, 1;
    I16, "I16", 1, 2;
    I32, "I32", 1, 4;
    I64, "I64", 1, 8;
    F64, "F64", 1, 8;
    IQ1_M, "IQ1_M", 256, 56;
    BF16, "BF16", 1, 2;
    TQ1_0, "TQ1_0", 256, 54;
    TQ2_0, "TQ2_0", 256, 66;
    MXFP4, "MXFP4", 32, 17;
}

impl GgmlType {
    /// The type with on-disk id `id`, or `None` for an unknown or retired id.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TYPE_FACTS.iter().find(|f| f.ty as u32 == id).map(|f| f.ty)
    }

    /// The type named `name` as ggml spells it ("Q4_K", "IQ2_XXS"), case-insensitive.
    pub fn from_name(name: &str) -> Option<GgmlType> {
        TYPE_FACTS.iter().find(|f| f.name.eq_ignore_ascii_case(name)).map(|f| f.ty)
    }

    pub fn facts(self) -> &'static TypeFacts {
        // TYPE_FACTS lists every variant; a missing one fails the unit test below.
        TYPE_FACTS.iter().find(|f| f.ty == self).expect("every GgmlType has facts")
    }

    pub fn id(self) -> u32 {
        self as u32
    }
    pub fn name(self) -> &'static str {
        self.facts().name
    }
    pub fn block_elems(self) -> usize {
        self.facts().block_elems
    }
    pub fn block_bytes(self) -> usize {
        self.facts().block_bytes
    }

    /// Bytes of a row of `n` elements, or `None` when `n` is not a whole number of blocks or
    /// the size overflows.
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        let be = self.block_elems() as u64;
        if n % be != 0 {
            return None;
        }
        (n / be).checked_mul(self.block_bytes() as u64)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for (i, f) in TYPE_FACTS.iter().enumerate() {
            assert_eq!(GgmlType::from_id(f.ty as u32), Some(f.ty));
            assert_eq!(GgmlType::from_name(f.name), Some(f.ty));
            assert_eq!(f.ty.facts().name, f.name);
            if i > 0 {
                assert!((TYPE_FACTS[i - 1].ty as u32) < f.ty as u32, "ids ascend");
            }
        }
        for retired in [4u32, 5, 31, 32, 33, 36, 37, 38, 40, u32::MAX] {
            assert_eq!(GgmlType::from_id(retired), None);
        }
        assert_eq!(GgmlType::Q4_K.row_bytes(512), Some(288));
        assert_eq!(GgmlType::Q4_K.row_bytes(100), None);
    }
}
