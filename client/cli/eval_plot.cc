// gnuplot driver for the evaluation plots (see eval_plot.h).
#include "client/cli/eval_plot.h"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

extern char** environ;

namespace mesa::cli {
namespace {

// The program to run: $MESA_GNUPLOT, or the first executable "gnuplot" on $PATH.
std::string FindGnuplot() {
  if (const char* env = std::getenv("MESA_GNUPLOT"); env != nullptr && *env) return env;
  const char* path = std::getenv("PATH");
  std::string dirs = path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    const std::string dir = dirs.substr(start, end - start);
    const std::string candidate = (dir.empty() ? "." : dir) + "/gnuplot";
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return "";
}

// A gnuplot string literal: single quotes, with '' for a quote inside.
std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

std::string Num(double v) { return absl::StrCat(v); }

}  // namespace

absl::Status CheckGnuplot() {
  if (!FindGnuplot().empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      "--plot needs gnuplot, which is not on PATH: install it (Debian/Ubuntu: apt-get install "
      "gnuplot-nox) or set MESA_GNUPLOT, or leave out --plot");
}

absl::Status WritePngPlot(const PlotSpec& spec, const std::string& png_path) {
  if (absl::Status st = CheckGnuplot(); !st.ok()) return st;
  const std::string gnuplot = FindGnuplot();
  std::filesystem::path png(png_path);
  const std::string data_path = std::filesystem::path(png).replace_extension(".dat").string();
  const std::string script_path = std::filesystem::path(png).replace_extension(".gp").string();
  {
    std::ofstream data(data_path);
    data << "# " << spec.title << "\n# x y, one block per series (gnuplot index)\n";
    for (size_t i = 0; i < spec.series.size(); ++i) {
      const PlotSeries& s = spec.series[i];
      data << "# series " << i << ": " << s.title << "\n";
      for (size_t k = 0; k < s.x.size() && k < s.y.size(); ++k) {
        if (std::isfinite(s.y[k]) && std::isfinite(s.x[k])) data << Num(s.x[k]) << " " << Num(s.y[k]) << "\n";
      }
      data << "\n\n";
    }
    if (!data) return absl::PermissionDeniedError(absl::StrCat("cannot write '", data_path, "'"));
  }
  std::set<double> xs;
  for (const PlotSeries& s : spec.series) xs.insert(s.x.begin(), s.x.end());
  {
    std::ofstream gp(script_path);
    gp << "set terminal pngcairo size 960,600 font 'sans,11'\n"
       << "set output " << Quote(png_path) << "\n"
       << "set title " << Quote(spec.title) << " noenhanced\n"
       << "set xlabel " << Quote(spec.x_label) << " noenhanced\n"
       << "set ylabel " << Quote(spec.y_label) << " noenhanced\n"
       << "set grid\nset key outside right top noenhanced\n"
       << "set style data linespoints\n";
    if (spec.log_x) {
      gp << "set logscale x 2\n";
      if (!xs.empty()) {
        std::vector<std::string> tics;
        for (double x : xs) tics.push_back(absl::StrCat("\"", Num(x), "\" ", Num(x)));
        gp << "set xtics (" << absl::StrJoin(tics, ", ") << ")\n";
        gp << "set xrange [" << Num(*xs.begin() / 1.25) << ":" << Num(*xs.rbegin() * 1.25) << "]\n";
      }
    }
    if (spec.log_y) {
      // Labels at 1-2-3-5 steps: gnuplot labels only decades, too few for a narrow range.
      double lo = INFINITY, hi = -INFINITY;
      for (const PlotSeries& s : spec.series) {
        for (double y : s.y) {
          if (std::isfinite(y) && y > 0) lo = std::min(lo, y), hi = std::max(hi, y);
        }
      }
      gp << "set logscale y\nset format y '%g'\n";
      if (lo <= hi) {
        std::vector<std::string> tics;
        for (double decade = std::pow(10.0, std::floor(std::log10(lo))); decade <= hi * 10; decade *= 10) {
          for (double m : {1.0, 2.0, 3.0, 5.0}) {
            const double v = m * decade;
            if (v >= lo / 2.5 && v <= hi * 2.5) tics.push_back(absl::StrCat("\"", Num(v), "\" ", Num(v)));
          }
        }
        gp << "set ytics (" << absl::StrJoin(tics, ", ") << ")\n";
        if (!spec.y_min && !spec.y_max) gp << "set yrange [" << Num(lo / 1.3) << ":" << Num(hi * 1.3) << "]\n";
      }
    }
    if (spec.y_min || spec.y_max) {
      gp << "set yrange [" << (spec.y_min ? Num(*spec.y_min) : "") << ":"
         << (spec.y_max ? Num(*spec.y_max) : "") << "]\n";
    }
    if (spec.marker_x) {
      gp << "set arrow from " << Num(*spec.marker_x) << ", graph 0 to " << Num(*spec.marker_x)
         << ", graph 1 nohead dashtype 2 linecolor rgb 'gray40'\n";
      if (!spec.marker_label.empty()) {
        gp << "set label " << Quote(spec.marker_label) << " at " << Num(*spec.marker_x)
           << ", graph 0.96 offset 0.5,0 textcolor rgb 'gray40' noenhanced\n";
      }
    }
    std::vector<std::string> plots;
    for (size_t i = 0; i < spec.series.size(); ++i) {
      plots.push_back(absl::StrCat(Quote(data_path), " index ", i, " using 1:2 title ",
                                   Quote(spec.series[i].title), " linewidth 2 pointtype ", 5 + 2 * (i % 4),
                                   " pointsize 1.2"));
    }
    gp << "plot " << absl::StrJoin(plots, ", \\\n     ") << "\n";
    if (!gp) return absl::PermissionDeniedError(absl::StrCat("cannot write '", script_path, "'"));
  }
  pid_t pid = 0;
  std::vector<char*> argv = {const_cast<char*>(gnuplot.c_str()), const_cast<char*>(script_path.c_str()), nullptr};
  if (int err = posix_spawn(&pid, gnuplot.c_str(), nullptr, nullptr, argv.data(), environ); err != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot run gnuplot (", gnuplot, "): ", std::strerror(err)));
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return absl::InternalError(absl::StrCat("waiting for gnuplot: ", std::strerror(errno)));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat("gnuplot failed on ", script_path, " (exit status ",
                                            WIFEXITED(status) ? WEXITSTATUS(status) : -1, ")"));
  }
  return absl::OkStatus();
}

}  // namespace mesa::cli
