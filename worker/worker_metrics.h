// A worker's Prometheus metrics (names, types, labels: docs/RUNTIME.md "Metrics and
// logs"), updated by WorkerCore as tasks run and K/V arrives; the K/V memory gauges are
// computed at scrape from the core's store (WorkerCore registers them).
#pragma once

#include "ops/metrics.h"

namespace mesa::worker {

struct WorkerMetrics {
  explicit WorkerMetrics(ops::Metrics& metrics);

  prometheus::Counter& chunk_tasks_ok;
  prometheus::Counter& chunk_tasks_failed;
  prometheus::Counter& final_tasks_ok;
  prometheus::Counter& final_tasks_failed;
  prometheus::Histogram& chunk_task_seconds;  // on this worker, successful tasks
  prometheus::Histogram& final_task_seconds;
  prometheus::Counter& chunk_prefill_tokens;  // anchor + chunk, per chunk task
  prometheus::Counter& final_prefill_tokens;  // the whole prompt, or anchor + last chunk
  prometheus::Counter& generated_tokens;
  prometheus::Counter& kv_fetched_bytes_final;  // fetched by final tasks
  prometheus::Counter& kv_fetched_bytes_load;   // fetched by LoadKv (moves)
  prometheus::Histogram& kv_fetch_seconds_final;  // one chunk's fetch
  prometheus::Histogram& kv_fetch_seconds_load;
};

}  // namespace mesa::worker
