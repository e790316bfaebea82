/*
 * generate: a prompt in, streamed text out, through the xdan C ABI.
 *
 *   generate MODEL.gguf "PROMPT" [-n TOKENS] [-t TEMPERATURE] [-s SEED] [--raw]
 *
 * The prompt is wrapped in the model's chat template (unless --raw or the model has none),
 * the reply is streamed to stdout as it is generated, a progress bar shows the load on
 * stderr, and the speeds are printed at the end. Temperature 0 (the default) is greedy.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "xdan.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static bool progress_bar(float done, void *user) {
  (void)user;
  int width = 40, filled = (int)(done * (float)width + 0.5f);
  fprintf(stderr, "\rloading [");
  for (int i = 0; i < width; i++) fputc(i < filled ? '#' : ' ', stderr);
  fprintf(stderr, "] %3d%%", (int)(done * 100.0f + 0.5f));
  if (done >= 1.0f) fputc('\n', stderr);
  return true; /* returning false would cancel the load */
}

static int fail(const char *what, xdan_status s) {
  fprintf(stderr, "\n%s: %s: %s\n", what, xdan_status_name(s), xdan_last_error());
  return 1;
}

int main(int argc, char **argv) {
  const char *model_path = NULL, *prompt = NULL;
  int n_predict = 128;
  float temperature = 0.0f;
  unsigned long long seed = 0;
  bool raw = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-n") && i + 1 < argc) n_predict = atoi(argv[++i]);
    else if (!strcmp(argv[i], "-t") && i + 1 < argc) temperature = (float)atof(argv[++i]);
    else if (!strcmp(argv[i], "-s") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--raw")) raw = true;
    else if (!model_path) model_path = argv[i];
    else if (!prompt) prompt = argv[i];
    else {
      fprintf(stderr, "unexpected argument '%s'\n", argv[i]);
      return 2;
    }
  }
  if (!model_path || !prompt || n_predict <= 0) {
    fprintf(stderr, "usage: %s MODEL.gguf \"PROMPT\" [-n TOKENS] [-t TEMPERATURE] [-s SEED] [--raw]\n",
            argv[0]);
    return 2;
  }
  if (xdan_abi_version() != XDAN_ABI_VERSION) {
    fprintf(stderr, "libxdan ABI %u, header ABI %u\n", xdan_abi_version(), XDAN_ABI_VERSION);
    return 1;
  }
  fprintf(stderr, "xdan %s\n", xdan_version());

  /* Load. */
  xdan_model_params mp;
  xdan_model_params_init(&mp);
  mp.progress = progress_bar;
  xdan_model *model = NULL;
  double t0 = now_s();
  xdan_status s = xdan_model_load(model_path, &mp, &model);
  if (s != XDAN_OK) return fail("load", s);
  double t_load = now_s() - t0;
  xdan_model_info info;
  info.size = sizeof info;
  xdan_model_info_get(model, &info);
  fprintf(stderr, "%s: %u layers, %u experts (%u used), vocab %u, %.1f MB, loaded in %.2f s\n",
          info.arch, info.n_layer, info.n_expert, info.n_expert_used, info.n_vocab,
          (double)info.file_bytes / 1e6, t_load);

  /* The prompt through the chat template, then tokens. */
  char *text = NULL;
  size_t text_len = 0;
  if (!raw) {
    xdan_chat_message msg = {"user", prompt};
    s = xdan_chat_apply(model, &msg, 1, true, NULL, 0, &text_len);
    if (s == XDAN_E_BUFFER_TOO_SMALL) {
      text = malloc(text_len + 1);
      s = xdan_chat_apply(model, &msg, 1, true, text, text_len + 1, &text_len);
    }
    if (s != XDAN_OK) {
      fprintf(stderr, "no chat template (%s), using the prompt as it is\n", xdan_last_error());
      free(text);
      text = NULL;
    }
  }
  if (!text) {
    text_len = strlen(prompt);
    text = malloc(text_len + 1);
    memcpy(text, prompt, text_len + 1);
  }
  uint32_t flags = XDAN_TOKENIZE_ADD_SPECIAL | XDAN_TOKENIZE_PARSE_SPECIAL;
  size_t n_prompt = 0;
  s = xdan_tokenize(model, text, text_len, flags, NULL, 0, &n_prompt);
  xdan_token *tokens = malloc((n_prompt + 1) * sizeof *tokens);
  if (s == XDAN_E_BUFFER_TOO_SMALL || s == XDAN_OK)
    s = xdan_tokenize(model, text, text_len, flags, tokens, n_prompt + 1, &n_prompt);
  free(text);
  if (s != XDAN_OK) return fail("tokenize", s);

  /* A context just big enough, and the sampler. */
  xdan_context_params cp;
  xdan_context_params_init(&cp);
  cp.n_ctx = (uint32_t)(n_prompt + (size_t)n_predict);
  xdan_context *ctx = NULL;
  if ((s = xdan_context_new(model, &cp, &ctx)) != XDAN_OK) return fail("context", s);
  xdan_sampler_params sp;
  xdan_sampler_params_init(&sp);
  sp.temperature = temperature;
  sp.seed = seed;
  xdan_sampler *sampler = NULL;
  if ((s = xdan_sampler_new(model, &sp, &sampler)) != XDAN_OK) return fail("sampler", s);
  xdan_sampler_accept(sampler, tokens, n_prompt);

  /* Prompt, then one token at a time, streamed. */
  t0 = now_s();
  if ((s = xdan_step(ctx, 0, tokens, n_prompt)) != XDAN_OK) return fail("prompt", s);
  double t_prompt = now_s() - t0;
  free(tokens);
  t0 = now_s();
  int n_gen = 0;
  for (; n_gen < n_predict; n_gen++) {
    xdan_token t;
    if ((s = xdan_sample(ctx, 0, sampler, &t)) != XDAN_OK) return fail("sample", s);
    if (xdan_token_is_eog(model, t)) break;
    char piece[256];
    size_t len = 0;
    if (xdan_token_piece(model, t, piece, sizeof piece, &len) == XDAN_OK) {
      fwrite(piece, 1, len, stdout);
      fflush(stdout);
    }
    if ((s = xdan_step(ctx, 0, &t, 1)) != XDAN_OK) return fail("step", s);
  }
  double t_gen = now_s() - t0;
  printf("\n");
  fprintf(stderr, "prompt: %zu tokens in %.3f s (%.1f tokens/s); generated: %d tokens in %.3f s (%.1f tokens/s)\n",
          n_prompt, t_prompt, (double)n_prompt / t_prompt, n_gen, t_gen,
          n_gen > 0 ? (double)n_gen / t_gen : 0.0);

  xdan_sampler_free(sampler);
  xdan_context_free(ctx);
  xdan_model_free(model);
  return 0;
}
