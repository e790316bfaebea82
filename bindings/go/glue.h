/* C side of the Go callbacks: installs the exported Go trampolines into the C parameter structs,
   carrying a runtime/cgo.Handle as the user pointer (an integer, never a Go pointer). */
#ifndef XDAN_GO_GLUE_H
#define XDAN_GO_GLUE_H
#include <stdint.h>
#include <stdlib.h>
#include <xdan.h>

void xdan_go_set_progress(xdan_model_params *p, uintptr_t handle);
void xdan_go_set_abort(xdan_context_params *p, uintptr_t handle);
void xdan_go_enable_log(int on);
#endif
