// WorkerMetrics: a worker's counters and histograms on its Metrics registry.
#include "worker/worker_metrics.h"

namespace mesa::worker {
namespace {

prometheus::Family<prometheus::Counter>& Counters(ops::Metrics& m, const char* name, const char* help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(m.registry());
}
prometheus::Family<prometheus::Histogram>& Histograms(ops::Metrics& m, const char* name, const char* help) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(m.registry());
}

constexpr const char* kTasks = "Tasks this worker ran, by kind and outcome.";
constexpr const char* kTaskSeconds = "Seconds this worker spent on each successful task, by kind.";
constexpr const char* kPrefill =
    "Prompt tokens this worker prefilled: anchor + chunk per chunk task; the whole prompt, or anchor + last "
    "chunk, per final task.";
constexpr const char* kFetched = "Chunk K/V bytes this worker fetched from other workers: by final tasks or LoadKv.";
constexpr const char* kFetchSeconds = "Seconds of one chunk's K/V fetch from another worker.";
constexpr const char* kLinkChunks =
    "Chunks this worker fetched with --kv-transport socket or nccl: over a peer link, or over FetchKv from a "
    "holder without one.";
constexpr const char* kLinks =
    "Peer links of this worker's fetches: made, refused or not makeable (FetchKv used), lost after a failed "
    "transfer.";

}  // namespace

WorkerMetrics::WorkerMetrics(ops::Metrics& m)
    : chunk_tasks_ok(Counters(m, "mesa_worker_tasks_total", kTasks).Add({{"kind", "chunk"}, {"outcome", "ok"}})),
      chunk_tasks_failed(Counters(m, "mesa_worker_tasks_total", kTasks).Add({{"kind", "chunk"}, {"outcome", "error"}})),
      final_tasks_ok(Counters(m, "mesa_worker_tasks_total", kTasks).Add({{"kind", "final"}, {"outcome", "ok"}})),
      final_tasks_failed(Counters(m, "mesa_worker_tasks_total", kTasks).Add({{"kind", "final"}, {"outcome", "error"}})),
      chunk_task_seconds(Histograms(m, "mesa_worker_task_seconds", kTaskSeconds)
                             .Add({{"kind", "chunk"}}, ops::TaskSecondsBuckets())),
      final_task_seconds(Histograms(m, "mesa_worker_task_seconds", kTaskSeconds)
                             .Add({{"kind", "final"}}, ops::TaskSecondsBuckets())),
      chunk_prefill_tokens(Counters(m, "mesa_worker_prefill_tokens_total", kPrefill).Add({{"kind", "chunk"}})),
      final_prefill_tokens(Counters(m, "mesa_worker_prefill_tokens_total", kPrefill).Add({{"kind", "final"}})),
      generated_tokens(Counters(m, "mesa_worker_generated_tokens_total", "Tokens this worker decoded.").Add({})),
      kv_fetched_bytes_final(Counters(m, "mesa_worker_kv_fetched_bytes_total", kFetched).Add({{"via", "final"}})),
      kv_fetched_bytes_load(Counters(m, "mesa_worker_kv_fetched_bytes_total", kFetched).Add({{"via", "load"}})),
      kv_fetch_seconds_final(Histograms(m, "mesa_worker_kv_fetch_seconds", kFetchSeconds)
                                 .Add({{"via", "final"}}, ops::TransferSecondsBuckets())),
      kv_fetch_seconds_load(Histograms(m, "mesa_worker_kv_fetch_seconds", kFetchSeconds)
                                .Add({{"via", "load"}}, ops::TransferSecondsBuckets())) {}

KvLinkMetrics::KvLinkMetrics(ops::Metrics& m)
    : link_chunks(Counters(m, "mesa_worker_kv_link_chunks_total", kLinkChunks).Add({{"route", "link"}})),
      fallback_chunks(Counters(m, "mesa_worker_kv_link_chunks_total", kLinkChunks).Add({{"route", "fallback"}})),
      links_made(Counters(m, "mesa_worker_kv_links_total", kLinks).Add({{"event", "made"}})),
      links_refused(Counters(m, "mesa_worker_kv_links_total", kLinks).Add({{"event", "refused"}})),
      links_lost(Counters(m, "mesa_worker_kv_links_total", kLinks).Add({{"event", "lost"}})),
      links_closed_for_room(Counters(m, "mesa_worker_kv_links_total", kLinks).Add({{"event", "closed_for_room"}})) {}

}  // namespace mesa::worker
