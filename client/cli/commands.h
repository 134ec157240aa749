// Subcommands of the `mesa` CLI. Each Register* adds its options to the app and sets a
// callback that runs the command; failures print "mesa: error: ..." and set a non-zero
// exit code. Command shapes are a contract: scripts and benchmarks call them.
#pragma once

#include "CLI/CLI.hpp"

namespace mesa::cli {

// Exit code chosen by the command that ran (0 on success).
int& ExitCode();

void RegisterInfo(CLI::App& app);
void RegisterTokenize(CLI::App& app);
void RegisterGenerate(CLI::App& app);
void RegisterLogits(CLI::App& app);
void RegisterBench(CLI::App& app);
void RegisterPlan(CLI::App& app);
void RegisterRun(CLI::App& app);
void RegisterEval(CLI::App& app);
// cmd_client.cc: submit, status, wait, results, cancel, list (over client/lib).
void RegisterClientCommands(CLI::App& app);
// cmd_cluster.cc: coordinator, worker.
void RegisterClusterCommands(CLI::App& app);
// cmd_mpi_cluster.cc: cluster (a whole cluster as one MPI job).
void RegisterMpiCluster(CLI::App& app);

}  // namespace mesa::cli
