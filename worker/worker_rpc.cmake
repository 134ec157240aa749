target_sources(mesa_worker_rpc PRIVATE ${CMAKE_CURRENT_LIST_DIR}/worker_rpc.cc)
target_sources(mesa_worker_rpc PRIVATE ${CMAKE_CURRENT_LIST_DIR}/task_proto.cc)  # task <-> proto
