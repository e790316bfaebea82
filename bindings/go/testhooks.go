package xdan

/*
#include <stdlib.h>
#include "glue.h"
*/
import "C"

import "unsafe"

// For the tests (test files cannot use cgo themselves).
func testCString(s string) *C.char { return C.CString(s) }
func testFree(p *C.char)           { C.free(unsafe.Pointer(p)) }

// testPanicNextStep arms the library's test hook: the next step on c panics inside the engine.
func testPanicNextStep(c *Context) error {
	return c.with("xdan_debug_panic_next_step", func(p *C.xdan_context) error {
		return call("xdan_debug_panic_next_step", func() C.xdan_status {
			return C.xdan_status(C.xdan_debug_panic_next_step(p))
		})
	})
}
