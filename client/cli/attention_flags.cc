// Long-context flags: definitions, help text and conversion to LongContextOptions.
#include "client/cli/attention_flags.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace mesa::cli {

void AddLongContextFlags(CLI::App* cmd, LongContextFlags* f) {
  const std::string g = "Long context";
  cmd->add_option("--attention", f->attention,
                  "Attention method for long input: auto (= mesa, which is plain attention when the "
                  "input fits in the trained length), mesa (Mesa-Extrapolation: anchor + independent "
                  "chunks, Stair PE for the last chunk and decoding), full (the original model at any "
                  "length), self-extend (grouped positions beyond a window), rerope (positions clamped "
                  "at a window)")
      ->check(CLI::IsMember({"auto", "mesa", "full", "self-extend", "rerope"}))
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--train-length", f->train_length,
                  "Trained context length T: inputs of at most T tokens (prompt + generation) run "
                  "unchanged (default: the model's context length)")
      ->check(CLI::PositiveNumber)
      ->group(g);
  cmd->add_option("--anchor", f->anchor,
                  "Mesa anchor length F: the first F prompt tokens, which every chunk also attends to "
                  "(put the instruction there)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--last-chunk", f->last_chunk,
                  "Mesa last-chunk target L: the final prompt tokens, which attend to the whole prompt "
                  "with Stair PE (put the question there); lowered to the width cap when needed")
      ->check(CLI::PositiveNumber)
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--margin", f->margin,
                  "Mesa margin: positions kept free below T, so a middle chunk is at most "
                  "T - F - margin tokens wide")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--max-chunk", f->max_chunk,
                  "Mesa cap on the middle-chunk width W (smaller: more chunks, more parallelism, "
                  "less context inside a chunk); 0 = no cap beyond T - F - margin")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str()
      ->group(g);
  cmd->add_option("--stair-n", f->stair_n,
                  "Stair PE exact window N: relative distances below N keep their true value "
                  "(default: min(512, T/2); must be below T)")
      ->check(CLI::PositiveNumber)
      ->group(g);
  cmd->add_option("--stair-e", f->stair_e,
                  "Stair PE stair width E: beyond N, every E tokens of distance count as one; raised "
                  "automatically when the farthest distance would reach T")
      ->check(CLI::PositiveNumber)
      ->capture_default_str()
      ->group(g);
  cmd->add_flag("--no-logn", f->no_logn,
                "Switch off the log-n query scaling max(1, ln(t+1)/ln(T)) applied past T under mesa")
      ->group(g);
  cmd->add_option("--se-group", f->se_group,
                  "Self-Extend group size G: distances beyond the window are divided by G "
                  "(default: the smallest G that keeps positions below T)")
      ->check(CLI::PositiveNumber)
      ->group(g);
  cmd->add_option("--se-window", f->se_window,
                  "Self-Extend neighbour window: nearer tokens keep exact positions (default: T/4)")
      ->check(CLI::PositiveNumber)
      ->group(g);
  cmd->add_option("--rerope-window", f->rerope_window,
                  "ReRoPE window w: relative positions are clamped at w (default: min(512, T/2))")
      ->check(CLI::PositiveNumber)
      ->group(g);
}

absl::StatusOr<LongContextOptions> ToLongContextOptions(const LongContextFlags& f) {
  LongContextOptions o;
  auto method = ParseAttentionMethod(f.attention);
  if (!method.ok()) return method.status();
  o.method = *method;
  auto check = [](const char* flag, int64_t v, int64_t min) -> absl::Status {
    if (v < min) {
      return absl::InvalidArgumentError(absl::StrCat(flag, " must be at least ", min, " (got ", v, ")"));
    }
    return absl::OkStatus();
  };
  for (absl::Status s : {check("--train-length", f.train_length, 0), check("--anchor", f.anchor, 0),
                         check("--last-chunk", f.last_chunk, 1), check("--margin", f.margin, 0),
                         check("--max-chunk", f.max_chunk, 0), check("--stair-n", f.stair_n, 0),
                         check("--stair-e", f.stair_e, 1), check("--se-group", f.se_group, 0),
                         check("--se-window", f.se_window, 0),
                         check("--rerope-window", f.rerope_window, 0)}) {
    if (!s.ok()) return s;
  }
  o.mesa.train_length = f.train_length;
  o.mesa.anchor = f.anchor;
  o.mesa.last_chunk = f.last_chunk;
  o.mesa.margin = f.margin;
  o.mesa.max_chunk = f.max_chunk;
  o.mesa.stair_n = f.stair_n;
  o.mesa.stair_e = f.stair_e;
  o.mesa.logn = !f.no_logn;
  o.se_group = f.se_group;
  o.se_window = f.se_window;
  o.rerope_window = f.rerope_window;
  return o;
}

}  // namespace mesa::cli
