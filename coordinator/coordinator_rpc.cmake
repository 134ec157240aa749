target_sources(mesa_coordinator_rpc PRIVATE ${CMAKE_CURRENT_LIST_DIR}/coordinator_rpc.cc)
