//! The block shape of the quantized decode matvecs (kernels/mmvq.cu): warps per block, output
//! rows per warp, and the staging depth (one buffer, or two with the next round's loads in flight
//! during this round's dot products). The kernels take it as compile-time constants
//! (`-D XD_MMVQ_*` for NVRTC) and the backend launches with the same numbers, so both come from
//! here. `XDAN_CUDA_MMVQ=WARPS,ROWS[,STAGES]` picks another shape for a whole process (a tuning
//! switch; `cuda_check --mmvq-sweep` compares shapes in one process instead).

use crate::{Error, Result};

/// One block shape of the quantized matvecs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MmvqShape {
    /// Warps per block, 1 to 32.
    pub warps: u32,
    /// Output rows per warp, 1 to 4 (the fused gate+up kernels carry twice as many weight rows).
    pub rows: u32,
    /// 1 or 2 staging buffers; 0 lets each kernel take 2 where they fit in 48 KB of shared memory.
    pub stages: u32,
}

/// Rows per block at most: gate+up stages 2 x 16 weight rows of about 1.1 KB per round, which
/// fits the 48 KB of static shared memory for every type.
const MAX_ROWS_PER_BLOCK: u32 = 16;

impl MmvqShape {
    /// 4 warps of one row with two staging buffers where they fit: the fastest of the sweep on
    /// an H200 (a layer's matvecs over six types in 754 µs, against 771 for 8 x 2 and 781 for
    /// the one-buffer classic shape; docs/perf.md). Must equal the defaults in kernels/mmvq.cu
    /// (a test checks).
    pub const DEFAULT: MmvqShape = MmvqShape { warps: 4, rows: 1, stages: 0 };
    /// The shape before it was tunable: 4 warps of one row, one buffer.
    pub const CLASSIC: MmvqShape = MmvqShape { warps: 4, rows: 1, stages: 1 };

    /// The shapes `cuda_check --mmvq-sweep` times: the classic one, the default (its two-buffer
    /// variant), and more warps or more rows per warp with one or two buffers.
    pub const SWEEP: [MmvqShape; 8] = [
        MmvqShape::CLASSIC,
        MmvqShape::DEFAULT,
        MmvqShape { warps: 4, rows: 2, stages: 0 },
        MmvqShape { warps: 4, rows: 4, stages: 0 },
        MmvqShape { warps: 8, rows: 1, stages: 0 },
        MmvqShape { warps: 8, rows: 2, stages: 1 },
        MmvqShape { warps: 8, rows: 2, stages: 0 },
        MmvqShape { warps: 16, rows: 1, stages: 0 },
    ];

    /// A checked shape.
    pub fn new(warps: u32, rows: u32, stages: u32) -> Result<MmvqShape> {
        if !(1..=32).contains(&warps) {
            return Err(Error::invalid_arg(format!("matvec block shape: {warps} warps per block (1 to 32)")));
        }
        if !(1..=4).contains(&rows) {
            return Err(Error::invalid_arg(format!("matvec block shape: {rows} rows per warp (1 to 4)")));
        }
        if warps * rows > MAX_ROWS_PER_BLOCK {
            return Err(Error::invalid_arg(format!(
                "matvec block shape: {warps} warps x {rows} rows is {} rows per block (at most {MAX_ROWS_PER_BLOCK}: the staging must fit 48 KB of shared memory)",
                warps * rows
            )));
        }
        if stages > 2 {
            return Err(Error::invalid_arg(format!("matvec block shape: {stages} staging buffers (0 = auto, 1 or 2)")));
        }
        Ok(MmvqShape { warps, rows, stages })
    }

    /// `WARPS,ROWS` or `WARPS,ROWS,STAGES` (also with `x` between the numbers: `8x2`).
    pub fn parse(s: &str) -> Result<MmvqShape> {
        let bad = || Error::invalid_arg(format!("matvec block shape '{s}': expected WARPS,ROWS[,STAGES], e.g. 8,2 or 4,1,1"));
        let parts: Vec<&str> = s.split([',', 'x']).map(str::trim).collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(bad());
        }
        let num = |p: &str| p.parse::<u32>().map_err(|_| bad());
        let stages = if parts.len() == 3 { num(parts[2])? } else { 0 };
        MmvqShape::new(num(parts[0])?, num(parts[1])?, stages)
    }

    /// The shape of this process: `$XDAN_CUDA_MMVQ` when set and not empty, else the default.
    /// Read once; a bad value is an error naming the variable (every call returns it).
    pub fn from_env() -> Result<MmvqShape> {
        static V: std::sync::OnceLock<std::result::Result<MmvqShape, String>> = std::sync::OnceLock::new();
        V.get_or_init(|| match std::env::var("XDAN_CUDA_MMVQ") {
            Ok(v) if !v.trim().is_empty() => MmvqShape::parse(&v).map_err(|e| format!("XDAN_CUDA_MMVQ: {}", e.message)),
            _ => Ok(MmvqShape::DEFAULT),
        })
        .clone()
        .map_err(Error::invalid_arg)
    }

    /// Output rows per block.
    pub fn rows_per_block(&self) -> u32 {
        self.warps * self.rows
    }

    /// Threads per block.
    pub fn threads(&self) -> u32 {
        32 * self.warps
    }

    /// The NVRTC options that compile kernels/mmvq.cu for this shape.
    pub fn nvrtc_options(&self) -> Vec<String> {
        vec![
            format!("-DXD_MMVQ_WARPS={}", self.warps),
            format!("-DXD_MMVQ_ROWS={}", self.rows),
            format!("-DXD_MMVQ_STAGES={}", self.stages),
        ]
    }

    /// "8x2" (stages auto), "4x1x1".
    pub fn label(&self) -> String {
        if self.stages == 0 {
            format!("{}x{}", self.warps, self.rows)
        } else {
            format!("{}x{}x{}", self.warps, self.rows, self.stages)
        }
    }
}

impl std::fmt::Display for MmvqShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(MmvqShape::parse("8,2").unwrap(), MmvqShape { warps: 8, rows: 2, stages: 0 });
        assert_eq!(MmvqShape::parse(" 4 , 1 , 1 ").unwrap(), MmvqShape::CLASSIC);
        assert_eq!(MmvqShape::parse("16x1").unwrap(), MmvqShape { warps: 16, rows: 1, stages: 0 });
        for bad in ["", "8", "8,2,1,1", "a,2", "0,1", "33,1", "8,0", "8,5", "8,4", "4,1,3", "-1,2"] {
            let e = MmvqShape::parse(bad).expect_err(bad);
            assert!(e.message.contains("matvec block shape"), "{bad}: {}", e.message);
        }
        assert!(MmvqShape::parse("8,4").unwrap_err().message.contains("32 rows per block"));
    }

    /// kernels/mmvq.cu compiles to DEFAULT when no -D option is given.
    #[test]
    fn default_matches_the_kernel_source() {
        let src = crate::backend::cuda::kernels::program("mmvq.cu").unwrap().text;
        let def = |name: &str| -> u32 {
            let key = format!("#define {name} ");
            let line = src.lines().find(|l| l.trim_start().starts_with(&key)).unwrap_or_else(|| panic!("{name} not defined"));
            line.trim_start()[key.len()..].trim().parse().unwrap()
        };
        let d = MmvqShape::DEFAULT;
        assert_eq!((def("XD_MMVQ_WARPS"), def("XD_MMVQ_ROWS"), def("XD_MMVQ_STAGES")), (d.warps, d.rows, d.stages));
    }
}
