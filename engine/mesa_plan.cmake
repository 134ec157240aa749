# The Mesa-Extrapolation planner (MESA_SPEC.md section 1).
target_sources(mesa_engine PRIVATE ${CMAKE_CURRENT_LIST_DIR}/mesa_plan.cc)
if(MESA_BUILD_TESTS)
  mesa_test(mesa_plan_test ${CMAKE_CURRENT_LIST_DIR}/mesa_plan_test.cc LIBS mesa_engine GTest::gmock)
endif()
