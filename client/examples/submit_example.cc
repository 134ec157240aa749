// Example: a user's own program on the Mesa client library. Submits the documents of a
// JSONL file to a coordinator, waits for the job, and writes its results.
//
//   submit_example COORDINATOR INPUT.jsonl OUTPUT.jsonl
//
// Built in-tree (target submit_example) and from an installed package (examples/external:
// find_package(mesaClient), target_link_libraries(... mesa::client)).
#include <cstdio>
#include <string>
#include <utility>

#include "client/lib/client.h"
#include "client/lib/grpc_connection.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s COORDINATOR INPUT.jsonl OUTPUT.jsonl\n", argv[0]);
    return 2;
  }
  const std::string address = argv[1], input = argv[2], output = argv[3];
  auto connection = mesa::client::MakeGrpcConnection(address);
  if (!connection.ok()) {
    std::fprintf(stderr, "error: %s\n", connection.status().ToString().c_str());
    return 1;
  }
  mesa::client::Client client(*std::move(connection));

  mesa::client::JobOptions options;
  options.task = "summarize";
  options.max_tokens = 256;
  auto job = client.SubmitFile(input, options);
  if (!job.ok()) {
    std::fprintf(stderr, "error: %s\n", job.status().ToString().c_str());
    return 1;
  }
  std::printf("submitted %s\n", job->id.c_str());

  auto done = client.Wait(job->id, absl::Hours(2), [](const mesa::client::JobInfo& j) {
    std::printf("%s: %lld/%lld done\n", j.status.c_str(), static_cast<long long>(j.request_counts.completed),
                static_cast<long long>(j.request_counts.total));
  });
  if (!done.ok()) {
    std::fprintf(stderr, "error: %s\n", done.status().ToString().c_str());
    return 1;
  }
  if (done->timed_out || done->job.status != "completed") {
    std::fprintf(stderr, "job %s ended %s %s\n", job->id.c_str(), done->timed_out ? "in a timeout:" : "as",
                 done->job.status.c_str());
    return 1;
  }
  auto lines = client.Results(job->id, "mesa", output);
  if (!lines.ok()) {
    std::fprintf(stderr, "error: %s\n", lines.status().ToString().c_str());
    return 1;
  }
  std::printf("%lld results in %s\n", static_cast<long long>(*lines), output.c_str());
  std::printf("%s\n", mesa::client::JobInfoToJson(done->job).c_str());
  return 0;
}
