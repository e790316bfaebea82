#include "glue.h"
#include "_cgo_export.h"

static bool progress_tramp(float fraction, void *user) {
  return xdanGoProgress(fraction, (uintptr_t)user);
}

static bool abort_tramp(float fraction, void *user) {
  (void)fraction;
  return xdanGoAbort((uintptr_t)user);
}

static void log_tramp(xdan_log_level level, const char *message, void *user) {
  (void)user;
  xdanGoLog((int)level, (char *)message);
}

void xdan_go_set_progress(xdan_model_params *p, uintptr_t handle) {
  p->progress = progress_tramp;
  p->progress_user = (void *)handle;
}

void xdan_go_set_abort(xdan_context_params *p, uintptr_t handle) {
  p->abort_check = abort_tramp;
  p->abort_user = (void *)handle;
}

void xdan_go_enable_log(int on) {
  xdan_set_log_callback(on ? log_tramp : NULL, NULL);
}
