//! Shared by `examples/gen_header.rs` and `tests/header.rs`: the header text cbindgen makes
//! from `src/capi/` with `cbindgen.toml`.

use std::path::Path;

pub fn generate(crate_dir: &str) -> String {
    let dir = Path::new(crate_dir);
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("read cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/capi/mod.rs"))
        .generate()
        .expect("cbindgen failed on src/capi/");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("header is UTF-8")
}
