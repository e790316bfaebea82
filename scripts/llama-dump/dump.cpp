// llama.cpp's side of an op-by-op comparison (see build.sh): loads a GGUF with the settings of
// the fixtures (CPU, 2 threads, F32 KV, no flash attention, no weight repacking, n_ctx 512),
// decodes the given token batches in turn (the first one usually the whole prompt, then single
// tokens), every position an output, and writes per pass DIR/pass-N/NAME.bin (raw f32, the
// tensor's rows as the graph holds them) for the graph tensors xdan's XDAN_DUMP_DIR also
// writes, plus the attention internals and logits.bin ([n_tokens][n_vocab]).
//
//   dump MODEL DIR TOKEN... [-- TOKEN...]...
#include "ggml-backend.h"
#include "ggml.h"
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <sys/stat.h>
#include <vector>

static std::string g_pass_dir;

static bool wanted(const std::string& name) {
    static const char* kinds[] = {"attn_norm", "Qcur", "Kcur", "Vcur", "kq", "kq_soft_max", "kqv", "kqv_out",
                                  "attn_out", "ffn_inp", "ffn_norm", "ffn_out", "l_out"};
    const size_t dash = name.rfind('-');
    if (dash == std::string::npos || name.find(' ') != std::string::npos) return false;
    const std::string kind = name.substr(0, dash);
    for (const char* k : kinds)
        if (kind == k) return true;
    return false;
}

// Called twice per node: to ask whether we want it, then with its data computed. A name that
// comes back (Qcur: the matmul, its reshape, then RoPE) is overwritten, so the last op wins.
static bool on_tensor(struct ggml_tensor* t, bool ask, void*) {
    if (!wanted(t->name) || t->type != GGML_TYPE_F32) return ask ? false : true;
    if (ask) return true;
    std::vector<char> buf(ggml_nbytes(t));
    ggml_backend_tensor_get(t, buf.data(), 0, buf.size());
    const std::string path = g_pass_dir + "/" + t->name + ".bin";
    FILE* f = fopen(path.c_str(), "wb");
    if (!f || fwrite(buf.data(), 1, buf.size(), f) != buf.size()) {
        fprintf(stderr, "cannot write %s\n", path.c_str());
        exit(1);
    }
    fclose(f);
    return true;
}

int main(int argc, char** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL DIR TOKEN... [-- TOKEN...]...\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[2];
    std::vector<std::vector<llama_token>> passes(1);
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--"))
            passes.emplace_back();
        else
            passes.back().push_back(atoi(argv[i]));
    }
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.use_extra_bufts = false;
    mp.n_gpu_layers = 0;
    llama_model* model = llama_model_load_from_file(argv[1], mp);
    if (!model) return 1;
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = cp.n_batch = cp.n_ubatch = 512;
    cp.n_threads = cp.n_threads_batch = 2;
    cp.type_k = cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.cb_eval = on_tensor;
    llama_context* ctx = llama_init_from_model(model, cp);
    if (!ctx) return 1;
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    int pos = 0;
    for (size_t p = 0; p < passes.size(); p++) {
        const std::vector<llama_token>& toks = passes[p];
        g_pass_dir = dir + "/pass-" + std::to_string(p);
        mkdir(dir.c_str(), 0755);
        mkdir(g_pass_dir.c_str(), 0755);
        llama_batch b = llama_batch_init((int)toks.size(), 0, 1);
        for (size_t i = 0; i < toks.size(); i++) {
            b.token[i] = toks[i];
            b.pos[i] = pos + (int)i;
            b.n_seq_id[i] = 1;
            b.seq_id[i][0] = 0;
            b.logits[i] = 1;
        }
        b.n_tokens = (int)toks.size();
        if (llama_decode(ctx, b)) {
            fprintf(stderr, "llama_decode failed on pass %zu\n", p);
            return 1;
        }
        FILE* f = fopen((g_pass_dir + "/logits.bin").c_str(), "wb");
        fwrite(llama_get_logits(ctx), sizeof(float), (size_t)n_vocab * toks.size(), f);
        fclose(f);
        pos += (int)toks.size();
        llama_batch_free(b);
    }
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
