# The distributed runtime in one process: a real coordinator gRPC server and real
# worker gRPC servers on loopback, driven through raw stubs and mesa::client. Included
# from tests/CMakeLists.txt; CMAKE_CURRENT_LIST_DIR is this file's folder (tests/runtime).
mesa_test(coordinator_rpc_test ${CMAKE_CURRENT_LIST_DIR}/coordinator_rpc_test.cc
          LIBS mesa_coordinator_rpc mesa_client LABELS runtime)
# TLS, mutual TLS, bearer tokens and health ports (certificates made by
# scripts/make_test_certs.sh at test time).
mesa_test(security_test ${CMAKE_CURRENT_LIST_DIR}/security_test.cc
          LIBS mesa_coordinator_rpc mesa_client LABELS runtime)
target_compile_definitions(security_test PRIVATE MESA_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
