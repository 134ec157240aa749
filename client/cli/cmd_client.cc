// placeholder until written.
#include "client/cli/commands.h"
namespace mesa::cli {
void RegisterClientCommands(CLI::App&) {}
}  // namespace mesa::cli
