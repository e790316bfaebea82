/* Uses the installed library the way an outside program would: only <xdan.h> and the flags that
   pkg-config or CMake give. Checks the ABI version, that a missing file is reported with a
   message, then loads the model given as argv[1] and runs one forward pass. */
#include <stdio.h>
#include <string.h>
#include <xdan.h>

static int fail(const char *what) {
  fprintf(stderr, "FAIL: %s: %s\n", what, xdan_last_error());
  return 1;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s MODEL.gguf\n", argv[0]);
    return 2;
  }
  if (xdan_abi_version() != XDAN_ABI_VERSION) {
    fprintf(stderr, "FAIL: library ABI %u, header ABI %u\n", xdan_abi_version(), (unsigned)XDAN_ABI_VERSION);
    return 1;
  }

  xdan_model *m = NULL;
  if (xdan_model_load("/nonexistent/model.gguf", NULL, &m) == XDAN_OK) {
    fprintf(stderr, "FAIL: loading a missing file succeeded\n");
    return 1;
  }
  if (strlen(xdan_last_error()) == 0) {
    fprintf(stderr, "FAIL: no message for a missing file\n");
    return 1;
  }

  if (xdan_model_load(argv[1], NULL, &m) != XDAN_OK) return fail("load");
  xdan_model_info info;
  memset(&info, 0, sizeof info);
  info.size = sizeof info;
  if (xdan_model_info_get(m, &info) != XDAN_OK) return fail("info");

  /* One forward pass of the BOS token: the logits cover the vocabulary. */
  xdan_context *c = NULL;
  if (xdan_context_new(m, NULL, &c) != XDAN_OK) return fail("context");
  xdan_token bos = 1;
  if (xdan_step(c, 0, &bos, 1) != XDAN_OK) return fail("step");
  const float *logits = NULL;
  size_t n_vocab = 0;
  if (xdan_logits(c, 0, &logits, &n_vocab) != XDAN_OK) return fail("logits");
  if (n_vocab != info.n_vocab) {
    fprintf(stderr, "FAIL: %zu logits for a vocabulary of %u\n", n_vocab, info.n_vocab);
    return 1;
  }
  size_t best = 0;
  for (size_t i = 1; i < n_vocab; i++)
    if (logits[i] > logits[best]) best = i;
  printf("xdan %s (ABI %u): %s model, %u layers, %u experts; after token 1 the top token is %zu\n",
         xdan_version(), xdan_abi_version(), info.arch, info.n_layer, info.n_expert, best);
  xdan_context_free(c);
  xdan_model_free(m);
  return 0;
}
