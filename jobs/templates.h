// Task prompts inside the model's chat template. The task's instruction (or question)
// goes both before the document, so that it lies in Mesa's anchor (the first chunk),
// and after it, so that it lies in the last chunk next to where the answer starts.
// Chat lines (OpenAI batch lines, TaskKind::kChat) bring their own messages, which go
// through the template as they are, followed by the opening of the assistant's turn.
//
// A prompt is built as pieces: template markup and content (instruction, document,
// question). Tokenization turns markup such as "<|im_start|>" into control tokens, but
// encodes all content with parse_special=false, so a document cannot inject control
// tokens; see TokenizePrompt.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/tokenizer.h"
#include "jobs/job_format.h"

namespace mesa::jobs {

enum class ChatTemplate { kAuto, kRaw, kLlama2, kLlama3, kChatMl, kMistral };
const char* ChatTemplateName(ChatTemplate t);  // "auto", "raw", "llama2", "llama3", "chatml", "mistral"
absl::StatusOr<ChatTemplate> ParseChatTemplate(std::string_view name);

// The template named by a GGUF's tokenizer.chat_template (Jinja source), recognized by
// its markers; kRaw when empty or unrecognized. Never kAuto.
ChatTemplate DetectChatTemplate(std::string_view jinja);
// `requested` unless it is kAuto, else DetectChatTemplate(jinja).
ChatTemplate ResolveChatTemplate(ChatTemplate requested, std::string_view jinja);

// The task's instruction before and after the document (both empty for kChat: chat
// lines carry no instruction).
struct TaskText {
  std::string before;  // e.g. "Summarize the following document."
  std::string after;   // e.g. "Summarize the document above."
};
TaskText MakeTaskText(TaskKind task, const JobInput& input);

struct PromptPiece {
  std::string text;
  bool markup = false;  // template markup (may hold control-token markers) vs content
  bool operator==(const PromptPiece&) const = default;
};

// The whole prompt for one input line. `tmpl` must not be kAuto. BOS is not part of
// the pieces: TokenizePrompt adds it when the tokenizer wants one.
// For kChat, input.messages in order (any sequence of roles), then the assistant's turn:
//   chatml:  <|im_start|>{role}\n{content}<|im_end|>\n ... <|im_start|>assistant\n
//   llama3:  <|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|> ...
//            <|start_header_id|>assistant<|end_header_id|>\n\n
//   llama2:  [INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] {user} [/INST]
//   mistral: [INST] {system}\n\n{user} [/INST] {assistant}</s>[INST] {user} [/INST]
//            (llama2 and mistral: a turn is closed with " [/INST]" before an assistant
//            message or the end even without a user message)
//   raw:     the contents joined by "\n\n" (no roles: a base model continues the text)
std::vector<PromptPiece> BuildPrompt(ChatTemplate tmpl, TaskKind task, const JobInput& input);
// The pieces' text joined (for display and tests).
std::string PromptText(absl::Span<const PromptPiece> pieces);

// Token ids of the prompt: BOS when the tokenizer adds one by default, then the pieces.
// A markup piece that the vocabulary knows as a control token (it encodes differently
// with parse_special) is encoded with parse_special=true, on its own. Everything else,
// markup text and content alike, is joined into runs between control tokens and each
// run is encoded with parse_special=false. So for a vocabulary without the template's
// control tokens the result is exactly the tokenization of PromptText(), and with them
// it is that of llama.cpp's (SentencePiece space prefix after each control token)
// except that content can never become a control token.
absl::StatusOr<std::vector<int32_t>> TokenizePrompt(const Tokenizer& tokenizer,
                                                    absl::Span<const PromptPiece> pieces);

}  // namespace mesa::jobs
