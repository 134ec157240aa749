// Pieces shared by the evaluations (`mesa eval ppl|passkey`): length lists with a k
// suffix, method lists, and the plain-text grid (rows: lengths, columns: methods)
// that both evaluations print. Pure functions: thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/long_context.h"

namespace mesa {

// "512,1k,2K, 4096" -> {512, 1024, 2048, 4096}: comma- or space-separated positive
// integers, each optionally suffixed by k/K (x1024). Order is kept; duplicates are an
// error (they would make two table rows with the same label).
absl::StatusOr<std::vector<int64_t>> ParseLengthList(std::string_view text);

// "mesa,full" -> methods, in the given order; unknown or repeated names are errors.
absl::StatusOr<std::vector<AttentionMethod>> ParseAttentionList(std::string_view text);

// A grid of pre-formatted cells; cell(r, c) is cells[r * columns.size() + c].
// Columns are right-aligned; an empty cell prints as "-".
std::string FormatGrid(const std::string& corner, const std::vector<std::string>& rows,
                       const std::vector<std::string>& columns,
                       const std::vector<std::string>& cells);

}  // namespace mesa
