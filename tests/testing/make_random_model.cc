// mesa_make_random_model: writes a random-weight GGUF (llama, qwen2 or mpt) for tests
// and benchmarks, e.g. a ~100M-parameter llama:
//   mesa_make_random_model --arch llama --n-embd 768 --n-layer 12 --n-head 12
//       --n-head-kv 4 --n-ff 3072 --ctx 2048 --type f16 --out /tmp/llama100m.gguf
// or a Llama-3-8B-shaped one with 4 of its 32 layers (the GPU benchmarks):
//   mesa_make_random_model --n-embd 4096 --n-layer 4 --n-head 32 --n-head-kv 8
//       --n-ff 14336 --n-vocab 128256 --ctx 8192 --rope-base 500000 --type q4_k
//       --tokenizer-from synthetic --out /tmp/llama3-8b-4l-q4_k.gguf
#include <cstdio>
#include <string>

#include "CLI/CLI.hpp"
#include "tests/testing/random_model.h"

int main(int argc, char** argv) {
  mesa::testing::RandomModelSpec spec;
  std::string type = "f32";
  std::string out;
  CLI::App app{"Write a random-weight GGUF model"};
  app.add_option("--arch", spec.arch, "llama, qwen2 or mpt")->check(CLI::IsMember({"llama", "qwen2", "mpt"}));
  app.add_option("--n-embd", spec.n_embd, "embedding length");
  app.add_option("--n-layer", spec.n_layer, "number of blocks");
  app.add_option("--n-head", spec.n_head, "attention heads");
  app.add_option("--n-head-kv", spec.n_head_kv, "kv heads (default: n-head)");
  app.add_option("--head-dim", spec.head_dim, "head dim (default: n-embd / n-head)");
  app.add_option("--n-ff", spec.n_ff, "feed-forward length");
  app.add_option("--n-vocab", spec.n_vocab, "vocab size (default: the tokenizer's)");
  app.add_option("--ctx", spec.context_length, "trained context length");
  app.add_option("--seed", spec.seed, "random seed");
  app.add_option("--rope-base", spec.rope_freq_base, "rope frequency base");
  app.add_option("--max-alibi-bias", spec.max_alibi_bias, "mpt ALiBi max bias");
  app.add_option("--clamp-kqv", spec.clamp_kqv, "mpt clamp_kqv (0: none)");
  app.add_flag("--tied", spec.tied_output, "omit output.weight (tied embeddings)");
  app.add_option("--type", type, "f32, f16, bf16, q8_0 or q4_k (the last three: rows drawn in parallel)")
      ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0", "q4_k"}));
  app.add_option("--tokenizer-from", spec.tokenizer_source,
                 "GGUF to copy tokenizer metadata from (default: $MESA_SHARED_DIR/models/stories260K-f32.gguf)");
  app.add_option("--out", out, "output path")->required();
  CLI11_PARSE(app, argc, argv);
  absl::StatusOr<mesa::DType> dtype = mesa::testing::RandomModelType(type);
  if (!dtype.ok()) {
    std::fprintf(stderr, "mesa_make_random_model: %s\n", std::string(dtype.status().message()).c_str());
    return 2;
  }
  spec.type = *dtype;
  absl::Status s = mesa::testing::WriteRandomGguf(spec, out);
  if (!s.ok()) {
    std::fprintf(stderr, "mesa_make_random_model: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
