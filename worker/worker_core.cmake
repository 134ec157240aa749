target_sources(mesa_worker_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/worker_core.cc
                                        ${CMAKE_CURRENT_LIST_DIR}/task_check.cc
                                        ${CMAKE_CURRENT_LIST_DIR}/in_process_kv.cc
                                        ${CMAKE_CURRENT_LIST_DIR}/kv_prefetch.cc
                                        ${CMAKE_CURRENT_LIST_DIR}/kv_transport.cc)
if(MESA_BUILD_TESTS)
  # On the shared stories260K model (skips visibly without ../shared).
  mesa_test(worker_core_test ${CMAKE_CURRENT_LIST_DIR}/worker_core_test.cc LIBS mesa_worker_core)
  mesa_test(kv_prefetch_test ${CMAKE_CURRENT_LIST_DIR}/kv_prefetch_test.cc LIBS mesa_worker_core)
endif()
target_sources(mesa_worker_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/worker_metrics.cc)  # its metrics
target_link_libraries(mesa_worker_core PUBLIC mesa_ops)
