// The coordinator's Prometheus metrics (names, types, labels: docs/RUNTIME.md "Metrics
// and logs"). Counters and histograms the core updates as things happen; the gauges of
// state the core already holds (jobs by state, workers, the scheduler's queue) are
// computed at scrape by callbacks the core registers (CoordinatorCore::Create).
#pragma once

#include "ops/metrics.h"

namespace mesa::coord {

struct CoordinatorMetrics {
  explicit CoordinatorMetrics(ops::Metrics& metrics);

  prometheus::Counter& jobs_submitted;
  prometheus::Counter& items_submitted;
  prometheus::Counter& items_done;
  prometheus::Counter& items_failed;
  prometheus::Counter& prompt_tokens;     // of items done
  prometheus::Counter& generated_tokens;  // of items done
  prometheus::Counter& chunk_tasks_ok;
  prometheus::Counter& chunk_tasks_failed;
  prometheus::Counter& final_tasks_ok;
  prometheus::Counter& final_tasks_failed;
  prometheus::Histogram& chunk_task_seconds;  // dispatch to outcome, successful tasks
  prometheus::Histogram& final_task_seconds;
  prometheus::Counter& kv_moved_bytes;        // MoveKv: a chunk copied to its final worker
  prometheus::Counter& kv_fetched_bytes;      // fetched by final tasks from other workers
  prometheus::Histogram& kv_move_seconds;     // one move
  prometheus::Histogram& kv_fetch_seconds;    // one final task's fetches together
  prometheus::Counter& kv_moves_ok;
  prometheus::Counter& kv_moves_failed;
  prometheus::Counter& workers_lost;          // taken as dead after a failed call
};

}  // namespace mesa::coord
