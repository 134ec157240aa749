// Chat templates, task instructions and piecewise tokenization of prompts.
#include "jobs/templates.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace mesa::jobs {
namespace {
// Debian's abseil has its own string_view type.
absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

PromptPiece Markup(std::string s) { return PromptPiece{std::move(s), true}; }
PromptPiece Content(std::string s) { return PromptPiece{std::move(s), false}; }

// llama2 and mistral: [INST] turns. What differs: how a system message is wrapped, how
// an assistant message ends, and what opens a turn after the first.
struct InstStyle {
  std::string system_open, system_close;
  std::string assistant_end;  // before the EOS marker
  bool bos_per_turn;          // "<s>" before every turn but the first
};

std::vector<PromptPiece> InstChat(const InstStyle& style, absl::Span<const ChatMessage> messages) {
  std::vector<PromptPiece> out;
  bool open = false, first = true;
  auto add_markup = [&](const std::string& s) {
    if (!s.empty()) out.push_back(Markup(s));
  };
  auto open_turn = [&] {
    if (open) return;
    if (!first && style.bos_per_turn) out.push_back(Markup("<s>"));
    out.insert(out.end(), {Markup("[INST]"), Markup(" ")});
    open = true;
    first = false;
  };
  auto close_turn = [&] {
    out.insert(out.end(), {Markup(" "), Markup("[/INST]")});
    open = false;
  };
  for (const ChatMessage& m : messages) {
    switch (m.role) {
      case ChatRole::kSystem:
        open_turn();
        add_markup(style.system_open);
        out.push_back(Content(m.content));
        add_markup(style.system_close);
        break;
      case ChatRole::kUser:
        open_turn();
        out.push_back(Content(m.content));
        close_turn();
        break;
      case ChatRole::kAssistant:
        if (open) close_turn();
        out.insert(out.end(), {Markup(" "), Content(m.content)});
        add_markup(style.assistant_end);
        out.push_back(Markup("</s>"));
        break;
    }
  }
  if (open) close_turn();
  return out;
}

std::vector<PromptPiece> BuildChatPrompt(ChatTemplate tmpl, absl::Span<const ChatMessage> messages) {
  std::vector<PromptPiece> out;
  switch (tmpl) {
    case ChatTemplate::kAuto:  // callers resolve first; treat as raw
    case ChatTemplate::kRaw:
      for (const ChatMessage& m : messages) {
        if (!out.empty()) out.push_back(Markup("\n\n"));
        out.push_back(Content(m.content));
      }
      return out;
    case ChatTemplate::kLlama2:
      return InstChat({.system_open = "<<SYS>>\n", .system_close = "\n<</SYS>>\n\n", .assistant_end = " ",
                       .bos_per_turn = true},
                      messages);
    case ChatTemplate::kMistral:
      return InstChat({.system_open = "", .system_close = "\n\n", .assistant_end = "", .bos_per_turn = false},
                      messages);
    case ChatTemplate::kLlama3:
      for (const ChatMessage& m : messages) {
        out.insert(out.end(), {Markup("<|start_header_id|>"), Markup(ChatRoleName(m.role)),
                               Markup("<|end_header_id|>"), Markup("\n\n"), Content(m.content),
                               Markup("<|eot_id|>")});
      }
      out.insert(out.end(), {Markup("<|start_header_id|>"), Markup("assistant"), Markup("<|end_header_id|>"),
                             Markup("\n\n")});
      return out;
    case ChatTemplate::kChatMl:
      for (const ChatMessage& m : messages) {
        out.insert(out.end(), {Markup("<|im_start|>"), Markup(absl::StrCat(ChatRoleName(m.role), "\n")),
                               Content(m.content), Markup("<|im_end|>"), Markup("\n")});
      }
      out.insert(out.end(), {Markup("<|im_start|>"), Markup("assistant\n")});
      return out;
  }
  return out;
}

}  // namespace

const char* ChatTemplateName(ChatTemplate t) {
  switch (t) {
    case ChatTemplate::kAuto: return "auto";
    case ChatTemplate::kRaw: return "raw";
    case ChatTemplate::kLlama2: return "llama2";
    case ChatTemplate::kLlama3: return "llama3";
    case ChatTemplate::kChatMl: return "chatml";
    case ChatTemplate::kMistral: return "mistral";
  }
  return "?";
}

absl::StatusOr<ChatTemplate> ParseChatTemplate(std::string_view name) {
  for (ChatTemplate t : {ChatTemplate::kAuto, ChatTemplate::kRaw, ChatTemplate::kLlama2, ChatTemplate::kLlama3,
                         ChatTemplate::kChatMl, ChatTemplate::kMistral}) {
    if (name == ChatTemplateName(t)) return t;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown chat template '", Av(name), "' (choose auto, llama2, llama3, chatml, mistral or raw)"));
}

ChatTemplate DetectChatTemplate(std::string_view jinja) {
  if (absl::StrContains(Av(jinja), "<|im_start|>")) return ChatTemplate::kChatMl;
  if (absl::StrContains(Av(jinja), "<|start_header_id|>")) return ChatTemplate::kLlama3;
  if (absl::StrContains(Av(jinja), "[INST]")) {
    return absl::StrContains(Av(jinja), "<<SYS>>") ? ChatTemplate::kLlama2 : ChatTemplate::kMistral;
  }
  return ChatTemplate::kRaw;
}

ChatTemplate ResolveChatTemplate(ChatTemplate requested, std::string_view jinja) {
  return requested == ChatTemplate::kAuto ? DetectChatTemplate(jinja) : requested;
}

TaskText MakeTaskText(TaskKind task, const JobInput& input) {
  switch (task) {
    case TaskKind::kSummarize:
      return {"Summarize the following document.", "Summarize the document above."};
    case TaskKind::kQa:
      return {absl::StrCat("Answer the question about the following document. Question: ", input.question),
              absl::StrCat("Question: ", input.question, "\nAnswer:")};
    case TaskKind::kPrompt:
      return {input.prompt, input.prompt};
    case TaskKind::kChat:
      return {};
  }
  return {};
}

std::vector<PromptPiece> BuildPrompt(ChatTemplate tmpl, TaskKind task, const JobInput& input) {
  if (task == TaskKind::kChat) return BuildChatPrompt(tmpl, input.messages);
  const TaskText t = MakeTaskText(task, input);
  auto m = Markup;
  auto c = Content;
  // The user turn: instruction, document, instruction again.
  std::vector<PromptPiece> user = {c(t.before), m("\n\n"), c(input.document), m("\n\n"), c(t.after)};
  std::vector<PromptPiece> out;
  auto append = [&](std::initializer_list<PromptPiece> ps) { out.insert(out.end(), ps.begin(), ps.end()); };
  switch (tmpl) {
    case ChatTemplate::kAuto:  // callers resolve first; treat as raw
    case ChatTemplate::kRaw:
      return user;
    case ChatTemplate::kLlama2:
      // <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]: the leading instruction
      // is the system message.
      append({m("[INST]"), m(" <<SYS>>\n"), c(t.before), m("\n<</SYS>>\n\n"), c(input.document), m("\n\n"),
              c(t.after), m(" "), m("[/INST]")});
      return out;
    case ChatTemplate::kLlama3:
      append({m("<|start_header_id|>"), m("user"), m("<|end_header_id|>"), m("\n\n")});
      out.insert(out.end(), user.begin(), user.end());
      append({m("<|eot_id|>"), m("<|start_header_id|>"), m("assistant"), m("<|end_header_id|>"), m("\n\n")});
      return out;
    case ChatTemplate::kChatMl:
      append({m("<|im_start|>"), m("user\n")});
      out.insert(out.end(), user.begin(), user.end());
      append({m("<|im_end|>"), m("\n"), m("<|im_start|>"), m("assistant\n")});
      return out;
    case ChatTemplate::kMistral:
      append({m("[INST]"), m(" ")});
      out.insert(out.end(), user.begin(), user.end());
      append({m(" "), m("[/INST]")});
      return out;
  }
  return user;
}

std::string PromptText(absl::Span<const PromptPiece> pieces) {
  std::string s;
  for (const PromptPiece& p : pieces) s += p.text;
  return s;
}

absl::StatusOr<std::vector<int32_t>> TokenizePrompt(const Tokenizer& tokenizer,
                                                    absl::Span<const PromptPiece> pieces) {
  std::vector<int32_t> out;
  {  // BOS as the tokenizer's default wants it (and nothing else: no EOS mid-prompt)
    auto bos = tokenizer.Encode("", EncodeOptions{});
    if (!bos.ok()) return bos.status();
    if (!bos->empty() && bos->front() == tokenizer.bos_id() && tokenizer.bos_id() >= 0) out.push_back(bos->front());
  }
  EncodeOptions plain;
  plain.add_bos = false;
  plain.parse_special = false;
  EncodeOptions special = plain;
  special.parse_special = true;
  std::string run;
  auto flush = [&]() -> absl::Status {
    if (run.empty()) return absl::OkStatus();
    auto ids = tokenizer.Encode(run, plain);
    if (!ids.ok()) return ids.status();
    out.insert(out.end(), ids->begin(), ids->end());
    run.clear();
    return absl::OkStatus();
  };
  for (const PromptPiece& p : pieces) {
    if (p.markup && !p.text.empty()) {
      auto as_special = tokenizer.Encode(p.text, special);
      if (!as_special.ok()) return as_special.status();
      auto as_plain = tokenizer.Encode(p.text, plain);
      if (!as_plain.ok()) return as_plain.status();
      if (*as_special != *as_plain) {  // the vocabulary has control tokens for it
        if (absl::Status s = flush(); !s.ok()) return s;
        out.insert(out.end(), as_special->begin(), as_special->end());
        continue;
      }
    }
    run += p.text;
  }
  if (absl::Status s = flush(); !s.ok()) return s;
  return out;
}

}  // namespace mesa::jobs
