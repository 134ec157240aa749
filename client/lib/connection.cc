// Batching of CreateJob's input lines (see connection.h).
#include "client/lib/connection.h"

namespace mesa::client {

absl::StatusOr<std::vector<WorkerInfo>> Connection::ListWorkers(absl::Duration) {
  return absl::UnimplementedError("this connection cannot list workers");
}

std::vector<std::pair<size_t, size_t>> SplitIntoBatches(absl::Span<const std::string> lines, size_t max_bytes) {
  // Each repeated-string element costs its bytes plus a tag and a length varint.
  constexpr size_t kPerLineOverhead = 6;
  std::vector<std::pair<size_t, size_t>> batches;
  size_t begin = 0, bytes = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    const size_t cost = lines[i].size() + kPerLineOverhead;
    if (i > begin && bytes + cost > max_bytes) {
      batches.emplace_back(begin, i);
      begin = i;
      bytes = 0;
    }
    bytes += cost;
  }
  if (begin < lines.size()) batches.emplace_back(begin, lines.size());
  return batches;
}

}  // namespace mesa::client
