target_sources(mesa_worker_rpc PRIVATE ${CMAKE_CURRENT_LIST_DIR}/worker_rpc.cc)
target_link_libraries(mesa_worker_rpc PUBLIC mesa_rpc)  # TLS, mutual TLS, health server
target_sources(mesa_worker_rpc PRIVATE ${CMAKE_CURRENT_LIST_DIR}/task_proto.cc)  # task <-> proto
