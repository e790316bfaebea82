//! Prints a GGUF file's metadata and tensor table: the first thing to run on a new model.
//!
//! Usage: gguf_info FILE [--all]   (--all prints arrays in full)

use xdan::gguf::Gguf;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: gguf_info FILE.gguf [--all]");
        std::process::exit(2);
    };
    let max_items = if args.iter().any(|a| a == "--all") { usize::MAX } else { 8 };
    let g = match Gguf::open(path, true) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("gguf_info: {e}");
            std::process::exit(1);
        }
    };
    println!("{path}: GGUF v{}, {} bytes, alignment {}", g.version(), g.file_bytes(), g.alignment());
    println!("\nmetadata ({} keys):", g.metadata().len());
    for (k, v) in g.metadata() {
        println!("  {k:<44} {:<14} {}", v.type_name(), v.to_text(max_items));
    }
    println!("\ntensors ({}):", g.tensors().len());
    println!("  {:<36} {:<8} {:<24} {:>12} {:>12}", "name", "type", "shape", "bytes", "offset");
    let mut total = 0u64;
    for t in g.tensors() {
        let shape = format!("{:?}", t.dims);
        println!(
            "  {:<36} {:<8} {:<24} {:>12} {:>12}",
            t.name,
            t.ty.name(),
            shape,
            t.n_bytes,
            g.header().data_offset + t.offset
        );
        total += t.n_bytes;
    }
    println!("\n{} tensor bytes, {} elements", total, g.tensors().iter().map(|t| t.n_elements).sum::<u64>());
}
