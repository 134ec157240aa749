target_sources(mesa_worker_rpc PRIVATE ${CMAKE_CURRENT_LIST_DIR}/grpc_kv.cc)
