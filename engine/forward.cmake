target_sources(mesa_engine PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/kv_cache.cc
  ${CMAKE_CURRENT_LIST_DIR}/forward.cc
  ${CMAKE_CURRENT_LIST_DIR}/sampling.cc
  ${CMAKE_CURRENT_LIST_DIR}/generate.cc)
if(MESA_BUILD_TESTS)
  mesa_test(forward_test ${CMAKE_CURRENT_LIST_DIR}/forward_test.cc
                         ${CMAKE_CURRENT_LIST_DIR}/sampling_test.cc LIBS mesa_engine)
endif()
target_sources(mesa_engine PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/mesa_phases.cc
  ${CMAKE_CURRENT_LIST_DIR}/long_context.cc
  ${CMAKE_CURRENT_LIST_DIR}/long_context_plan.cc)
# The engine-level reference (slow, plain loops): linked by tests only.
add_library(mesa_engine_ref STATIC ${CMAKE_CURRENT_LIST_DIR}/reference_forward.cc)
target_link_libraries(mesa_engine_ref PUBLIC mesa_engine)
if(MESA_BUILD_TESTS)
  mesa_test(mesa_phases_test ${CMAKE_CURRENT_LIST_DIR}/mesa_phases_test.cc
            LIBS mesa_engine_ref mesa_testing)
  mesa_test(backend_seam_test ${CMAKE_CURRENT_LIST_DIR}/backend_seam_test.cc LIBS mesa_engine mesa_testing)
  # The CUDA backend end to end (needs a GPU; built in every build, skipped without one).
  mesa_test(cuda_backend_test ${CMAKE_CURRENT_LIST_DIR}/cuda_backend_test.cc LIBS mesa_engine mesa_testing
            LABELS gpu)
endif()
