/* Game-style use of one model by several characters (NPCs) at once.
 *
 * One context holds one sequence per character. The shared system prompt (the world) is stepped
 * once into sequence 0; each character's sequence is then forked from it with xdan_seq_fork,
 * which shares the KV blocks instead of copying them (the kv stats printed below show those
 * shared tokens). Every character has its own sampler and seed, and all characters are stepped
 * together, one token each, with xdan_step_batch.
 *
 * The KV cache is paged in blocks: when a character appends to the world prompt's last, partly
 * filled block, that one block is copied for it (copy-on-write), so the shared count drops to the
 * prompt's full blocks while every full block stays shared.
 *
 * Build: cc -O2 -Iinclude examples/npc/npc.c -Ltarget/release -Wl,-rpath,$PWD/target/release -lxdan -o npc
 * Run:   ./npc [MODEL.gguf] [TOKENS_PER_CHARACTER]
 * (with the random tiny test model the lines are gibberish; the mechanics are the point)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xdan.h>

#define N_CHARS 3
#define MAX_OUT 4096

static const char *WORLD =
    "The village of Oakvale sits at the edge of a dark forest. Travellers come to the tavern at "
    "night, and the villagers answer them in one or two short sentences, in character.\n";

static const struct {
  const char *name;
  const char *line; /* what starts the character's reply */
  float temperature;
  uint64_t seed;
} CHARS[N_CHARS] = {
    {"Brom", "Brom the blacksmith says:", 0.7f, 1001},
    {"Ilsa", "Ilsa the innkeeper says:", 0.9f, 2002},
    {"Ward", "The old guard Ward says:", 0.5f, 3003},
};

static xdan_model *model;
static xdan_context *ctx;
static xdan_sampler *samplers[N_CHARS];

static void die(const char *what, xdan_status s) {
  fprintf(stderr, "%s failed: %s: %s\n", what, xdan_status_name(s), xdan_last_error());
  for (int i = 0; i < N_CHARS; i++) xdan_sampler_free(samplers[i]);
  xdan_context_free(ctx);
  xdan_model_free(model);
  exit(1);
}

#define TRY(call)                            \
  do {                                       \
    xdan_status s_ = (call);                 \
    if (s_ != XDAN_OK) die(#call, s_);       \
  } while (0)

static size_t tokenize(const char *text, uint32_t flags, xdan_token **out) {
  size_t n = 0, cap = strlen(text) + 8;
  *out = malloc(cap * sizeof **out);
  xdan_status s = xdan_tokenize(model, text, strlen(text), flags, *out, cap, &n);
  if (s == XDAN_E_BUFFER_TOO_SMALL) {
    cap = n;
    *out = realloc(*out, cap * sizeof **out);
    s = xdan_tokenize(model, text, strlen(text), flags, *out, cap, &n);
  }
  if (s != XDAN_OK) die("xdan_tokenize", s);
  return n;
}

static void print_kv(const char *when) {
  xdan_kv_stats st;
  memset(&st, 0, sizeof st);
  st.size = sizeof st;
  TRY(xdan_kv_stats_get(ctx, &st));
  printf("[kv %s] used %llu of %llu token slots, %llu shared between sequences, %llu bytes\n", when,
         (unsigned long long)st.used_tokens, (unsigned long long)st.capacity_tokens,
         (unsigned long long)st.shared_tokens, (unsigned long long)st.bytes);
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "tests/data/tiny-mixtral/Q8_0/tiny-mixtral-Q8_0.gguf";
  int n_gen = argc > 2 ? atoi(argv[2]) : 24;

  TRY(xdan_model_load(path, NULL, &model));

  xdan_context_params cp;
  xdan_context_params_init(&cp);
  cp.n_ctx = 512;
  cp.n_seq_max = N_CHARS + 1; /* sequence 0: the world, 1..N: the characters */
  TRY(xdan_context_new(model, &cp, &ctx));

  /* The world, once. */
  xdan_token *world;
  size_t n_world = tokenize(WORLD, XDAN_TOKENIZE_ADD_SPECIAL, &world);
  TRY(xdan_step(ctx, 0, world, n_world));
  printf("world prompt: %zu tokens in sequence 0\n", n_world);
  print_kv("after the world prompt");

  /* Each character starts from the world without copying its KV... */
  for (int i = 0; i < N_CHARS; i++) TRY(xdan_seq_fork(ctx, 0, (xdan_seq)(i + 1)));
  print_kv("after forking 3 characters");

  /* ...then gets its own opening words, all characters in one forward pass. */
  xdan_token *lines[N_CHARS];
  xdan_seq_tokens items[N_CHARS];
  for (int i = 0; i < N_CHARS; i++) {
    size_t n = tokenize(CHARS[i].line, 0, &lines[i]);
    items[i].seq = (xdan_seq)(i + 1);
    items[i].tokens = lines[i];
    items[i].n = n;
  }
  TRY(xdan_step_batch(ctx, items, N_CHARS));
  print_kv("after the characters' opening words");

  for (int i = 0; i < N_CHARS; i++) {
    xdan_sampler_params sp;
    xdan_sampler_params_init(&sp);
    sp.temperature = CHARS[i].temperature;
    sp.top_k = 40;
    sp.top_p = 0.95f;
    sp.repeat_penalty = 1.1f;
    sp.seed = CHARS[i].seed;
    TRY(xdan_sampler_new(model, &sp, &samplers[i]));
  }

  /* All characters speak at once: one token each per batched step. */
  char text[N_CHARS][MAX_OUT];
  size_t text_len[N_CHARS] = {0};
  int done[N_CHARS] = {0};
  xdan_token next[N_CHARS];
  for (int step = 0; step < n_gen; step++) {
    size_t n_items = 0;
    for (int i = 0; i < N_CHARS; i++) {
      if (done[i]) continue;
      xdan_seq seq = (xdan_seq)(i + 1);
      TRY(xdan_sample(ctx, seq, samplers[i], &next[i]));
      if (xdan_token_is_eog(model, next[i])) {
        done[i] = 1;
        continue;
      }
      size_t len = 0;
      if (xdan_token_piece(model, next[i], text[i] + text_len[i], MAX_OUT - 1 - text_len[i], &len) == XDAN_OK)
        text_len[i] += len;
      items[n_items].seq = seq;
      items[n_items].tokens = &next[i];
      items[n_items].n = 1;
      n_items++;
    }
    if (n_items == 0) break;
    TRY(xdan_step_batch(ctx, items, n_items));
  }

  for (int i = 0; i < N_CHARS; i++) {
    text[i][text_len[i]] = '\0';
    printf("\n%s (seed %llu, %u tokens in its sequence):\n  %s%s\n", CHARS[i].line,
           (unsigned long long)CHARS[i].seed, xdan_seq_len(ctx, (xdan_seq)(i + 1)), text[i],
           done[i] ? " <end>" : "");
  }
  printf("\n");
  print_kv("at the end");

  for (int i = 0; i < N_CHARS; i++) {
    xdan_sampler_free(samplers[i]);
    free(lines[i]);
  }
  free(world);
  xdan_context_free(ctx);
  xdan_model_free(model);
  return 0;
}
