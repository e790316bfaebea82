/*
 * The C ABI from C: every function of include/xdan.h, its results and its misuse cases.
 * Built and run (also under valgrind) by tests/capi.rs, which passes the fixture paths:
 *
 *   api_test MODEL.gguf SPM_VOCAB.gguf CHAT_VOCAB.gguf TMPDIR PROMPT_IDS GREEDY_IDS
 *            SPM_TEXT SPM_IDS SPM_DETOK SPM_DETOK_NOSPECIAL
 *
 * MODEL is tiny-mixtral (2 layers, 8 experts, vocab 1024); PROMPT_IDS / GREEDY_IDS are
 * llama.cpp's prompt p1 and its greedy continuation (comma-separated); SPM_* one case of
 * llama.cpp's tokenizer vectors for the SPM vocabulary (text, ids with add_special, detokenize
 * with and without special tokens). Exit status 0 when every check passed.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "xdan.h"

static int n_checks, n_failed;

#define CHECK(cond)                                                                    \
  do {                                                                                 \
    n_checks++;                                                                        \
    if (!(cond)) {                                                                     \
      n_failed++;                                                                      \
      fprintf(stderr, "FAIL %s:%d: %s (last error: '%s')\n", __FILE__, __LINE__, #cond, \
              xdan_last_error());                                                      \
    }                                                                                  \
  } while (0)

/* The call returns `want`; otherwise print what it returned and why. */
#define EXPECT(call, want)                                                             \
  do {                                                                                 \
    n_checks++;                                                                        \
    xdan_status s_ = (call);                                                           \
    if (s_ != (want)) {                                                                \
      n_failed++;                                                                      \
      fprintf(stderr, "FAIL %s:%d: %s returned %s, expected %s (last error: '%s')\n",  \
              __FILE__, __LINE__, #call, xdan_status_name(s_), xdan_status_name(want), \
              xdan_last_error());                                                      \
    }                                                                                  \
  } while (0)

#define OK(call) EXPECT(call, XDAN_OK)

static void section(const char *name) { fprintf(stderr, "-- %s\n", name); }

static const char *model_path, *spm_path, *chat_path, *tmpdir;
static xdan_token prompt[64], greedy[64];
static size_t n_prompt, n_greedy;

static size_t parse_ids(const char *s, xdan_token *out, size_t cap) {
  size_t n = 0;
  while (*s && n < cap) {
    char *end;
    out[n++] = (xdan_token)strtol(s, &end, 10);
    s = *end == ',' ? end + 1 : end;
  }
  return n;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static char *path_in_tmp(const char *name) {
  static char buf[4][1024];
  static int i;
  char *p = buf[i++ % 4];
  snprintf(p, 1024, "%s/%s", tmpdir, name);
  return p;
}

static void write_file(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, n, f) != n) {
    fprintf(stderr, "cannot write %s\n", path);
    exit(2);
  }
  fclose(f);
}

static long file_size(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fclose(f);
  return n;
}

static int argmax(const float *l, size_t n) {
  size_t best = 0;
  for (size_t i = 1; i < n; i++)
    if (l[i] > l[best]) best = i;
  return (int)best;
}

static float max_abs_diff(const float *a, const float *b, size_t n) {
  float m = 0;
  for (size_t i = 0; i < n; i++) {
    float d = a[i] > b[i] ? a[i] - b[i] : b[i] - a[i];
    if (d > m) m = d;
  }
  return m;
}

/* ------------------------------------------------------------------------------------------ */

static void test_library(void) {
  section("library");
  CHECK(xdan_abi_version() == XDAN_ABI_VERSION);
  CHECK(XDAN_ABI_VERSION == 1);
  const char *v = xdan_version();
  CHECK(v != NULL && strlen(v) > 0 && strchr(v, '.') != NULL);
  static const char *names[] = {
      "XDAN_OK",        "XDAN_E_INVALID_ARG",   "XDAN_E_IO",      "XDAN_E_FORMAT",
      "XDAN_E_UNSUPPORTED", "XDAN_E_OUT_OF_MEMORY", "XDAN_E_CONTEXT_FULL", "XDAN_E_DEVICE",
      "XDAN_E_CANCELLED", "XDAN_E_BUFFER_TOO_SMALL", "XDAN_E_BUSY", "XDAN_E_INTERNAL"};
  for (int s = 0; s <= XDAN_E_INTERNAL; s++) CHECK(strcmp(xdan_status_name((xdan_status)s), names[s]) == 0);
  CHECK(strcmp(xdan_status_name((xdan_status)99), "XDAN_E_UNKNOWN") == 0);
  CHECK(xdan_last_error() != NULL);
  bool cuda = xdan_cuda_available();
  CHECK(cuda == true || cuda == false);
  CHECK(XDAN_TOKENIZE_ADD_SPECIAL == 1 && XDAN_TOKENIZE_PARSE_SPECIAL == 2 &&
        XDAN_DETOKENIZE_SKIP_SPECIAL == 1);
  CHECK(XDAN_DEVICE_AUTO == 0 && XDAN_DEVICE_CPU == 1 && XDAN_DEVICE_CUDA == 2);
  CHECK(XDAN_KV_F16 == 0 && XDAN_KV_F32 == 1 && XDAN_KV_Q8_0 == 2);
  CHECK(XDAN_LOG_ERROR == 0 && XDAN_LOG_WARN == 1 && XDAN_LOG_INFO == 2 && XDAN_LOG_DEBUG == 3);
}

static void test_params_init(void) {
  section("params init");
  xdan_model_params_init(NULL);
  xdan_context_params_init(NULL);
  xdan_sampler_params_init(NULL);

  xdan_model_params mp;
  memset(&mp, 0xAB, sizeof mp);
  xdan_model_params_init(&mp);
  CHECK(mp.size == sizeof mp);
  CHECK(mp.device == XDAN_DEVICE_AUTO && mp.cuda_device == 0 && mp.vram_budget == 0);
  CHECK(mp.n_threads == 0 && mp.use_mmap == true && mp.vocab_only == false);
  CHECK(mp.progress == NULL && mp.progress_user == NULL);

  xdan_context_params cp;
  memset(&cp, 0xAB, sizeof cp);
  xdan_context_params_init(&cp);
  CHECK(cp.size == sizeof cp);
  CHECK(cp.n_ctx == 0 && cp.n_seq_max == 1 && cp.n_kv_tokens == 0 && cp.n_batch > 0);
  CHECK(cp.kv_type == XDAN_KV_F16 && cp.n_threads == 0);
  CHECK(cp.abort_check == NULL && cp.abort_user == NULL);

  xdan_sampler_params sp;
  memset(&sp, 0xAB, sizeof sp);
  xdan_sampler_params_init(&sp);
  CHECK(sp.size == sizeof sp);
  CHECK(sp.temperature > 0 && sp.top_k >= 0 && sp.top_p > 0 && sp.top_p <= 1);
  CHECK(sp.min_p >= 0 && sp.repeat_penalty == 1.0f && sp.frequency_penalty == 0 &&
        sp.presence_penalty == 0);
}

/* Progress callback: records the calls; cancels at the call number in *user if set. */
struct progress_log {
  int calls, cancel_at;
  float last;
  bool monotonic;
};

static bool on_progress(float f, void *user) {
  struct progress_log *p = user;
  if (f < p->last || f < 0 || f > 1) p->monotonic = false;
  p->last = f;
  p->calls++;
  return !(p->cancel_at > 0 && p->calls >= p->cancel_at);
}

static xdan_model *test_model_load(void) {
  section("model load");
  xdan_model *m = (xdan_model *)(uintptr_t)0x1234, *sentinel = m;
  EXPECT(xdan_model_load(NULL, NULL, &m), XDAN_E_INVALID_ARG);
  CHECK(m == sentinel);
  CHECK(strstr(xdan_last_error(), "path") != NULL);
  EXPECT(xdan_model_load(model_path, NULL, NULL), XDAN_E_INVALID_ARG);

  /* Missing file: XDAN_E_IO naming the path. */
  const char *missing = path_in_tmp("no-such-model.gguf");
  EXPECT(xdan_model_load(missing, NULL, &m), XDAN_E_IO);
  CHECK(strstr(xdan_last_error(), missing) != NULL);
  CHECK(m == sentinel);

  /* Corrupt files: XDAN_E_FORMAT. */
  const char *bad = path_in_tmp("garbage.gguf");
  write_file(bad, "this is not a GGUF file at all, just text", 41);
  EXPECT(xdan_model_load(bad, NULL, &m), XDAN_E_FORMAT);
  CHECK(strlen(xdan_last_error()) > 0);
  {
    /* The real model cut after 64 KiB: header fine, tensor data missing. */
    FILE *f = fopen(model_path, "rb");
    static char head[65536];
    size_t n = f ? fread(head, 1, sizeof head, f) : 0;
    if (f) fclose(f);
    CHECK(n == sizeof head);
    const char *cut = path_in_tmp("truncated.gguf");
    write_file(cut, head, n);
    EXPECT(xdan_model_load(cut, NULL, &m), XDAN_E_FORMAT);
    CHECK(strlen(xdan_last_error()) > 0);
    CHECK(m == sentinel);
  }

  /* Bad parameters. */
  xdan_model_params mp;
  xdan_model_params_init(&mp);
  mp.size = 0;
  EXPECT(xdan_model_load(model_path, &mp, &m), XDAN_E_INVALID_ARG);
  CHECK(strstr(xdan_last_error(), "size") != NULL);
  xdan_model_params_init(&mp);
  mp.device = (xdan_device)7;
  EXPECT(xdan_model_load(model_path, &mp, &m), XDAN_E_INVALID_ARG);
  xdan_model_params_init(&mp);
  mp.n_threads = -3;
  EXPECT(xdan_model_load(model_path, &mp, &m), XDAN_E_INVALID_ARG);
  CHECK(m == sentinel);

  /* CUDA demanded: without a usable GPU, XDAN_E_DEVICE with the reason; with one, the model
     runs there. AUTO runs wherever it can, and says where. */
  xdan_model_params_init(&mp);
  mp.device = XDAN_DEVICE_CUDA;
  char dev[128];
  size_t dev_len = 0;
  if (!xdan_cuda_available()) {
    EXPECT(xdan_model_load(model_path, &mp, &m), XDAN_E_DEVICE);
    CHECK(strstr(xdan_last_error(), "CUDA") != NULL);
    CHECK(m == sentinel);
  } else {
    xdan_model *gm = NULL;
    OK(xdan_model_load(model_path, &mp, &gm));
    OK(xdan_model_device(gm, dev, sizeof dev, &dev_len));
    CHECK(strncmp(dev, "cuda:", 5) == 0);
    xdan_model_free(gm);
  }
  xdan_model_params_init(&mp);
  mp.device = XDAN_DEVICE_AUTO;
  xdan_model *autom = NULL;
  OK(xdan_model_load(model_path, &mp, &autom));
  OK(xdan_model_device(autom, dev, sizeof dev, &dev_len));
  CHECK(dev_len == strlen(dev) && dev_len > 0);
  if (!xdan_cuda_available()) CHECK(strcmp(dev, "cpu") == 0);
  EXPECT(xdan_model_device(autom, dev, 1, &dev_len), XDAN_E_BUFFER_TOO_SMALL);
  xdan_model_free(autom);

  /* A caller compiled with an older, shorter struct: the rest are defaults. The garbage
     after `size` bytes must not be read. */
  xdan_model_params_init(&mp);
  mp.size = (uint32_t)offsetof(xdan_model_params, n_threads);
  mp.n_threads = -3;
  mp.progress = (xdan_progress_fn)(uintptr_t)0x1;
  xdan_model *old = NULL;
  OK(xdan_model_load(model_path, &mp, &old));
  CHECK(old != NULL);
  xdan_model_free(old);

  /* Progress: called, fractions in [0, 1] and non-decreasing, ends at 1. */
  struct progress_log pl = {0, 0, 0.0f, true};
  xdan_model_params_init(&mp);
  mp.device = XDAN_DEVICE_CPU;
  mp.progress = on_progress;
  mp.progress_user = &pl;
  OK(xdan_model_load(model_path, &mp, &m));
  CHECK(pl.calls >= 1 && pl.monotonic && pl.last == 1.0f);
  CHECK(strlen(xdan_last_error()) == 0);
  xdan_model_free(m);

  /* Cancelled at the first progress report: XDAN_E_CANCELLED, nothing returned or leaked. */
  struct progress_log cancel = {0, 1, 0.0f, true};
  mp.progress_user = &cancel;
  m = sentinel;
  EXPECT(xdan_model_load(model_path, &mp, &m), XDAN_E_CANCELLED);
  CHECK(m == sentinel && cancel.calls == 1);
  if (m != sentinel) xdan_model_free(m);

  /* Without mmap, then the model the rest of the tests use (defaults). */
  xdan_model_params_init(&mp);
  mp.use_mmap = false;
  OK(xdan_model_load(model_path, &mp, &m));
  xdan_model_free(m);
  m = NULL;
  OK(xdan_model_load(model_path, NULL, &m));
  CHECK(m != NULL);
  xdan_model_free(NULL);
  return m;
}

static void test_model_info(xdan_model *m) {
  section("model info and metadata");
  xdan_model_info info;
  memset(&info, 0xAB, sizeof info);
  info.size = sizeof info;
  EXPECT(xdan_model_info_get(NULL, &info), XDAN_E_INVALID_ARG);
  EXPECT(xdan_model_info_get(m, NULL), XDAN_E_INVALID_ARG);
  OK(xdan_model_info_get(m, &info));
  CHECK(strcmp(info.arch, "llama") == 0);
  CHECK(info.n_vocab == 1024 && info.n_ctx_train == 4096 && info.n_embd == 256);
  CHECK(info.n_layer == 2 && info.n_head == 8 && info.n_head_kv == 2 && info.n_ff == 512);
  CHECK(info.n_expert == 8 && info.n_expert_used == 2);
  CHECK(info.n_params > 0);
  CHECK((long)info.file_bytes == file_size(model_path));
  CHECK(info.bos == 1 && info.eos == 2);

  /* An older caller's shorter struct: nothing past its size is written. */
  xdan_model_info small;
  memset(&small, 0xAB, sizeof small);
  small.size = (uint32_t)(offsetof(xdan_model_info, n_vocab) + sizeof small.n_vocab);
  OK(xdan_model_info_get(m, &small));
  CHECK(small.n_vocab == 1024 && strcmp(small.arch, "llama") == 0);
  CHECK(small.n_ctx_train == 0xABABABABu && small.eos == (xdan_token)0xABABABAB);
  small.size = 0;
  EXPECT(xdan_model_info_get(m, &small), XDAN_E_INVALID_ARG);

  /* Metadata through the buffer protocol. */
  char buf[64];
  size_t len = 12345;
  OK(xdan_model_meta(m, "general.architecture", buf, sizeof buf, &len));
  CHECK(len == 5 && strcmp(buf, "llama") == 0);
  OK(xdan_model_meta(m, "llama.block_count", buf, sizeof buf, &len));
  CHECK(len == 1 && strcmp(buf, "2") == 0);
  memset(buf, 'X', sizeof buf);
  len = 0;
  EXPECT(xdan_model_meta(m, "general.architecture", buf, 3, &len), XDAN_E_BUFFER_TOO_SMALL);
  CHECK(len == 5 && buf[0] == 'X' && buf[1] == 'X' && buf[2] == 'X');
  CHECK(strstr(xdan_last_error(), "5") != NULL);
  len = 0;
  EXPECT(xdan_model_meta(m, "general.architecture", NULL, 0, &len), XDAN_E_BUFFER_TOO_SMALL);
  CHECK(len == 5);
  /* Exactly the length: fits, no room for the NUL, which is then not written. */
  memset(buf, 'X', sizeof buf);
  OK(xdan_model_meta(m, "general.architecture", buf, 5, &len));
  CHECK(len == 5 && memcmp(buf, "llama", 5) == 0 && buf[5] == 'X');
  len = 777;
  EXPECT(xdan_model_meta(m, "no.such.key", buf, sizeof buf, &len), XDAN_E_INVALID_ARG);
  CHECK(len == 777 && strstr(xdan_last_error(), "no.such.key") != NULL);
  EXPECT(xdan_model_meta(m, NULL, buf, sizeof buf, &len), XDAN_E_INVALID_ARG);
  EXPECT(xdan_model_meta(m, "general.architecture", buf, sizeof buf, NULL), XDAN_E_INVALID_ARG);
  EXPECT(xdan_model_meta(m, "general.architecture", NULL, 10, &len), XDAN_E_INVALID_ARG);
  EXPECT(xdan_model_meta(NULL, "general.architecture", buf, sizeof buf, &len), XDAN_E_INVALID_ARG);
  /* The last error is empty again after a success. */
  OK(xdan_model_meta(m, "general.architecture", buf, sizeof buf, &len));
  CHECK(strcmp(xdan_last_error(), "") == 0);
}

static void test_tokenizer(xdan_model *tiny, const char *text, const char *ids_s, const char *detok,
                           const char *detok_nospecial) {
  section("tokenizer");
  xdan_token want[256];
  size_t n_want = parse_ids(ids_s, want, 256);

  xdan_model_params mp;
  xdan_model_params_init(&mp);
  mp.vocab_only = true;
  xdan_model *m = NULL;
  OK(xdan_model_load(spm_path, &mp, &m));
  if (!m) return;
  char dev[8];
  size_t dev_len = 99;
  OK(xdan_model_device(m, dev, sizeof dev, &dev_len));
  CHECK(dev_len == 0 && dev[0] == 0); /* vocab-only: no device */

  xdan_token toks[256];
  size_t n = 0;
  OK(xdan_tokenize(m, text, strlen(text), XDAN_TOKENIZE_ADD_SPECIAL, toks, 256, &n));
  CHECK(n == n_want && memcmp(toks, want, n * sizeof *toks) == 0);
  CHECK(n > 0 && toks[0] == 1);

  /* Too small: the exact count, no token written. */
  if (n_want > 1) {
    xdan_token small[256];
    for (int i = 0; i < 256; i++) small[i] = -7;
    size_t got = 0;
    EXPECT(xdan_tokenize(m, text, strlen(text), XDAN_TOKENIZE_ADD_SPECIAL, small, n_want - 1, &got),
           XDAN_E_BUFFER_TOO_SMALL);
    CHECK(got == n_want);
    bool untouched = true;
    for (int i = 0; i < 256; i++) untouched &= small[i] == -7;
    CHECK(untouched);
    EXPECT(xdan_tokenize(m, text, strlen(text), XDAN_TOKENIZE_ADD_SPECIAL, NULL, 0, &got),
           XDAN_E_BUFFER_TOO_SMALL);
    CHECK(got == n_want);
  }
  EXPECT(xdan_tokenize(m, text, strlen(text), 4, toks, 256, &n), XDAN_E_INVALID_ARG);
  EXPECT(xdan_tokenize(m, NULL, 5, 0, toks, 256, &n), XDAN_E_INVALID_ARG);
  EXPECT(xdan_tokenize(m, text, strlen(text), 0, toks, 256, NULL), XDAN_E_INVALID_ARG);
  EXPECT(xdan_tokenize(NULL, text, strlen(text), 0, toks, 256, &n), XDAN_E_INVALID_ARG);
  /* Empty text: just BOS with ADD_SPECIAL, nothing without. */
  OK(xdan_tokenize(m, NULL, 0, XDAN_TOKENIZE_ADD_SPECIAL, toks, 256, &n));
  CHECK(n == 1 && toks[0] == 1);
  OK(xdan_tokenize(m, "", 0, 0, toks, 256, &n));
  CHECK(n == 0);
  /* Special-token text: one token with PARSE_SPECIAL, several without. */
  OK(xdan_tokenize(m, "<s>", 3, XDAN_TOKENIZE_PARSE_SPECIAL, toks, 256, &n));
  CHECK(n == 1 && toks[0] == 1);
  OK(xdan_tokenize(m, "<s>", 3, 0, toks, 256, &n));
  CHECK(n > 1);

  /* Detokenize: with and without special tokens, as llama.cpp does. */
  char buf[1024] = {0};
  size_t len = 0;
  OK(xdan_detokenize(m, want, n_want, 0, buf, sizeof buf, &len));
  CHECK(len == strlen(detok) && strcmp(buf, detok) == 0);
  OK(xdan_detokenize(m, want, n_want, XDAN_DETOKENIZE_SKIP_SPECIAL, buf, sizeof buf, &len));
  CHECK(len == strlen(detok_nospecial) && strcmp(buf, detok_nospecial) == 0);
  memset(buf, 'X', sizeof buf);
  size_t need = 0;
  EXPECT(xdan_detokenize(m, want, n_want, 0, buf, 1, &need), XDAN_E_BUFFER_TOO_SMALL);
  CHECK(need == strlen(detok) && buf[0] == 'X');
  xdan_token bad[2] = {1, 1 << 20};
  len = 99;
  EXPECT(xdan_detokenize(m, bad, 2, 0, buf, sizeof buf, &len), XDAN_E_INVALID_ARG);
  CHECK(len == 99 && strstr(xdan_last_error(), "1048576") != NULL);
  EXPECT(xdan_detokenize(m, NULL, 2, 0, buf, sizeof buf, &len), XDAN_E_INVALID_ARG);
  EXPECT(xdan_detokenize(m, want, n_want, 2, buf, sizeof buf, &len), XDAN_E_INVALID_ARG);
  OK(xdan_detokenize(m, NULL, 0, 0, buf, sizeof buf, &len));
  CHECK(len == 0 && buf[0] == 0);

  /* Pieces. */
  OK(xdan_token_piece(m, 1, buf, sizeof buf, &len));
  CHECK(len == 3 && strcmp(buf, "<s>") == 0);
  EXPECT(xdan_token_piece(m, 1, buf, 2, &len), XDAN_E_BUFFER_TOO_SMALL);
  CHECK(len == 3);
  EXPECT(xdan_token_piece(m, -1, buf, sizeof buf, &len), XDAN_E_INVALID_ARG);
  EXPECT(xdan_token_piece(m, 32000, buf, sizeof buf, &len), XDAN_E_INVALID_ARG);
  EXPECT(xdan_token_piece(m, 1, buf, sizeof buf, NULL), XDAN_E_INVALID_ARG);
  {
    /* The concatenated pieces of the non-special tokens make the text (SPM: after the
       leading space marker). */
    char cat[1024] = {0};
    size_t at = 0;
    for (size_t i = 1; i < n_want; i++) {
      OK(xdan_token_piece(m, want[i], cat + at, sizeof cat - at, &len));
      at += len;
    }
    CHECK(strstr(cat, detok_nospecial + (detok_nospecial[0] == ' ')) != NULL);
  }

  /* End of generation. */
  CHECK(xdan_token_is_eog(m, 2) == true);
  CHECK(xdan_token_is_eog(m, 1) == false);
  CHECK(xdan_token_is_eog(m, 100) == false);
  CHECK(xdan_token_is_eog(m, -5) == false);
  CHECK(xdan_token_is_eog(m, 1 << 30) == false);
  CHECK(xdan_token_is_eog(NULL, 2) == false);
  CHECK(xdan_token_is_eog(tiny, 2) == true);

  /* A vocab-only model cannot make a context. */
  xdan_context *c = (xdan_context *)(uintptr_t)0x99;
  EXPECT(xdan_context_new(m, NULL, &c), XDAN_E_INVALID_ARG);
  CHECK(c == (xdan_context *)(uintptr_t)0x99);
  xdan_model_free(m);

  /* Chat templates (a ChatML vocabulary with a template). */
  m = NULL;
  OK(xdan_model_load(chat_path, &mp, &m));
  if (!m) return;
  xdan_chat_message msgs[2] = {{"system", "Be brief."}, {"user", "hi"}};
  OK(xdan_chat_apply(m, msgs, 2, true, buf, sizeof buf, &len));
  CHECK(len == strlen(buf));
  CHECK(strstr(buf, "<|im_start|>system\nBe brief.<|im_end|>") != NULL);
  CHECK(strstr(buf, "<|im_start|>user\nhi<|im_end|>") != NULL);
  const char *tail = "<|im_start|>assistant\n";
  CHECK(len >= strlen(tail) && strcmp(buf + len - strlen(tail), tail) == 0);
  size_t with_prompt = len;
  OK(xdan_chat_apply(m, msgs, 2, false, buf, sizeof buf, &len));
  CHECK(len < with_prompt && strstr(buf, "assistant") == NULL);
  EXPECT(xdan_chat_apply(m, msgs, 2, true, buf, 4, &len), XDAN_E_BUFFER_TOO_SMALL);
  CHECK(len == with_prompt);
  xdan_chat_message broken[1] = {{NULL, "x"}};
  EXPECT(xdan_chat_apply(m, broken, 1, true, buf, sizeof buf, &len), XDAN_E_INVALID_ARG);
  EXPECT(xdan_chat_apply(m, NULL, 1, true, buf, sizeof buf, &len), XDAN_E_INVALID_ARG);
  /* The rendered chat tokenizes into special tokens with PARSE_SPECIAL. */
  OK(xdan_chat_apply(m, msgs, 2, true, buf, sizeof buf, &len));
  size_t n_special = 0, n_plain = 0;
  OK(xdan_tokenize(m, buf, len, XDAN_TOKENIZE_PARSE_SPECIAL, toks, 256, &n_special));
  OK(xdan_tokenize(m, buf, len, 0, toks, 256, &n_plain));
  CHECK(n_special < n_plain);
  xdan_model_free(m);
}

static bool never_continue(float f, void *user) {
  (void)f;
  (*(int *)user)++;
  return false;
}

static xdan_context *new_context(xdan_model *m, uint32_t n_ctx, uint32_t n_seq) {
  xdan_context_params cp;
  xdan_context_params_init(&cp);
  cp.n_ctx = n_ctx;
  cp.n_seq_max = n_seq;
  cp.kv_type = XDAN_KV_F32;
  xdan_context *c = NULL;
  OK(xdan_context_new(m, &cp, &c));
  return c;
}

static void test_context_and_step(xdan_model *m) {
  section("context and step");
  xdan_context *c = (xdan_context *)(uintptr_t)0x77;
  xdan_context_params cp;
  xdan_context_params_init(&cp);
  EXPECT(xdan_context_new(NULL, &cp, &c), XDAN_E_INVALID_ARG);
  EXPECT(xdan_context_new(m, &cp, NULL), XDAN_E_INVALID_ARG);
  cp.n_seq_max = 0;
  EXPECT(xdan_context_new(m, &cp, &c), XDAN_E_INVALID_ARG);
  xdan_context_params_init(&cp);
  cp.kv_type = (xdan_kv_type)9;
  EXPECT(xdan_context_new(m, &cp, &c), XDAN_E_INVALID_ARG);
  xdan_context_params_init(&cp);
  cp.size = 2;
  EXPECT(xdan_context_new(m, &cp, &c), XDAN_E_INVALID_ARG);
  CHECK(c == (xdan_context *)(uintptr_t)0x77);
  c = NULL;
  OK(xdan_context_new(m, NULL, &c)); /* defaults: n_ctx = the training context, 4096 */
  xdan_context_free(c);
  xdan_context_free(NULL);

  c = new_context(m, 64, 4);
  if (!c) return;
  const float *logits = (const float *)(uintptr_t)0x55;
  size_t nv = 3;
  EXPECT(xdan_logits(c, 0, &logits, &nv), XDAN_E_INVALID_ARG); /* nothing stepped yet */
  CHECK(logits == (const float *)(uintptr_t)0x55 && nv == 3);

  /* Misuse: nothing changes. */
  xdan_token bad_tok[2] = {1, 1024};
  xdan_token neg_tok[1] = {-1};
  EXPECT(xdan_step(NULL, 0, prompt, n_prompt), XDAN_E_INVALID_ARG);
  EXPECT(xdan_step(c, 0, NULL, 3), XDAN_E_INVALID_ARG);
  EXPECT(xdan_step(c, 0, prompt, 0), XDAN_E_INVALID_ARG);
  EXPECT(xdan_step(c, 0, bad_tok, 2), XDAN_E_INVALID_ARG);
  CHECK(strstr(xdan_last_error(), "1024") != NULL);
  EXPECT(xdan_step(c, 0, neg_tok, 1), XDAN_E_INVALID_ARG);
  EXPECT(xdan_step(c, 4, prompt, n_prompt), XDAN_E_INVALID_ARG);
  CHECK(strstr(xdan_last_error(), "4") != NULL);
  CHECK(xdan_seq_len(c, 0) == 0);

  /* The prompt, then the greedy continuation: llama.cpp's tokens. */
  OK(xdan_step(c, 0, prompt, n_prompt));
  CHECK(xdan_seq_len(c, 0) == n_prompt);
  OK(xdan_logits(c, 0, &logits, &nv));
  CHECK(nv == 1024 && logits != NULL);
  if (nv == 1024 && logits) CHECK(argmax(logits, nv) == greedy[0]);
  EXPECT(xdan_logits(c, 0, NULL, &nv), XDAN_E_INVALID_ARG);
  EXPECT(xdan_logits(c, 0, &logits, NULL), XDAN_E_INVALID_ARG);
  EXPECT(xdan_logits(c, 1, &logits, &nv), XDAN_E_INVALID_ARG);
  EXPECT(xdan_logits(c, 9, &logits, &nv), XDAN_E_INVALID_ARG);

  xdan_sampler_params sp;
  xdan_sampler_params_init(&sp);
  sp.temperature = 0;
  xdan_sampler *s = NULL;
  OK(xdan_sampler_new(m, &sp, &s));
  OK(xdan_sampler_accept(s, prompt, n_prompt));
  xdan_token got[64];
  size_t n_got = 0;
  for (size_t i = 0; i < n_greedy; i++) {
    xdan_token t = -1;
    OK(xdan_sample(c, 0, s, &t));
    got[n_got++] = t;
    if (t < 0) break;
    OK(xdan_step(c, 0, &t, 1));
  }
  bool same = n_got == n_greedy && memcmp(got, greedy, n_greedy * sizeof *got) == 0;
  CHECK(same);
  if (!same) {
    fprintf(stderr, "   greedy: got");
    for (size_t i = 0; i < n_got; i++) fprintf(stderr, " %d", got[i]);
    fprintf(stderr, "\n   greedy: llama.cpp");
    for (size_t i = 0; i < n_greedy; i++) fprintf(stderr, " %d", greedy[i]);
    fprintf(stderr, "\n");
  }
  CHECK(xdan_seq_len(c, 0) == n_prompt + n_greedy);
  xdan_sampler_free(s);

  /* Batch: two sequences in one pass give what single steps give. */
  xdan_seq_tokens items[2] = {{1, prompt, n_prompt}, {2, prompt, 3}};
  OK(xdan_step_batch(c, items, 2));
  CHECK(xdan_seq_len(c, 1) == n_prompt && xdan_seq_len(c, 2) == 3);
  {
    xdan_context *ref = new_context(m, 64, 1);
    const float *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    OK(xdan_step(ref, 0, prompt, n_prompt));
    OK(xdan_logits(ref, 0, &a, &na));
    OK(xdan_logits(c, 1, &b, &nb));
    CHECK(a && b && na == nb && max_abs_diff(a, b, na) < 1e-3f);
    OK(xdan_seq_clear(ref, 0));
    OK(xdan_step(ref, 0, prompt, 3));
    OK(xdan_logits(ref, 0, &a, &na));
    OK(xdan_logits(c, 2, &b, &nb));
    CHECK(a && b && na == nb && max_abs_diff(a, b, na) < 1e-3f);
    xdan_context_free(ref);
  }
  xdan_seq_tokens dup[2] = {{1, prompt, 1}, {1, prompt, 1}};
  EXPECT(xdan_step_batch(c, dup, 2), XDAN_E_INVALID_ARG);
  xdan_seq_tokens badb[2] = {{1, prompt, 1}, {2, bad_tok, 2}};
  EXPECT(xdan_step_batch(c, badb, 2), XDAN_E_INVALID_ARG);
  xdan_seq_tokens badseq[1] = {{7, prompt, 1}};
  EXPECT(xdan_step_batch(c, badseq, 1), XDAN_E_INVALID_ARG);
  xdan_seq_tokens nulltok[1] = {{1, NULL, 2}};
  EXPECT(xdan_step_batch(c, nulltok, 1), XDAN_E_INVALID_ARG);
  EXPECT(xdan_step_batch(c, NULL, 1), XDAN_E_INVALID_ARG);
  EXPECT(xdan_step_batch(c, items, 0), XDAN_E_INVALID_ARG);
  CHECK(xdan_seq_len(c, 1) == n_prompt && xdan_seq_len(c, 2) == 3);
  xdan_context_free(c);

  /* Context full: the failing step changes nothing. */
  section("context full");
  c = new_context(m, 16, 1);
  if (!c) return;
  OK(xdan_step(c, 0, prompt, n_prompt));
  OK(xdan_step(c, 0, prompt, n_prompt));
  CHECK(xdan_seq_len(c, 0) == 2 * n_prompt);
  float before[1024];
  OK(xdan_logits(c, 0, &logits, &nv));
  if (logits && nv == 1024) memcpy(before, logits, sizeof before);
  EXPECT(xdan_step(c, 0, prompt, n_prompt), XDAN_E_CONTEXT_FULL);
  CHECK(xdan_seq_len(c, 0) == 2 * n_prompt);
  OK(xdan_logits(c, 0, &logits, &nv));
  CHECK(logits && nv == 1024 && memcmp(before, logits, sizeof before) == 0);
  OK(xdan_step(c, 0, prompt, 16 - 2 * n_prompt)); /* exactly full is fine */
  CHECK(xdan_seq_len(c, 0) == 16);
  xdan_context_free(c);

  /* The abort check cancels a step; the sequence is unchanged. */
  section("cancel");
  int polls = 0;
  xdan_context_params_init(&cp);
  cp.n_ctx = 64;
  cp.abort_check = never_continue;
  cp.abort_user = &polls;
  c = NULL;
  OK(xdan_context_new(m, &cp, &c));
  if (!c) return;
  EXPECT(xdan_step(c, 0, prompt, n_prompt), XDAN_E_CANCELLED);
  CHECK(polls >= 1);
  CHECK(xdan_seq_len(c, 0) == 0);
  EXPECT(xdan_logits(c, 0, &logits, &nv), XDAN_E_INVALID_ARG);
  xdan_context_free(c);
}

static void test_sequences(xdan_model *m) {
  section("sequences");
  xdan_context *c = new_context(m, 64, 4);
  if (!c) return;
  const float *l0 = NULL, *l1 = NULL;
  size_t n0 = 0, n1 = 0;
  static float a[1024], b[1024];
  xdan_token next = greedy[0];

  CHECK(xdan_seq_len(NULL, 0) == 0);
  CHECK(xdan_seq_len(c, 99) == 0 && strstr(xdan_last_error(), "99") != NULL);
  OK(xdan_step(c, 0, prompt, n_prompt));

  /* Fork shares blocks; stepping the same token on both gives the same logits. */
  xdan_kv_stats st;
  memset(&st, 0, sizeof st);
  st.size = sizeof st;
  OK(xdan_kv_stats_get(c, &st));
  uint64_t used_before = st.used_tokens;
  CHECK(st.capacity_tokens >= 64 && st.used_tokens == n_prompt && st.shared_tokens == 0 && st.bytes > 0);
  OK(xdan_seq_fork(c, 0, 3));
  CHECK(xdan_seq_len(c, 3) == n_prompt);
  OK(xdan_kv_stats_get(c, &st));
  CHECK(st.used_tokens == used_before && st.shared_tokens > 0);
  OK(xdan_step(c, 0, &next, 1));
  OK(xdan_logits(c, 0, &l0, &n0));
  if (l0) memcpy(a, l0, sizeof a);
  OK(xdan_step(c, 3, &next, 1));
  OK(xdan_logits(c, 3, &l1, &n1));
  CHECK(l1 && n0 == n1 && max_abs_diff(a, l1, n1) < 1e-4f);
  EXPECT(xdan_seq_fork(c, 0, 0), XDAN_E_INVALID_ARG);
  EXPECT(xdan_seq_fork(c, 0, 4), XDAN_E_INVALID_ARG);
  EXPECT(xdan_seq_fork(c, 5, 1), XDAN_E_INVALID_ARG);
  EXPECT(xdan_seq_fork(NULL, 0, 1), XDAN_E_INVALID_ARG);

  /* Truncate, then re-step: the same logits as before. */
  OK(xdan_seq_truncate(c, 3, n_prompt));
  CHECK(xdan_seq_len(c, 3) == n_prompt);
  EXPECT(xdan_logits(c, 3, &l1, &n1), XDAN_E_INVALID_ARG);
  OK(xdan_step(c, 3, &next, 1));
  OK(xdan_logits(c, 3, &l1, &n1));
  CHECK(l1 && max_abs_diff(a, l1, n1) < 1e-4f);
  OK(xdan_seq_truncate(c, 3, 1000)); /* longer than the sequence: nothing changes */
  CHECK(xdan_seq_len(c, 3) == n_prompt + 1);
  EXPECT(xdan_seq_truncate(c, 4, 0), XDAN_E_INVALID_ARG);
  EXPECT(xdan_seq_truncate(NULL, 0, 0), XDAN_E_INVALID_ARG);
  OK(xdan_seq_clear(c, 3));
  CHECK(xdan_seq_len(c, 3) == 0);
  EXPECT(xdan_seq_clear(c, 4), XDAN_E_INVALID_ARG);
  EXPECT(xdan_seq_clear(NULL, 0), XDAN_E_INVALID_ARG);

  /* Save and load: the loaded sequence continues exactly like the original. */
  const char *state = path_in_tmp("seq0.state");
  OK(xdan_seq_save(c, 0, state));
  CHECK(file_size(state) > 0);
  OK(xdan_seq_load(c, 1, state));
  CHECK(xdan_seq_len(c, 1) == xdan_seq_len(c, 0));
  xdan_token next2 = greedy[1];
  OK(xdan_step(c, 0, &next2, 1));
  OK(xdan_logits(c, 0, &l0, &n0));
  if (l0) memcpy(a, l0, sizeof a);
  OK(xdan_step(c, 1, &next2, 1));
  OK(xdan_logits(c, 1, &l1, &n1));
  CHECK(l1 && n0 == n1 && max_abs_diff(a, l1, n1) < 1e-4f);
  /* Into another context of the same model. */
  {
    xdan_context *c2 = new_context(m, 64, 1);
    OK(xdan_seq_load(c2, 0, state));
    CHECK(xdan_seq_len(c2, 0) == n_prompt + 1);
    OK(xdan_step(c2, 0, &next2, 1));
    OK(xdan_logits(c2, 0, &l1, &n1));
    CHECK(l1 && max_abs_diff(a, l1, n1) < 1e-4f);
    xdan_context_free(c2);
  }
  /* Failures leave the target sequence alone. */
  uint32_t len2 = xdan_seq_len(c, 2);
  EXPECT(xdan_seq_load(c, 2, path_in_tmp("no-such.state")), XDAN_E_IO);
  CHECK(strstr(xdan_last_error(), "no-such.state") != NULL);
  const char *junk = path_in_tmp("junk.state");
  write_file(junk, "definitely not a state file", 27);
  EXPECT(xdan_seq_load(c, 2, junk), XDAN_E_FORMAT);
  CHECK(xdan_seq_len(c, 2) == len2);
  EXPECT(xdan_seq_save(c, 0, path_in_tmp("no-such-dir/x.state")), XDAN_E_IO);
  EXPECT(xdan_seq_save(c, 0, NULL), XDAN_E_INVALID_ARG);
  EXPECT(xdan_seq_load(c, 0, NULL), XDAN_E_INVALID_ARG);
  EXPECT(xdan_seq_save(c, 9, state), XDAN_E_INVALID_ARG);
  EXPECT(xdan_seq_load(c, 9, state), XDAN_E_INVALID_ARG);
  /* A state of another model is refused. */
  {
    xdan_model *other = NULL;
    xdan_model_params mp;
    xdan_model_params_init(&mp);
    OK(xdan_model_load(getenv("XDAN_TEST_OTHER_MODEL"), &mp, &other));
    if (other) {
      xdan_context *co = new_context(other, 64, 1);
      EXPECT(xdan_seq_load(co, 0, state), XDAN_E_FORMAT);
      CHECK(xdan_seq_len(co, 0) == 0);
      xdan_context_free(co);
      xdan_model_free(other);
    }
  }

  /* Statistics: an older caller's shorter struct gets only what fits. */
  xdan_kv_stats small;
  memset(&small, 0xCD, sizeof small);
  small.size = (uint32_t)(offsetof(xdan_kv_stats, used_tokens) + sizeof small.used_tokens);
  OK(xdan_kv_stats_get(c, &small));
  CHECK(small.used_tokens > 0 && small.bytes == 0xCDCDCDCDCDCDCDCDull);
  EXPECT(xdan_kv_stats_get(c, NULL), XDAN_E_INVALID_ARG);
  EXPECT(xdan_kv_stats_get(NULL, &st), XDAN_E_INVALID_ARG);
  small.size = 0;
  EXPECT(xdan_kv_stats_get(c, &small), XDAN_E_INVALID_ARG);
  (void)b;
  xdan_context_free(c);
}

static void test_sampler(xdan_model *m) {
  section("sampler");
  xdan_sampler *s = (xdan_sampler *)(uintptr_t)0x42;
  xdan_sampler_params sp;
  xdan_sampler_params_init(&sp);
  EXPECT(xdan_sampler_new(NULL, &sp, &s), XDAN_E_INVALID_ARG);
  EXPECT(xdan_sampler_new(m, &sp, NULL), XDAN_E_INVALID_ARG);
  sp.top_p = 2.0f;
  EXPECT(xdan_sampler_new(m, &sp, &s), XDAN_E_INVALID_ARG);
  CHECK(strstr(xdan_last_error(), "top_p") != NULL);
  xdan_sampler_params_init(&sp);
  sp.repeat_penalty = 0.0f;
  EXPECT(xdan_sampler_new(m, &sp, &s), XDAN_E_INVALID_ARG);
  CHECK(s == (xdan_sampler *)(uintptr_t)0x42);
  s = NULL;
  OK(xdan_sampler_new(m, NULL, &s)); /* defaults */
  xdan_sampler_free(s);

  xdan_context *c = new_context(m, 64, 2);
  if (!c) return;
  OK(xdan_step(c, 0, prompt, n_prompt));

  /* Same seed, same tokens; the draw follows the sampler, not the context. */
  xdan_sampler_params_init(&sp);
  sp.temperature = 1.5f;
  sp.top_k = 0;
  sp.top_p = 1.0f;
  sp.min_p = 0.0f;
  sp.seed = 1234;
  xdan_sampler *s1 = NULL, *s2 = NULL;
  OK(xdan_sampler_new(m, &sp, &s1));
  OK(xdan_sampler_new(m, &sp, &s2));
  xdan_token r1[32], r2[32];
  bool all_same_token = true;
  for (int i = 0; i < 32; i++) {
    OK(xdan_sample(c, 0, s1, &r1[i]));
    OK(xdan_sample(c, 0, s2, &r2[i]));
    CHECK(r1[i] >= 0 && r1[i] < 1024);
    if (r1[i] != r1[0]) all_same_token = false;
  }
  CHECK(memcmp(r1, r2, sizeof r1) == 0);
  CHECK(!all_same_token); /* temperature 1.5 over 1024 tokens does vary */
  /* Reset restarts the generator: the same draws again. */
  xdan_sampler_reset(s1);
  xdan_sampler_reset(NULL);
  for (int i = 0; i < 32; i++) {
    xdan_token t;
    OK(xdan_sample(c, 0, s1, &t));
    CHECK(t == r1[i]);
  }
  /* Misuse. */
  xdan_token t = -99;
  EXPECT(xdan_sample(c, 1, s1, &t), XDAN_E_INVALID_ARG); /* seq 1 has no logits */
  EXPECT(xdan_sample(c, 2, s1, &t), XDAN_E_INVALID_ARG); /* out of range */
  EXPECT(xdan_sample(NULL, 0, s1, &t), XDAN_E_INVALID_ARG);
  EXPECT(xdan_sample(c, 0, NULL, &t), XDAN_E_INVALID_ARG);
  EXPECT(xdan_sample(c, 0, s1, NULL), XDAN_E_INVALID_ARG);
  CHECK(t == -99);
  xdan_token bad[3] = {5, 6, 5000};
  EXPECT(xdan_sampler_accept(s1, bad, 3), XDAN_E_INVALID_ARG);
  EXPECT(xdan_sampler_accept(s1, NULL, 3), XDAN_E_INVALID_ARG);
  EXPECT(xdan_sampler_accept(NULL, bad, 1), XDAN_E_INVALID_ARG);
  OK(xdan_sampler_accept(s1, NULL, 0));
  OK(xdan_sampler_accept(s1, bad, 2));

  /* Penalties act on the history: a greedy sampler with a huge presence penalty on the
     argmax token picks something else once that token was accepted. */
  xdan_sampler_params_init(&sp);
  sp.temperature = 0;
  sp.presence_penalty = 1000.0f;
  xdan_sampler *sg = NULL;
  OK(xdan_sampler_new(m, &sp, &sg));
  OK(xdan_sample(c, 0, sg, &t));
  CHECK(t == greedy[0]);
  OK(xdan_sample(c, 0, sg, &t)); /* now greedy[0] is in the history */
  CHECK(t != greedy[0]);
  xdan_sampler_free(sg);
  xdan_sampler_free(s1);
  xdan_sampler_free(s2);
  xdan_sampler_free(NULL);
  xdan_context_free(c);
}

/* ---- two threads on one context / sampler ------------------------------------------------ */

struct hold {
  atomic_int inside;   /* set by the holder once it holds the object */
  atomic_int release;  /* set by the main thread to let it go */
  xdan_context *c;
  xdan_sampler *s;
  xdan_status result;
};

static bool hold_in_abort_check(float f, void *user) {
  (void)f;
  struct hold *h = user;
  atomic_store(&h->inside, 1);
  for (int i = 0; i < 20000 && !atomic_load(&h->release); i++) sleep_ms(1);
  return true;
}

static void *step_thread(void *arg) {
  struct hold *h = arg;
  h->result = xdan_step(h->c, 0, prompt, n_prompt);
  return NULL;
}

static void hold_sampler(void *user) { hold_in_abort_check(0, user); }

static void *sampler_thread(void *arg) {
  struct hold *h = arg;
  h->result = xdan_debug_sampler_hold(h->s, hold_sampler, h);
  return NULL;
}

static bool wait_inside(struct hold *h) {
  for (int i = 0; i < 20000; i++) {
    if (atomic_load(&h->inside)) return true;
    sleep_ms(1);
  }
  return false;
}

static void test_busy(xdan_model *m) {
  section("busy");
  struct hold h;
  memset(&h, 0, sizeof h);
  xdan_context_params cp;
  xdan_context_params_init(&cp);
  cp.n_ctx = 64;
  cp.n_seq_max = 2;
  cp.abort_check = hold_in_abort_check;
  cp.abort_user = &h;
  OK(xdan_context_new(m, &cp, &h.c));
  xdan_sampler *s = NULL;
  OK(xdan_sampler_new(m, NULL, &s));
  if (!h.c || !s) return;

  pthread_t th;
  pthread_create(&th, NULL, step_thread, &h);
  bool inside = wait_inside(&h);
  CHECK(inside); /* the engine polled the abort check during the step */
  if (inside) {
    const float *l;
    size_t nv;
    xdan_token t;
    xdan_kv_stats st;
    st.size = sizeof st;
    EXPECT(xdan_step(h.c, 1, prompt, 1), XDAN_E_BUSY);
    CHECK(strstr(xdan_last_error(), "in use") != NULL);
    xdan_seq_tokens items[1] = {{1, prompt, 1}};
    EXPECT(xdan_step_batch(h.c, items, 1), XDAN_E_BUSY);
    EXPECT(xdan_logits(h.c, 0, &l, &nv), XDAN_E_BUSY);
    EXPECT(xdan_sample(h.c, 0, s, &t), XDAN_E_BUSY);
    EXPECT(xdan_seq_truncate(h.c, 0, 0), XDAN_E_BUSY);
    EXPECT(xdan_seq_clear(h.c, 1), XDAN_E_BUSY);
    EXPECT(xdan_seq_fork(h.c, 0, 1), XDAN_E_BUSY);
    EXPECT(xdan_seq_save(h.c, 0, path_in_tmp("busy.state")), XDAN_E_BUSY);
    EXPECT(xdan_seq_load(h.c, 1, path_in_tmp("busy.state")), XDAN_E_BUSY);
    EXPECT(xdan_kv_stats_get(h.c, &st), XDAN_E_BUSY);
    CHECK(xdan_seq_len(h.c, 0) == 0 && strstr(xdan_last_error(), "in use") != NULL);
    /* The model itself is shareable meanwhile. */
    char buf[16];
    size_t len;
    OK(xdan_model_meta(m, "general.architecture", buf, sizeof buf, &len));
  }
  atomic_store(&h.release, 1);
  pthread_join(th, NULL);
  CHECK(h.result == XDAN_OK);
  CHECK(xdan_seq_len(h.c, 0) == n_prompt);

  /* A sampler held by another thread. */
  struct hold hs;
  memset(&hs, 0, sizeof hs);
  hs.s = s;
  pthread_create(&th, NULL, sampler_thread, &hs);
  inside = wait_inside(&hs);
  CHECK(inside);
  if (inside) {
    xdan_token t = -1;
    EXPECT(xdan_sample(h.c, 0, s, &t), XDAN_E_BUSY);
    CHECK(t == -1);
    EXPECT(xdan_sampler_accept(s, prompt, 1), XDAN_E_BUSY);
    EXPECT(xdan_debug_sampler_hold(s, hold_sampler, &hs), XDAN_E_BUSY);
  }
  atomic_store(&hs.release, 1);
  pthread_join(th, NULL);
  CHECK(hs.result == XDAN_OK);
  atomic_store(&h.release, 1); /* the abort check no longer waits */
  xdan_token t;
  OK(xdan_sample(h.c, 0, s, &t));
  EXPECT(xdan_debug_sampler_hold(s, NULL, NULL), XDAN_E_INVALID_ARG);
  EXPECT(xdan_debug_sampler_hold(NULL, hold_sampler, NULL), XDAN_E_INVALID_ARG);
  xdan_sampler_free(s);
  xdan_context_free(h.c);
}

/* ---- a panic inside the engine ----------------------------------------------------------- */

static atomic_int log_errors, log_total;

static void on_log(xdan_log_level level, const char *msg, void *user) {
  CHECK(user == (void *)&log_total);
  CHECK(msg != NULL);
  atomic_fetch_add(&log_total, 1);
  if (level == XDAN_LOG_ERROR && strstr(msg, "panic") != NULL) atomic_fetch_add(&log_errors, 1);
}

static void test_panic(xdan_model *m) {
  section("panic inside the engine");
  xdan_set_log_callback(on_log, &log_total);
  xdan_context *c = new_context(m, 64, 1);
  if (!c) return;
  EXPECT(xdan_debug_panic_next_step(NULL), XDAN_E_INVALID_ARG);
  OK(xdan_debug_panic_next_step(c));
  EXPECT(xdan_step(c, 0, prompt, n_prompt), XDAN_E_INTERNAL);
  CHECK(strstr(xdan_last_error(), "panic") != NULL);
  CHECK(atomic_load(&log_errors) >= 1);
  /* The context is unusable afterwards, and says so; the process and the model are fine. */
  EXPECT(xdan_step(c, 0, prompt, n_prompt), XDAN_E_INTERNAL);
  CHECK(xdan_seq_len(c, 0) == 0);
  xdan_context_free(c);
  xdan_set_log_callback(NULL, NULL);
  int total = atomic_load(&log_total);
  c = new_context(m, 64, 1);
  OK(xdan_step(c, 0, prompt, n_prompt));
  xdan_context_free(c);
  CHECK(atomic_load(&log_total) == total); /* the default logger is back */
}

/* ---- lifetimes --------------------------------------------------------------------------- */

static void test_model_outlived_by_context(void) {
  section("model freed before its context");
  xdan_model *m = NULL;
  OK(xdan_model_load(model_path, NULL, &m));
  if (!m) return;
  xdan_context *c = new_context(m, 64, 1);
  xdan_sampler_params sp;
  xdan_sampler_params_init(&sp);
  sp.temperature = 0;
  xdan_sampler *s = NULL;
  OK(xdan_sampler_new(m, &sp, &s));
  xdan_model_free(m);
  OK(xdan_step(c, 0, prompt, n_prompt));
  xdan_token t = -1;
  OK(xdan_sample(c, 0, s, &t));
  CHECK(t == greedy[0]);
  xdan_sampler_free(s);
  xdan_context_free(c);
}

int main(int argc, char **argv) {
  if (argc != 11) {
    fprintf(stderr, "usage: %s MODEL SPM_VOCAB CHAT_VOCAB TMPDIR PROMPT_IDS GREEDY_IDS SPM_TEXT "
                    "SPM_IDS SPM_DETOK SPM_DETOK_NOSPECIAL\n", argv[0]);
    return 2;
  }
  model_path = argv[1];
  spm_path = argv[2];
  chat_path = argv[3];
  tmpdir = argv[4];
  n_prompt = parse_ids(argv[5], prompt, 64);
  n_greedy = parse_ids(argv[6], greedy, 64);
  if (n_prompt == 0 || n_greedy == 0 || 2 * n_prompt > 16) {
    fprintf(stderr, "bad prompt / greedy ids\n");
    return 2;
  }

  test_library();
  test_params_init();
  xdan_model *m = test_model_load();
  if (m) {
    test_model_info(m);
    test_tokenizer(m, argv[7], argv[8], argv[9], argv[10]);
    test_context_and_step(m);
    test_sequences(m);
    test_sampler(m);
    test_busy(m);
    test_panic(m);
    xdan_model_free(m);
  }
  test_model_outlived_by_context();

  fprintf(stderr, "api_test: %d checks, %d failed\n", n_checks, n_failed);
  return n_failed == 0 ? 0 : 1;
}
