# Point-to-point links in a worker group (worker/kv_peer.h), the TCP link
# (worker/socket_peer.h), the NCCL link over the CUDA plugin (worker/nccl_peer.h: no
# CUDA headers, it reaches NCCL through the plugin's op table) and the K/V gather
# protocol over any of them (worker/kv_gather.h); the bound on a worker's live links
# (worker/link_limit.h).
target_sources(mesa_worker_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/kv_peer.cc
                                        ${CMAKE_CURRENT_LIST_DIR}/socket_peer.cc
                                        ${CMAKE_CURRENT_LIST_DIR}/nccl_peer.cc
                                        ${CMAKE_CURRENT_LIST_DIR}/kv_gather.cc
                                        ${CMAKE_CURRENT_LIST_DIR}/link_limit.cc)
if(MESA_BUILD_TESTS)
  mesa_test(kv_gather_test ${CMAKE_CURRENT_LIST_DIR}/kv_gather_test.cc
                           ${CMAKE_CURRENT_LIST_DIR}/socket_peer_test.cc
                           ${CMAKE_CURRENT_LIST_DIR}/nccl_peer_cpu_test.cc LIBS mesa_worker_core GTest::gmock)
  mesa_test(link_limit_test ${CMAKE_CURRENT_LIST_DIR}/link_limit_test.cc LIBS mesa_worker_core GTest::gmock)
  # On a GPU (skipped, saying why, elsewhere): a one-rank NCCL group sending to itself.
  mesa_test(nccl_peer_test ${CMAKE_CURRENT_LIST_DIR}/nccl_peer_test.cc LIBS mesa_worker_core GTest::gmock
            LABELS gpu)
endif()
