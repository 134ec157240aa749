// Length and method lists and the text grid of the evaluations.
#include "jobs/eval_common.h"

#include <algorithm>
#include <charconv>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace mesa {
namespace {

std::vector<std::string_view> SplitList(std::string_view text) {
  std::vector<std::string_view> out;
  // Debian's abseil has its own string_view type.
  for (absl::string_view part : absl::StrSplit(absl::string_view(text.data(), text.size()),
                                               absl::ByAnyChar(", \t\n"), absl::SkipEmpty())) {
    out.emplace_back(part.data(), part.size());
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<int64_t>> ParseLengthList(std::string_view text) {
  std::vector<int64_t> out;
  for (std::string_view item : SplitList(text)) {
    std::string_view digits = item;
    int64_t scale = 1;
    if (!digits.empty() && (digits.back() == 'k' || digits.back() == 'K')) {
      scale = 1024;
      digits.remove_suffix(1);
    }
    int64_t v = 0;
    auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
    if (digits.empty() || ec != std::errc() || ptr != digits.data() + digits.size() || v <= 0 ||
        v > (int64_t{1} << 40) / scale) {
      return absl::InvalidArgumentError(absl::StrCat(
          "not a length: '", std::string(item), "' (lengths are positive token counts such as 512 or 4k)"));
    }
    v *= scale;
    if (std::find(out.begin(), out.end(), v) != out.end()) {
      return absl::InvalidArgumentError(absl::StrCat("length ", v, " is given twice"));
    }
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError("no lengths given");
  return out;
}

absl::StatusOr<std::vector<AttentionMethod>> ParseAttentionList(std::string_view text) {
  std::vector<AttentionMethod> out;
  for (std::string_view item : SplitList(text)) {
    absl::StatusOr<AttentionMethod> m = ParseAttentionMethod(std::string(item));
    if (!m.ok()) return m.status();
    if (std::find(out.begin(), out.end(), *m) != out.end()) {
      return absl::InvalidArgumentError(absl::StrCat("attention method '", std::string(item), "' is given twice"));
    }
    out.push_back(*m);
  }
  if (out.empty()) return absl::InvalidArgumentError("no attention method given");
  return out;
}

std::string FormatGrid(const std::string& corner, const std::vector<std::string>& rows,
                       const std::vector<std::string>& columns,
                       const std::vector<std::string>& cells) {
  const size_t nc = columns.size();
  std::vector<size_t> width(nc + 1, 0);
  width[0] = corner.size();
  for (const std::string& r : rows) width[0] = std::max(width[0], r.size());
  for (size_t c = 0; c < nc; ++c) {
    width[c + 1] = std::max<size_t>(columns[c].size(), 1);
    for (size_t r = 0; r < rows.size(); ++r) {
      const size_t i = r * nc + c;
      if (i < cells.size()) width[c + 1] = std::max(width[c + 1], cells[i].size());
    }
  }
  auto pad = [](const std::string& s, size_t w, bool left) {
    std::string fill(w > s.size() ? w - s.size() : 0, ' ');
    return left ? s + fill : fill + s;
  };
  std::string out = pad(corner, width[0], true);
  for (size_t c = 0; c < nc; ++c) absl::StrAppend(&out, "  ", pad(columns[c], width[c + 1], false));
  out += "\n";
  for (size_t r = 0; r < rows.size(); ++r) {
    out += pad(rows[r], width[0], true);
    for (size_t c = 0; c < nc; ++c) {
      const size_t i = r * nc + c;
      std::string cell = i < cells.size() && !cells[i].empty() ? cells[i] : "-";
      absl::StrAppend(&out, "  ", pad(cell, width[c + 1], false));
    }
    out += "\n";
  }
  return out;
}

}  // namespace mesa
