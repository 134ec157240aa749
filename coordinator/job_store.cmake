target_sources(mesa_coordinator_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/job_store.cc)
if(MESA_BUILD_TESTS)
  mesa_test(job_store_test ${CMAKE_CURRENT_LIST_DIR}/job_store_test.cc LIBS mesa_coordinator_core)
endif()
