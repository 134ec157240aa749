target_sources(mesa_worker_rpc PRIVATE ${CMAKE_CURRENT_LIST_DIR}/worker_rpc.cc)
target_link_libraries(mesa_worker_rpc PUBLIC mesa_rpc)  # TLS, mutual TLS, health server
target_sources(mesa_worker_rpc PRIVATE ${CMAKE_CURRENT_LIST_DIR}/task_proto.cc)  # task <-> proto
if(MESA_BUILD_TESTS)
  # The task calls' cancellation watcher (worker/cancel_watchers.h) on a real loopback server.
  mesa_test(cancel_watchers_test ${CMAKE_CURRENT_LIST_DIR}/cancel_watchers_test.cc LIBS mesa_worker_rpc GTest::gmock)
endif()
