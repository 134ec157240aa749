target_sources(mesa_engine PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/kv_cache.cc
  ${CMAKE_CURRENT_LIST_DIR}/forward.cc
  ${CMAKE_CURRENT_LIST_DIR}/sampling.cc
  ${CMAKE_CURRENT_LIST_DIR}/generate.cc)
if(MESA_BUILD_TESTS)
  mesa_test(forward_test ${CMAKE_CURRENT_LIST_DIR}/forward_test.cc
                         ${CMAKE_CURRENT_LIST_DIR}/sampling_test.cc LIBS mesa_engine)
endif()
