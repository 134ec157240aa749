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

// The peer-link counters of a worker's K/V fetcher (worker/peer_kv.h, --kv-transport
// socket|nccl): chunks by route, links by event.
struct KvLinkMetrics {
  explicit KvLinkMetrics(ops::Metrics& metrics);

  prometheus::Counter& link_chunks;      // over a peer link
  prometheus::Counter& fallback_chunks;  // over FetchKv from a holder without one
  prometheus::Counter& links_made;
  prometheus::Counter& links_refused;    // refused, or could not be made
  prometheus::Counter& links_lost;       // after a failed transfer, or closed by the holder
  prometheus::Counter& links_closed_for_room;  // idle, closed for a new one (--kv-links)
};

}  // namespace mesa::worker
