target_sources(mesa_coordinator_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/scheduler.cc)
if(MESA_BUILD_TESTS)
  mesa_test(scheduler_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/scheduler_test.cc LIBS mesa_coordinator_core)
  mesa_test(scheduler_sim_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/scheduler_sim_test.cc LIBS mesa_coordinator_core)
endif()
# The scale simulation (bench/scale_sim.sh runs it): the real scheduler against simulated
# workers on a fake clock. A benchmark, not a test.
add_executable(scale_sim ${CMAKE_SOURCE_DIR}/bench/scale_sim.cc)
target_link_libraries(scale_sim PRIVATE mesa_coordinator_core)
