//go:build xdan_pkgconfig

package xdan

// An installed library (scripts/install.sh PREFIX), found through pkg-config (PKG_CONFIG_PATH).

// #cgo pkg-config: xdan
import "C"
