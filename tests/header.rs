//! The committed `include/xdan.h` must be exactly what cbindgen generates from `src/capi/`.

#[path = "support/header_gen.rs"]
mod header_gen;

#[test]
fn committed_header_is_current() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let want = header_gen::generate(dir);
    let path = std::path::Path::new(dir).join("include/xdan.h");
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have != want {
        let line = have
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(have.lines().count().min(want.lines().count()));
        panic!(
            "include/xdan.h is out of date with src/capi/ (first difference at line {}).\n\
             Regenerate it with:  cargo run --example gen_header",
            line + 1
        );
    }
}
