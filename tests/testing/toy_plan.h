// The options of MESA_SPEC section 5's worked toy plan (T = 32; E is raised from 2 to 3
// when planned), shared by the planner and phase tests.
#pragma once

#include "engine/mesa_plan.h"

namespace mesa::testing {

inline MesaOptions ToyOptions() {
  MesaOptions o;
  o.anchor = 4;
  o.last_chunk = 8;
  o.margin = 0;
  o.stair_n = 16;
  o.stair_e = 2;
  return o;
}

}  // namespace mesa::testing
