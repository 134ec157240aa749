// PNG line plots for `mesa eval` through gnuplot: writes the data (<out>.dat, one block
// per series) and the script (<out>.gp) beside the PNG, then runs gnuplot on them.
// gnuplot is an outside program (Debian: gnuplot-nox); when it is missing the caller
// gets a FailedPrecondition error saying so. $MESA_GNUPLOT overrides the program.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace mesa::cli {

struct PlotSeries {
  std::string title;
  std::vector<double> x, y;  // non-finite y values are left out
};

struct PlotSpec {
  std::string title, x_label, y_label;
  bool log_x = true;   // base 2, with a tic at every x of the data
  bool log_y = false;
  std::optional<double> y_min, y_max;
  std::optional<double> marker_x;  // a dashed vertical line, e.g. the trained length
  std::string marker_label;
  std::vector<PlotSeries> series;
};

// OK when gnuplot can be found: lets a command fail before a long evaluation.
absl::Status CheckGnuplot();

absl::Status WritePngPlot(const PlotSpec& spec, const std::string& png_path);

}  // namespace mesa::cli
