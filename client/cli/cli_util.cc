#include "client/cli/cli_util.h"

#include <sys/resource.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace mesa::cli {

int Fail(const absl::Status& status) {
  std::cerr << "mesa: error: " << status.message() << "\n";
  return 1;
}

absl::StatusOr<std::vector<int32_t>> ParseTokenList(const std::string& text) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < text.size()) {
    char c = text[i];
    if (c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < text.size() && text[j] != ',' && !std::isspace(static_cast<unsigned char>(text[j]))) ++j;
    int64_t v = 0;
    auto [ptr, ec] = std::from_chars(text.data() + i, text.data() + j, v);
    if (ec != std::errc() || ptr != text.data() + j || v < 0 || v > INT32_MAX) {
      return absl::InvalidArgumentError(
          absl::StrCat("not a token id: '", text.substr(i, j - i), "' (token ids are non-negative integers)"));
    }
    ids.push_back(static_cast<int32_t>(v));
    i = j;
  }
  return ids;
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read '", path, "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<std::vector<int32_t>> ReadTokenFile(const std::string& path) {
  auto text = ReadTextFile(path);
  if (!text.ok()) return text.status();
  auto ids = ParseTokenList(*text);
  if (!ids.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", ids.status().message()));
  return ids;
}

LoadOptions::WeightMemory& WeightMemoryChoice() {
  static LoadOptions::WeightMemory choice = LoadOptions::WeightMemory::kAuto;
  return choice;
}

absl::StatusOr<std::unique_ptr<Model>> LoadModelForCli(const std::string& path, bool compute,
                                                       const std::string& device) {
  LoadOptions options;
  options.weight_memory = compute ? WeightMemoryChoice() : LoadOptions::WeightMemory::kMapped;
  // A GPU reads its own copy of the weights: a host copy (and CPU packing) would only
  // double the memory, unless --weights asked for it.
  if (device != "cpu" && options.weight_memory == LoadOptions::WeightMemory::kAuto) {
    options.weight_memory = LoadOptions::WeightMemory::kMapped;
  }
  auto model = LoadModel(path, options);
  if (!model.ok()) {
    return absl::Status(model.status().code(),
                        absl::StrCat("cannot load model '", path, "': ", model.status().message()));
  }
  return model;
}

int64_t PeakRssBytes() {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;  // Linux reports KiB
}

}  // namespace mesa::cli
