//go:build !xdan_pkgconfig

package xdan

// Default: the library from `cargo build --release` in this repository, found at run time through
// an rpath. Build with `-tags xdan_pkgconfig` to use an installed library instead.

// #cgo CFLAGS: -I${SRCDIR}/../../include
// #cgo LDFLAGS: -L${SRCDIR}/../../target/release -Wl,-rpath,${SRCDIR}/../../target/release -lxdan
import "C"
