# K/V over gRPC: the FetchKv stream writer, GrpcKvFetcher, absl <-> gRPC status
# conversions; their test against a real loopback server; and the transfer benchmark.
target_sources(mesa_worker_rpc PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/grpc_kv.cc
  ${CMAKE_CURRENT_LIST_DIR}/grpc_status.cc)
if(MESA_BUILD_TESTS)
  mesa_test(grpc_kv_test ${CMAKE_CURRENT_LIST_DIR}/grpc_kv_test.cc LIBS mesa_worker_rpc GTest::gmock)
endif()
# GB/s of a FetchKv stream on loopback against a plain TCP copy: bench/kv_transfer.sh.
add_executable(kv_transfer_bench ${CMAKE_SOURCE_DIR}/bench/kv_transfer_bench.cc)
target_link_libraries(kv_transfer_bench PRIVATE mesa_worker_rpc Threads::Threads)
# A spread final's gather from several holders, one chunk at a time against prefetched
# (worker/kv_prefetch.h), over gRPC and socket links: bench/kv_transfer.sh runs it too.
add_executable(kv_gather_bench ${CMAKE_SOURCE_DIR}/bench/kv_gather_bench.cc)
target_link_libraries(kv_gather_bench PRIVATE mesa_worker_rpc Threads::Threads)
