//! Gives the shared library an soname carrying the ABI version (`libxdan.so.1`), so programs
//! linked against one ABI never load another: an installed `libxdan.so.1` is what they ask for.
//!
//! In-tree consumers (the binding tests, the examples) link `target/<profile>/libxdan.so` directly;
//! their binaries then ask for `libxdan.so.1`, so a `libxdan.so.1 -> libxdan.so` link is placed
//! beside it. It dangles until the library is linked, which happens right after this script.

use std::path::PathBuf;

/// Bump together with `XDAN_ABI_VERSION` in the C ABI.
const ABI_VERSION: u32 = 1;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os != "linux" && os != "android" && os != "freebsd" {
        return;
    }
    let soname = format!("libxdan.so.{ABI_VERSION}");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");

    // OUT_DIR is <target>/<profile>/build/<crate>-<hash>/out.
    let Some(out_dir) = std::env::var_os("OUT_DIR").map(PathBuf::from) else { return };
    let Some(profile_dir) = out_dir.ancestors().nth(3) else { return };
    let link = profile_dir.join(&soname);
    if std::fs::symlink_metadata(&link).is_err() {
        #[cfg(unix)]
        let _ = std::os::unix::fs::symlink("libxdan.so", &link);
    }
}
