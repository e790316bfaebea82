package xdan

// #include <stdlib.h>
import "C"

import "unsafe"

// C memory for the tests (test files cannot use cgo themselves).
func testCString(s string) *C.char { return C.CString(s) }
func testFree(p *C.char)           { C.free(unsafe.Pointer(p)) }
