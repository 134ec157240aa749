// `mesa tokenize --model MODEL (--text TEXT | --file F) [--no-bos] [--parse-special] [--json]`:
// token ids from the model's tokenizer alone (a vocab-only GGUF will do).
#include <iostream>

#include "absl/strings/str_cat.h"
#include "client/cli/cli_util.h"
#include "client/cli/commands.h"
#include "nlohmann/json.hpp"

namespace mesa::cli {
namespace {

struct TokenizeArgs {
  std::string model, text, file;
  bool no_bos = false, parse_special = false, json = false, show_pieces = false;
};

int Run(const TokenizeArgs& a) {
  std::string text = a.text;
  if (!a.file.empty()) {
    auto t = ReadTextFile(a.file);
    if (!t.ok()) return Fail(t.status());
    text = *std::move(t);
  }
  // The tokenizer alone: a vocab-only GGUF will do.
  auto model_or = LoadModel(a.model, LoadOptions{.tokenizer_only = true});
  if (!model_or.ok()) {
    return Fail(absl::Status(model_or.status().code(),
                             absl::StrCat("cannot load model '", a.model, "': ", model_or.status().message())));
  }
  const Tokenizer* tok = (*model_or)->tokenizer.get();
  EncodeOptions opts;
  if (a.no_bos) opts.add_bos = false;
  opts.parse_special = a.parse_special;
  auto ids = tok->Encode(text, opts);
  if (!ids.ok()) return Fail(ids.status());
  if (a.json) {
    std::cout << nlohmann::json({{"tokens", *ids}}).dump() << "\n";
    return 0;
  }
  if (a.show_pieces) {
    for (int32_t id : *ids) std::cout << id << "\t" << nlohmann::json(tok->TokenToPiece(id)).dump() << "\n";
    return 0;
  }
  for (size_t i = 0; i < ids->size(); ++i) std::cout << (i ? " " : "") << (*ids)[i];
  std::cout << "\n";
  return 0;
}

}  // namespace

void RegisterTokenize(CLI::App& app) {
  auto a = std::make_shared<TokenizeArgs>();
  CLI::App* cmd = app.add_subcommand("tokenize", "Print the token ids of a text with the model's own tokenizer");
  cmd->add_option("--model,-m", a->model, "GGUF file or Hugging Face model directory")->required();
  auto* text = cmd->add_option("--text,-t", a->text, "Text to tokenize");
  auto* file = cmd->add_option("--file,-f", a->file, "Read the text from a file");
  text->excludes(file);
  cmd->add_flag("--no-bos", a->no_bos, "Do not prepend the BOS token");
  cmd->add_flag("--parse-special", a->parse_special,
                "Turn marker strings such as <s> or <|endoftext|> into control tokens (off: documents cannot inject them)");
  cmd->add_flag("--json", a->json, "Print {\"tokens\": [...]}");
  cmd->add_flag("--pieces", a->show_pieces, "Print one token per line with its text");
  cmd->callback([a, text, file] {
    if (text->count() == 0 && file->count() == 0) {
      ExitCode() = Fail(absl::InvalidArgumentError("give --text or --file"));
      return;
    }
    ExitCode() = Run(*a);
  });
}

}  // namespace mesa::cli
