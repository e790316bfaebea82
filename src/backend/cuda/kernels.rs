//! The CUDA C sources of the kernels, embedded in the library so a GPU machine needs nothing
//! but the driver and NVRTC. Each `.cu` file is one NVRTC program; the `.cuh` headers are
//! handed to NVRTC by name (NVRTC itself ships no CUDA headers, and the kernels use none).

/// A kernel source file: its name (also the NVRTC program name) and text.
pub struct KernelSource {
    pub name: &'static str,
    pub text: &'static str,
}

macro_rules! sources {
    ($($name:literal),* $(,)?) => {
        &[$(KernelSource { name: $name, text: include_str!(concat!("../../../kernels/", $name)) }),*]
    };
}

/// Every program: the quantized matvecs and their activation quantizer, the float matvecs,
/// the prefill GEMMs and MoE grouping, the row gather, RMSNorm, RoPE, the element-wise kernels, the MoE router, decode attention.
pub const PROGRAMS: &[KernelSource] = sources!(
    "mmvq.cu",
    "matvec_float.cu",
    "gemm.cu",
    "get_rows.cu",
    "norm.cu",
    "rope.cu",
    "elementwise.cu",
    "router.cu",
    "attention.cu",
);

/// The headers the programs include.
pub const HEADERS: &[KernelSource] = sources!("common.cuh", "quant_dot.cuh", "dequant.cuh", "iq_grids.cuh", "mma.cuh");

/// The program named `name`.
pub fn program(name: &str) -> Option<&'static KernelSource> {
    PROGRAMS.iter().find(|p| p.name == name)
}

/// The kernels (`extern "C" __global__` functions) a program defines: those written out first,
/// then those stamped out by a `XD_*_KERNEL(name, ...)` macro.
pub fn kernel_names(src: &KernelSource) -> Vec<String> {
    let mut names = Vec::new();
    let text = src.text;
    // Plain definitions: `extern "C" __global__ void [__launch_bounds__(..)] name(`.
    const MARK: &str = "extern \"C\" __global__ void";
    let mut from = 0;
    while let Some(at) = text[from..].find(MARK).map(|i| from + i) {
        from = at + MARK.len();
        // Skip the template inside a kernel-stamping macro (a line continued with '\\').
        let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
        if text[at..line_end].trim_end().ends_with('\\') {
            continue;
        }
        let mut s = text[from..].trim_start();
        if s.starts_with("__launch_bounds__") {
            let close = s.find(')').unwrap_or(0);
            s = s[close + 1..].trim_start();
        }
        let end = s.find('(').unwrap_or(0);
        let name = s[..end].trim();
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.push(name.to_string());
        }
    }
    // Kernels stamped out by a macro: `XD_..._KERNEL(name, ...)` lines.
    for line in text.lines() {
        let l = line.trim_start();
        if l.starts_with("XD_") && !l.starts_with("XD_LAUNCH") && l.contains("_KERNEL(") && !l.starts_with("#") {
            if let Some(open) = l.find('(') {
                let name = l[open + 1..].split(',').next().unwrap_or("").trim();
                if !name.is_empty() {
                    names.push(name.to_string());
                }
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_and_header_is_embedded() {
        assert!(PROGRAMS.iter().all(|p| p.text.contains("#include \"")));
        let names = kernel_names(program("mmvq.cu").unwrap());
        assert!(names.contains(&"quantize_q8_1".to_string()));
        assert!(names.contains(&"mul_mat_vec_q4_0".to_string()));
        assert!(names.contains(&"mul_mat_vec_iq4_xs".to_string()));
        let gemm = kernel_names(program("gemm.cu").unwrap());
        assert_eq!(gemm.len(), 24, "{gemm:?}");
        assert!(gemm.contains(&"mul_mat_iq2_xxs".to_string()) && gemm.contains(&"moe_group".to_string()));
        let attn = kernel_names(program("attention.cu").unwrap());
        let want: Vec<String> =
            ["f32", "f16", "q8_0"].iter().flat_map(|kv| (1..=8).map(move |d| format!("attn_{kv}_{}", 32 * d))).collect();
        assert_eq!(attn, want);
        let rope = kernel_names(program("rope.cu").unwrap());
        assert_eq!(rope, ["rope_norm", "rope_kv_store_f32", "rope_kv_store_f16"]);
        let router = kernel_names(program("router.cu").unwrap());
        assert_eq!(router, ["moe_router", "moe_route_f32", "moe_route_f16", "moe_route_bf16", "router_logits_f32", "router_logits_f16", "router_logits_bf16"]);
        let float = kernel_names(program("matvec_float.cu").unwrap());
        assert_eq!(float, ["mul_mat_vec_f32", "mul_mat_vec_f16", "mul_mat_vec_bf16"]);
        for p in PROGRAMS {
            for inc in p.text.lines().filter_map(|l| l.strip_prefix("#include \"")) {
                let h = inc.trim_end_matches('"');
                assert!(HEADERS.iter().any(|x| x.name == h), "{} includes {h}, which is not embedded", p.name);
            }
        }
    }

    /// Every kernel's body begins with `xd_grid_dep_sync();` (common.cuh): with programmatic
    /// dependent launches (`XDAN_CUDA_PDL`) a kernel's blocks may start before the kernel ahead
    /// of it has finished, and only that wait keeps them off its memory until it has.
    #[test]
    fn every_kernel_first_waits_for_the_one_before() {
        const MARK: &str = "extern \"C\" __global__ void";
        let mut kernels = 0;
        for p in PROGRAMS {
            let t = p.text;
            let mut from = 0;
            while let Some(at) = t[from..].find(MARK).map(|i| from + i) {
                let open = at + t[at..].find('{').expect("a kernel body");
                let body = t[open + 1..].trim_start_matches(|c: char| c.is_whitespace() || c == '\\');
                let line = t[..at].lines().count() + 1;
                assert!(body.starts_with("xd_grid_dep_sync();"), "{} line {line}: the kernel does not begin with xd_grid_dep_sync()", p.name);
                kernels += 1;
                from = open;
            }
        }
        assert!(kernels >= 25, "found {kernels} kernel definitions");
    }
}
