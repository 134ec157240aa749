// `mesa info MODEL` and `mesa info --devices`.
#include <iostream>
#include <thread>

#include "absl/strings/str_join.h"
#include "client/cli/cli_util.h"
#include "client/cli/commands.h"
#include "kernels/cuda/device_query.h"
#include "kernels/matmul.h"
#include "nlohmann/json.hpp"

namespace mesa::cli {
namespace {

struct InfoArgs {
  std::string model;
  bool devices = false;
  bool json = false;
};

int RunDevices(const InfoArgs& a) {
  CudaDeviceReport r = QueryCudaDevices();
  if (a.json) {
    nlohmann::json j;
    j["compiled_with_cuda"] = r.compiled_with_cuda;
    j["cuda_runtime_version"] = r.runtime_version;
    j["nccl_version"] = r.nccl_version;
    j["backend_abi"] = r.backend_abi;
    j["expected_backend_abi"] = r.expected_backend_abi;
    j["unavailable_reason"] = r.unavailable_reason;
    j["cpu_isa"] = cpu::ActiveIsaName();
    j["devices"] = nlohmann::json::array();
    for (const auto& d : r.devices) {
      j["devices"].push_back({{"index", d.index}, {"name", d.name},
                              {"compute_capability", std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor)},
                              {"memory_bytes", d.total_memory_bytes}, {"multiprocessors", d.multiprocessors}});
    }
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::cout << "CUDA support compiled in: " << (r.compiled_with_cuda ? "yes" : "no") << "\n";
  if (r.compiled_with_cuda) {
    std::cout << "CUDA runtime: " << r.runtime_version / 1000 << "." << (r.runtime_version % 1000) / 10
              << ", NCCL: " << (r.nccl_version ? std::to_string(r.nccl_version) : "not built in") << "\n";
    std::cout << "CUDA backend op table: "
              << (r.backend_abi == 0 ? std::string("none (the plugin could not be loaded or is too old)")
                                     : "ABI " + std::to_string(r.backend_abi) +
                                           (r.backend_abi == r.expected_backend_abi
                                                ? " (matches this build)"
                                                : " (this build drives ABI " + std::to_string(r.expected_backend_abi) +
                                                      ": use the plugin built with it)"))
              << "\n";
  }
  if (!r.unavailable_reason.empty()) std::cout << r.unavailable_reason << "\n";
  for (const auto& d : r.devices) {
    std::cout << "GPU " << d.index << ": " << d.name << " (sm_" << d.cc_major << d.cc_minor << ", "
              << d.total_memory_bytes / (1 << 20) << " MiB, " << d.multiprocessors << " SMs)\n";
  }
  std::cout << "CPU threads: " << std::thread::hardware_concurrency() << "\n"
            << "CPU kernels: " << cpu::ActiveIsaName() << " (MESA_CPU_ISA=avx512|avx2|scalar forces one)\n";
  return 0;
}

int Run(const InfoArgs& a) {
  if (a.devices) return RunDevices(a);
  if (a.model.empty()) return Fail(absl::InvalidArgumentError("give a MODEL path or --devices"));
  auto model_or = LoadModelForCli(a.model, /*compute=*/false);
  if (!model_or.ok()) return Fail(model_or.status());
  const Model& m = **model_or;
  const ModelConfig& c = m.config;
  const std::string pos = c.position == PositionType::kAlibi ? "alibi"
                          : c.rope_style == RopeStyle::kNeox ? "rope (neox)" : "rope (normal)";
  const std::string tok = m.tokenizer ? m.tokenizer->kind() : "none";
  if (a.json) {
    nlohmann::json j = {
        {"path", m.source_path}, {"format", m.format}, {"architecture", c.arch_name},
        {"name", c.name}, {"parameters", c.parameter_count}, {"context_length", c.context_length},
        {"vocab_size", c.n_vocab}, {"embedding_length", c.n_embd}, {"layers", c.n_layer},
        {"heads", c.n_head}, {"kv_heads", c.n_head_kv}, {"head_dim", c.head_dim},
        {"feed_forward_length", c.n_ff}, {"positions", pos}, {"rope_freq_base", c.rope_freq_base},
        {"rope_freq_scale", c.rope_freq_scale}, {"tensor_types", m.tensor_types}, {"tokenizer", tok},
        {"has_chat_template", !m.chat_template.empty()}, {"cpu_isa", cpu::ActiveIsaName()}};
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::cout << "model:          " << m.source_path << " (" << m.format << ")\n"
            << "architecture:   " << c.arch_name << (c.name.empty() ? "" : "  [" + c.name + "]") << "\n"
            << "parameters:     " << c.parameter_count << " (" << c.parameter_count / 1e6 << " M)\n"
            << "context length: " << c.context_length << "\n"
            << "vocab:          " << c.n_vocab << "\n"
            << "layers:         " << c.n_layer << ", embedding " << c.n_embd << ", ffn " << c.n_ff << "\n"
            << "heads:          " << c.n_head << " (kv " << c.n_head_kv << "), head dim " << c.head_dim << "\n"
            << "positions:      " << pos;
  if (c.position == PositionType::kRope) {
    std::cout << ", base " << c.rope_freq_base << ", scale " << c.rope_freq_scale;
  }
  std::cout << "\n"
            << "tensor types:   " << absl::StrJoin(m.tensor_types, ", ") << "\n"
            << "tokenizer:      " << tok << "\n"
            << "CPU kernels:    " << cpu::ActiveIsaName() << "\n";
  return 0;
}

}  // namespace

void RegisterInfo(CLI::App& app) {
  auto args = std::make_shared<InfoArgs>();
  CLI::App* cmd = app.add_subcommand("info", "Describe a model file (architecture, sizes, tensor types, tokenizer) or the GPUs");
  cmd->add_option("model", args->model, "GGUF file or Hugging Face model directory");
  cmd->add_flag("--devices", args->devices, "List CUDA devices instead (works without a GPU: says why none is usable)");
  cmd->add_flag("--json", args->json, "Print JSON");
  cmd->callback([args] { ExitCode() = Run(*args); });
}

}  // namespace mesa::cli
