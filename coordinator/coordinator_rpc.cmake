target_sources(mesa_coordinator_rpc PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/coordinator_service.cc
  ${CMAKE_CURRENT_LIST_DIR}/request_proto.cc
  ${CMAKE_CURRENT_LIST_DIR}/grpc_worker_client.cc)
target_link_libraries(mesa_coordinator_rpc PUBLIC mesa_rpc)  # TLS, tokens, health server
