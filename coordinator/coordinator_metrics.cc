// CoordinatorMetrics: the coordinator's counters and histograms on its Metrics registry.
#include "coordinator/coordinator_metrics.h"

namespace mesa::coord {
namespace {

prometheus::Family<prometheus::Counter>& Counters(ops::Metrics& m, const char* name, const char* help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(m.registry());
}
prometheus::Family<prometheus::Histogram>& Histograms(ops::Metrics& m, const char* name, const char* help) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(m.registry());
}

constexpr const char* kTasks = "Tasks dispatched to workers, by kind and outcome.";
constexpr const char* kTaskSeconds = "Seconds from dispatch to result of the successful tasks, by kind.";
constexpr const char* kTransfer =
    "Chunk K/V bytes moved between workers: ahead of the final (move) or by the final task itself (final_fetch).";
constexpr const char* kTransferSeconds =
    "Seconds of one K/V move (move), or of one final task's fetches together (final_fetch).";
constexpr const char* kMoves = "K/V moves ahead of the final, by outcome.";

}  // namespace

CoordinatorMetrics::CoordinatorMetrics(ops::Metrics& m)
    : jobs_submitted(Counters(m, "mesa_jobs_submitted_total", "Jobs created (a repeated request_id not counted).")
                         .Add({})),
      items_submitted(Counters(m, "mesa_items_submitted_total", "Input lines of the jobs created (one item each).")
                          .Add({})),
      items_done(Counters(m, "mesa_items_done_total", "Items whose result was committed.").Add({})),
      items_failed(Counters(m, "mesa_items_failed_total",
                            "Items failed for good (bad input line, or --max-attempts failed tries).")
                       .Add({})),
      prompt_tokens(Counters(m, "mesa_prompt_tokens_total", "Prompt tokens prefilled for the items done.").Add({})),
      generated_tokens(Counters(m, "mesa_generated_tokens_total", "Tokens generated for the items done.").Add({})),
      chunk_tasks_ok(Counters(m, "mesa_tasks_total", kTasks)
                         .Add({{"kind", "chunk"}, {"outcome", "ok"}})),
      chunk_tasks_failed(Counters(m, "mesa_tasks_total", kTasks).Add({{"kind", "chunk"}, {"outcome", "error"}})),
      final_tasks_ok(Counters(m, "mesa_tasks_total", kTasks).Add({{"kind", "final"}, {"outcome", "ok"}})),
      final_tasks_failed(Counters(m, "mesa_tasks_total", kTasks).Add({{"kind", "final"}, {"outcome", "error"}})),
      chunk_task_seconds(Histograms(m, "mesa_task_seconds", kTaskSeconds)
                             .Add({{"kind", "chunk"}}, ops::TaskSecondsBuckets())),
      final_task_seconds(Histograms(m, "mesa_task_seconds", kTaskSeconds).Add({{"kind", "final"}}, ops::TaskSecondsBuckets())),
      kv_moved_bytes(Counters(m, "mesa_kv_transfer_bytes_total", kTransfer)
                         .Add({{"via", "move"}})),
      kv_fetched_bytes(Counters(m, "mesa_kv_transfer_bytes_total", kTransfer).Add({{"via", "final_fetch"}})),
      kv_move_seconds(Histograms(m, "mesa_kv_transfer_seconds", kTransferSeconds)
                          .Add({{"via", "move"}}, ops::TransferSecondsBuckets())),
      kv_fetch_seconds(Histograms(m, "mesa_kv_transfer_seconds", kTransferSeconds)
                           .Add({{"via", "final_fetch"}}, ops::TransferSecondsBuckets())),
      kv_moves_ok(Counters(m, "mesa_kv_moves_total", kMoves).Add({{"outcome", "ok"}})),
      kv_moves_failed(Counters(m, "mesa_kv_moves_total", kMoves).Add({{"outcome", "error"}})),
      workers_lost(Counters(m, "mesa_workers_lost_total",
                            "Workers taken as dead because they did not answer after a failed call.")
                       .Add({})) {}

}  // namespace mesa::coord
