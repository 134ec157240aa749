# K/V over peer links with gRPC as the control plane (worker/peer_kv.h): the holder's
# PeerKv handler and the PeerKvFetcher; tested against real loopback servers and
# socket links.
target_sources(mesa_worker_rpc PRIVATE ${CMAKE_CURRENT_LIST_DIR}/peer_kv.cc)
if(MESA_BUILD_TESTS)
  mesa_test(peer_kv_test ${CMAKE_CURRENT_LIST_DIR}/peer_kv_test.cc LIBS mesa_worker_rpc GTest::gmock)
endif()
