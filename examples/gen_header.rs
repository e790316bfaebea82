//! Regenerates `include/xdan.h` from `src/capi/` with `cbindgen.toml`:
//! `cargo run --example gen_header` (tests/header.rs checks that the committed header is
//! current).

#[path = "../tests/support/header_gen.rs"]
mod header_gen;

fn main() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let text = header_gen::generate(dir);
    let path = std::path::Path::new(dir).join("include/xdan.h");
    std::fs::create_dir_all(path.parent().unwrap()).expect("create include/");
    std::fs::write(&path, text).expect("write include/xdan.h");
    println!("wrote {}", path.display());
}
