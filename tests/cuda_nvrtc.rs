//! Every kernel source compiles with NVRTC to CUBIN for sm_89 and sm_90, with ptxas' report
//! (registers, spills) printed; and the CUBIN disk cache misses, stores, then hits. NVRTC comes
//! from the `nvidia-cuda-nvrtc-cu12` wheel that scripts/test.sh installs (or `$XDAN_NVRTC`);
//! without it these tests fail: they do not skip.

use xdan::backend::cuda::cache::{compile_cached, CubinCache, Origin};
use xdan::backend::cuda::kernels::{kernel_names, program, HEADERS, PROGRAMS};
use xdan::backend::cuda::nvrtc::Nvrtc;
use xdan::backend::cuda::MmvqShape;

fn nvrtc() -> Nvrtc {
    match Nvrtc::load() {
        Ok(n) => n,
        Err(e) => panic!("{e}\n(scripts/test.sh installs it: python3 -m pip install nvidia-cuda-nvrtc-cu12)"),
    }
}

/// One line per kernel from ptxas' verbose log: "name: N registers, S bytes spill stores, L
/// bytes spill loads, M bytes smem".
fn ptxas_summary(log: &str) -> Vec<(String, u32, u32, u32, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut spills = (0, 0);
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            current = rest.split('\'').next().unwrap_or("").to_string();
        } else if line.contains("bytes spill stores") {
            let nums: Vec<u32> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
            // "N bytes stack frame, S bytes spill stores, L bytes spill loads"
            if nums.len() >= 3 {
                spills = (nums[1], nums[2]);
            }
        } else if let Some(rest) = line.split("Used ").nth(1) {
            let regs: u32 = rest.split_whitespace().next().and_then(|w| w.parse().ok()).unwrap_or(0);
            let smem = line
                .split(", ")
                .find(|p| p.ends_with("bytes smem"))
                .map(|p| p.trim_end_matches(" bytes smem").trim().to_string())
                .unwrap_or_else(|| "0".into());
            out.push((current.clone(), regs, spills.0, spills.1, smem));
        }
    }
    out
}

#[test]
fn nvrtc_compiles_every_kernel() {
    let n = nvrtc();
    println!("NVRTC {}.{} from {}", n.version().0, n.version().1, n.path());
    let headers: Vec<(&str, &str)> = HEADERS.iter().map(|h| (h.name, h.text)).collect();
    let mut failures = Vec::new();
    for arch in [89u32, 90] {
        for p in PROGRAMS {
            match n.compile(p.name, p.text, &headers, arch, &["-Xptxas=-v"]) {
                Ok(c) => {
                    assert!(c.cubin.starts_with(b"\x7fELF"), "{} sm_{arch}: the CUBIN is not an ELF file", p.name);
                    let report = ptxas_summary(&c.log);
                    let mut want = kernel_names(p);
                    let mut got: Vec<String> = report.iter().map(|r| r.0.clone()).collect();
                    want.sort();
                    got.sort();
                    assert_eq!(got, want, "{} sm_{arch}: ptxas reported other kernels than the source defines", p.name);
                    println!("sm_{arch} {} ({} bytes of CUBIN):", p.name, c.cubin.len());
                    for (k, regs, st, ld, smem) in report {
                        println!("  {k:24} {regs:3} registers, spill stores {st} B, spill loads {ld} B, smem {smem} B");
                        if st + ld > 0 {
                            failures.push(format!("sm_{arch} {k}: {st} B spill stores, {ld} B spill loads"));
                        }
                    }
                }
                Err(e) => failures.push(format!("sm_{arch} {}: {e}", p.name)),
            }
        }
    }
    assert!(failures.is_empty(), "kernels that do not compile or spill registers:\n{}", failures.join("\n"));
}

/// mmvq.cu compiles for every block shape `cuda_check --mmvq-sweep` times (sm_90, the shapes
/// side by side), without register spills; the registers of each are printed.
#[test]
fn mmvq_compiles_for_every_sweep_shape() {
    let n = nvrtc();
    let headers: Vec<(&str, &str)> = HEADERS.iter().map(|h| (h.name, h.text)).collect();
    let p = program("mmvq.cu").unwrap();
    let results: Vec<_> = std::thread::scope(|s| {
        let jobs: Vec<_> = MmvqShape::SWEEP
            .iter()
            .map(|sh| {
                let (n, headers) = (&n, &headers);
                s.spawn(move || {
                    let mut opts = sh.nvrtc_options();
                    opts.push("-Xptxas=-v".into());
                    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
                    let t = std::time::Instant::now();
                    (*sh, n.compile(p.name, p.text, headers, 90, &opts), t.elapsed().as_secs_f64())
                })
            })
            .collect();
        jobs.into_iter().map(|j| j.join().unwrap()).collect()
    });
    let mut failures = Vec::new();
    for (sh, r, secs) in results {
        match r {
            Ok(c) => {
                let report = ptxas_summary(&c.log);
                assert_eq!(report.len(), kernel_names(p).len(), "{sh}: ptxas reported {} kernels", report.len());
                let regs = |pre: &str| {
                    let v: Vec<u32> = report.iter().filter(|r| r.0.starts_with(pre) && !(pre == "mul_mat_vec_" && r.0.contains("swiglu"))).map(|r| r.1).collect();
                    format!("{}-{}", v.iter().min().unwrap(), v.iter().max().unwrap())
                };
                println!(
                    "mmvq.cu {sh:6} sm_90 in {secs:4.1} s: registers mul_mat_vec {}, mul_mat_vec3 {}, mul_mat_vec_swiglu {}",
                    regs("mul_mat_vec_"),
                    regs("mul_mat_vec3_"),
                    regs("mul_mat_vec_swiglu_")
                );
                for (k, _, st, ld, _) in report {
                    if st + ld > 0 {
                        failures.push(format!("{sh} {k}: {st} B spill stores, {ld} B spill loads"));
                    }
                }
            }
            Err(e) => failures.push(format!("{sh}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn nvrtc_reports_a_compile_error() {
    let n = nvrtc();
    let err = n
        .compile("bad.cu", "extern \"C\" __global__ void k() { undeclared_thing(); }", &[], 89, &[])
        .err()
        .expect("an undeclared function must not compile");
    assert!(err.message.contains("bad.cu") && err.message.contains("undeclared_thing"), "{}", err.message);
}

#[test]
fn cubin_cache_stores_then_hits() {
    let n = nvrtc();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cubin-cache-test");
    let _ = std::fs::remove_dir_all(&dir);
    let cache = CubinCache::new(&dir);
    let p = program("norm.cu").unwrap();
    let (first, o1) = compile_cached(&n, Some(&cache), p, 89, &[]).unwrap();
    assert_eq!(o1, Origin::Compiled);
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|f| f.file_name().into_string().unwrap()).collect();
    assert_eq!(files.len(), 1, "one file stored: {files:?}");
    let (v0, v1) = n.version();
    assert!(files[0].starts_with("norm_cu-") && files[0].ends_with(&format!("-sm89-nvrtc{v0}.{v1}.cubin")), "{}", files[0]);
    let (second, o2) = compile_cached(&n, Some(&cache), p, 89, &[]).unwrap();
    assert_eq!(o2, Origin::Cache);
    assert_eq!(first, second);
    // Another architecture is another entry, and so are other options.
    let (_, o3) = compile_cached(&n, Some(&cache), p, 90, &[]).unwrap();
    assert_eq!(o3, Origin::Compiled);
    let opt = ["-DXD_CACHE_TEST=1".to_string()];
    let (_, o5) = compile_cached(&n, Some(&cache), p, 89, &opt).unwrap();
    assert_eq!(o5, Origin::Compiled, "other options must not hit the entry compiled without them");
    assert_eq!(compile_cached(&n, Some(&cache), p, 89, &opt).unwrap().1, Origin::Cache);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
    // A damaged entry is a miss, recompiled and rewritten.
    std::fs::write(dir.join(&files[0]), b"not a cubin").unwrap();
    let (third, o4) = compile_cached(&n, Some(&cache), p, 89, &[]).unwrap();
    assert_eq!(o4, Origin::Compiled);
    assert_eq!(third, first);
    assert_eq!(cache.get(&files[0]).as_deref(), Some(&first[..]));
}

#[test]
fn cuda_available_tells_the_truth_without_panicking() {
    let avail = xdan::backend::cuda::cuda_available();
    let devs = xdan::backend::cuda::devices();
    // Whatever the machine, the two agree.
    assert_eq!(avail, devs.as_ref().map(|d| !d.is_empty()).unwrap_or(false));
    // Without the NVIDIA device nodes no driver can reach a GPU.
    if !std::path::Path::new("/dev/nvidiactl").exists() {
        assert!(!avail, "no /dev/nvidiactl, yet cuda_available() said true");
    }
    match devs {
        Ok(d) => println!("CUDA devices: {d:?}"),
        Err(e) => println!("no CUDA: {e}"),
    }
}

/// kernels/iq_grids.cuh as rendered from the Rust tables (src/quant/grids.rs).
fn render_iq_grids() -> String {
    use xdan::quant::grids::*;
    let mut o = String::new();
    o.push_str("// The IQ lattice tables in global memory: the matvec blocks copy theirs into shared memory\n");
    o.push_str("// (quant_dot.cuh; 16-byte aligned for the 16-byte copies), the block decoders (dequant.cuh) read\n");
    o.push_str("// them in place. Lanes index them divergently, which __constant__ memory would serialize.\n");
    o.push_str("// Generated from src/quant/grids.rs by the test iq_grid_header_matches_the_rust_tables\n");
    o.push_str("// (tests/cuda_nvrtc.rs; XDAN_WRITE_GRIDS=1 rewrites it): do not edit.\n");
    o.push_str("#pragma once\n#include \"common.cuh\"\n\n");
    let u64s: [(&str, &[u64]); 4] = [
        ("xd_iq2xxs_grid", &IQ2XXS_GRID[..]),
        ("xd_iq2xs_grid", &IQ2XS_GRID[..]),
        ("xd_iq2s_grid", &IQ2S_GRID[..]),
        ("xd_iq1s_grid", &IQ1S_GRID[..]),
    ];
    for (name, t) in u64s {
        o.push_str(&format!("__device__ alignas(16) uint64_t {name}[{}] = {{\n", t.len()));
        for c in t.chunks(8) {
            o.push_str(&c.iter().map(|v| format!("0x{v:016x}ull")).collect::<Vec<_>>().join(","));
            o.push_str(",\n");
        }
        o.push_str("};\n\n");
    }
    // The IQ2 and IQ1_S points again as eight nibbles, each 4 + the index of its byte among the
    // grid's three values (a byte-permute selector of the second word): half the bytes, for the
    // matvec blocks' shared-memory copies, which quant_dot.cuh expands with byte permutes.
    let nibbles = |grid: &[u64], levels: [u8; 3]| -> Vec<u32> {
        grid.iter()
            .map(|&g| {
                (0..8)
                    .map(|i| {
                        let b = (g >> (8 * i)) as u8;
                        let n = levels.iter().position(|&l| l == b).unwrap_or_else(|| panic!("grid byte {b:#x} is not one of {levels:x?}"));
                        (4 + n as u32) << (4 * i)
                    })
                    .sum()
            })
            .collect()
    };
    let (n2xxs, n2xs, n2s) =
        (nibbles(&IQ2XXS_GRID, IQ2_LEVELS), nibbles(&IQ2XS_GRID, IQ2_LEVELS), nibbles(&IQ2S_GRID, IQ2_LEVELS));
    let n1s = nibbles(&IQ1S_GRID, IQ1_LEVELS);
    let u32s: [(&str, &[u32]); 6] = [
        ("xd_iq3xxs_grid", &IQ3XXS_GRID[..]),
        ("xd_iq3s_grid", &IQ3S_GRID[..]),
        ("xd_iq2xxs_grid_nib", &n2xxs[..]),
        ("xd_iq2xs_grid_nib", &n2xs[..]),
        ("xd_iq2s_grid_nib", &n2s[..]),
        ("xd_iq1s_grid_nib", &n1s[..]),
    ];
    for (i, (name, t)) in u32s.iter().enumerate() {
        o.push_str(&format!("__device__ alignas(16) uint32_t {name}[{}] = {{\n", t.len()));
        for c in t.chunks(8) {
            o.push_str(&c.iter().map(|v| format!("0x{v:08x}u")).collect::<Vec<_>>().join(","));
            o.push_str(",\n");
        }
        o.push_str(if i + 1 < u32s.len() { "};\n\n" } else { "};\n" });
    }
    o
}

/// The kernels' lattice and value tables are the Rust ones: kernels/iq_grids.cuh is generated
/// from src/quant/grids.rs (set XDAN_WRITE_GRIDS=1 to rewrite it), and the value tables written
/// in quant_dot.cuh equal KVALUES_IQ4NL and KVALUES_MXFP4.
#[test]
fn iq_grid_header_matches_the_rust_tables() {
    let path = format!("{}/kernels/iq_grids.cuh", env!("CARGO_MANIFEST_DIR"));
    let want = render_iq_grids();
    if std::env::var_os("XDAN_WRITE_GRIDS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap();
    assert!(have == want, "kernels/iq_grids.cuh differs from src/quant/grids.rs: rerun with XDAN_WRITE_GRIDS=1");

    let dot = HEADERS.iter().find(|h| h.name == "quant_dot.cuh").unwrap().text;
    let table = |name: &str| -> Vec<i8> {
        let start = dot.find(&format!("{name}[16] = {{")).unwrap_or_else(|| panic!("{name} not in quant_dot.cuh"));
        let body = &dot[start..];
        let body = &body[body.find('{').unwrap() + 1..body.find('}').unwrap()];
        body.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect()
    };
    assert_eq!(table("xd_kvalues_iq4nl"), xdan::quant::grids::KVALUES_IQ4NL);
    assert_eq!(table("xd_kvalues_mxfp4"), xdan::quant::grids::KVALUES_MXFP4);
}
