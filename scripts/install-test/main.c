/* Uses the installed library the way an outside program would: only <xdan.h> and the flags that
   pkg-config or CMake give. Loads the model given as argv[1], checks the ABI version, tokenizes
   and detokenizes a sentence, and checks that a missing file is reported with a message. */
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
  const char *text = "Hello world";
  xdan_token toks[64];
  size_t n = 0;
  if (xdan_tokenize(m, text, strlen(text), XDAN_TOKENIZE_ADD_SPECIAL, toks, 64, &n) != XDAN_OK) return fail("tokenize");
  char buf[128];
  size_t len = 0;
  if (xdan_detokenize(m, toks, n, XDAN_DETOKENIZE_SKIP_SPECIAL, buf, sizeof buf, &len) != XDAN_OK) return fail("detokenize");
  if (len != strlen(text) || memcmp(buf, text, len) != 0) {
    fprintf(stderr, "FAIL: round trip gave '%.*s'\n", (int)len, buf);
    return 1;
  }
  printf("xdan %s (ABI %u): '%s' -> %zu tokens -> '%.*s'\n", xdan_version(), xdan_abi_version(), text, n,
         (int)len, buf);
  xdan_model_free(m);
  return 0;
}
