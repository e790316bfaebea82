//! Compiles one kernel program (an embedded `kernels/*.cu`, or any .cu file given by path, with the
//! embedded headers) to a CUBIN with NVRTC and writes it out, for inspecting the machine code
//! (`nvdisasm`, `scripts/sass-stats.sh`). No GPU needed.
//!
//! `cargo run --release --example kernel_cubin -- PROGRAM_OR_PATH ARCH OUT.cubin [-DNAME=VALUE ...]`
use xdan::backend::cuda::kernels::{program, HEADERS};
use xdan::backend::cuda::nvrtc::Nvrtc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: kernel_cubin PROGRAM_OR_PATH ARCH OUT.cubin [NVRTC options...]");
        std::process::exit(2);
    }
    let (name, text) = match program(&args[0]) {
        Some(p) => (p.name.to_string(), p.text.to_string()),
        None => match std::fs::read_to_string(&args[0]) {
            Ok(t) => (args[0].rsplit('/').next().unwrap_or("probe.cu").to_string(), t),
            Err(e) => {
                eprintln!("{}: neither an embedded program nor a readable file ({e})", args[0]);
                std::process::exit(2);
            }
        },
    };
    let arch: u32 = match args[1].parse() {
        Ok(a) => a,
        Err(_) => {
            eprintln!("{}: the architecture is a number such as 89 or 90", args[1]);
            std::process::exit(2);
        }
    };
    let headers: Vec<(&str, &str)> = HEADERS.iter().map(|h| (h.name, h.text)).collect();
    let extra: Vec<&str> = args[3..].iter().map(String::as_str).collect();
    let result = Nvrtc::load().and_then(|n| n.compile(&name, &text, &headers, arch, &extra));
    match result {
        Ok(c) => {
            if let Err(e) = std::fs::write(&args[2], &c.cubin) {
                eprintln!("{}: {e}", args[2]);
                std::process::exit(1);
            }
            eprint!("{}", c.log);
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
