// A chat REPL on the C++ binding (bindings/cpp/xdan.hpp).
//
// Each turn renders the whole conversation with the model's chat template, keeps the KV of the
// part already in the cache (the common token prefix) and steps only the new tokens.
//
// Build: c++ -std=c++17 -O2 -Iinclude -Ibindings/cpp examples/cpp/chat.cpp
//          -Ltarget/release -Wl,-rpath,$PWD/target/release -lxdan -o chat   (one line)
// Run:   ./chat MODEL.gguf [-n MAX_TOKENS] [-t TEMPERATURE] [-s SEED] [--system TEXT]
// Type a message and Enter; an empty line or end of input quits.
#include <xdan.hpp>

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

namespace {

// Models without a chat template get a plain transcript.
std::string render(const xdan::Model &model, const std::vector<xdan::ChatMessage> &msgs, bool *templated) {
  try {
    std::string out = model.chat_apply(msgs, true);
    *templated = true;
    return out;
  } catch (const xdan::Error &) {
    *templated = false;
    std::string out;
    for (const auto &m : msgs) out += m.role + ": " + m.content + "\n";
    return out + "assistant:";
  }
}

}  // namespace

int main(int argc, char **argv) {
  if (argc < 2) {
    std::cerr << "usage: " << argv[0] << " MODEL.gguf [-n MAX_TOKENS] [-t TEMP] [-s SEED] [--system TEXT]\n";
    return 2;
  }
  int max_tokens = 256;
  xdan::SamplerParams sp;
  sp.temperature = 0.7f;
  sp.top_p = 0.95f;
  sp.seed = 1;
  std::vector<xdan::ChatMessage> msgs;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string opt = argv[i];
    if (opt == "-n") max_tokens = std::atoi(argv[i + 1]);
    else if (opt == "-t") sp.temperature = static_cast<float>(std::atof(argv[i + 1]));
    else if (opt == "-s") sp.seed = std::strtoull(argv[i + 1], nullptr, 10);
    else if (opt == "--system") msgs.push_back({"system", argv[i + 1]});
    else {
      std::cerr << "unknown option " << opt << "\n";
      return 2;
    }
  }

  try {
    xdan::Model model = xdan::Model::load(argv[1]);
    xdan::ContextParams cp;
    cp.n_ctx = 2048;
    xdan::Context ctx(model, cp);
    xdan::Sampler sampler(model, sp);
    std::vector<xdan::Token> cached;  // what sequence 0 holds

    std::string line;
    while (std::cout << "> " << std::flush, std::getline(std::cin, line) && !line.empty()) {
      msgs.push_back({"user", line});
      bool templated = false;
      std::vector<xdan::Token> toks = model.tokenize(render(model, msgs, &templated),
                                                     XDAN_TOKENIZE_ADD_SPECIAL | XDAN_TOKENIZE_PARSE_SPECIAL);
      // Keep the common prefix, step the rest (at least one token, for fresh logits).
      size_t keep = 0;
      while (keep < cached.size() && keep < toks.size() && cached[keep] == toks[keep]) ++keep;
      if (keep == toks.size()) --keep;
      ctx.seq_truncate(0, static_cast<uint32_t>(keep));
      ctx.step(0, toks.data() + keep, toks.size() - keep);
      cached = toks;

      std::string reply;
      for (int i = 0; i < max_tokens; ++i) {
        xdan::Token t = sampler.sample(ctx, 0);
        if (model.is_eog(t)) break;
        std::string piece = model.token_piece(t);
        if (!templated && piece.find('\n') != std::string::npos) break;  // transcript: one line per turn
        std::cout << piece << std::flush;
        reply += piece;
        ctx.step(0, t);
        cached.push_back(t);
      }
      std::cout << "\n";
      msgs.push_back({"assistant", reply});
    }
  } catch (const xdan::Error &e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
