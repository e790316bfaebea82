//! Prints a GGUF file's metadata and tensor table: the first thing to run on a new model.
//!
//! Usage: gguf_info FILE.gguf [--all]   (--all prints arrays and long strings in full)
//!
//! Exits 1 with the reader's error (what, where, which value) when the file is refused, 2 on a
//! usage error.

use std::collections::BTreeMap;

use xdan::gguf::{Gguf, Value};

/// Strings quoted with control characters escaped, so that every key stays on one line; long
/// values (chat templates, arrays) cut unless `all`.
fn show(v: &Value, all: bool) -> String {
    let max_items = if all { usize::MAX } else { 8 };
    let text = match v {
        Value::String(s) => format!("{:?}", String::from_utf8_lossy(s)),
        v => v.to_text(max_items),
    };
    let max_chars = if all { usize::MAX } else { 160 };
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}... ({} chars)", &text[..cut], text.chars().count()),
        None => text,
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let all = args.iter().any(|a| a == "--all");
    let files: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let [path] = files[..] else {
        eprintln!("usage: gguf_info FILE.gguf [--all]");
        std::process::exit(2);
    };
    let g = match Gguf::open(path, true) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("gguf_info: {e}");
            std::process::exit(1);
        }
    };
    let h = g.header();
    println!("{path}");
    println!(
        "  GGUF v{}, {} bytes ({}), {} metadata keys, {} tensors, alignment {}, data at offset {}",
        g.version(),
        g.file_bytes(),
        human(g.file_bytes()),
        g.metadata().len(),
        g.tensors().len(),
        g.alignment(),
        h.data_offset
    );

    println!("\nmetadata:");
    let key_w = g.metadata().iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let type_w = g.metadata().iter().map(|(_, v)| v.type_name().len()).max().unwrap_or(0);
    for (k, v) in g.metadata() {
        println!("  {k:<key_w$}  {:<type_w$}  {}", v.type_name(), show(v, all));
    }

    println!(
        "\ntensors (shape in ggml order, row length first; offset from the start of the file):"
    );
    let name_w = g.tensors().iter().map(|t| t.name.len()).max().unwrap_or(0).max(4);
    let shapes: Vec<String> = g
        .tensors()
        .iter()
        .map(|t| t.dims.iter().map(u64::to_string).collect::<Vec<_>>().join(" x "))
        .collect();
    let shape_w = shapes.iter().map(String::len).max().unwrap_or(0).max(5);
    if g.tensors().is_empty() {
        println!("  (none)");
        return;
    }
    println!(
        "  {:>4}  {:<name_w$}  {:<7}  {:<shape_w$}  {:>12}  {:>12}",
        "#", "name", "type", "shape", "bytes", "offset"
    );
    let mut by_type: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for (i, (t, shape)) in g.tensors().iter().zip(&shapes).enumerate() {
        println!(
            "  {i:>4}  {:<name_w$}  {:<7}  {shape:<shape_w$}  {:>12}  {:>12}",
            t.name,
            t.ty.name(),
            t.n_bytes,
            h.data_offset + t.offset
        );
        let e = by_type.entry(t.ty.name()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes;
    }
    let total: u64 = g.tensors().iter().map(|t| t.n_bytes).sum();
    let elements: u64 = g.tensors().iter().map(|t| t.n_elements).sum();
    println!("\n{} tensor bytes ({}), {elements} elements", total, human(total));
    for (ty, (n, bytes)) in by_type {
        println!("  {ty:<7} {n:>5} tensors  {:>12} bytes", bytes);
    }
}
