// placeholder until written.
#include "client/cli/commands.h"
namespace mesa::cli {
void RegisterClusterCommands(CLI::App&) {}
}  // namespace mesa::cli
