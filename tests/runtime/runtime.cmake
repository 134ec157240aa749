# The distributed runtime in one process: a real coordinator gRPC server and real
# worker gRPC servers on loopback, driven through raw stubs and mesa::client. Included
# from tests/CMakeLists.txt; CMAKE_CURRENT_LIST_DIR is this file's folder (tests/runtime).
mesa_test(coordinator_rpc_test ${CMAKE_CURRENT_LIST_DIR}/coordinator_rpc_test.cc
          LIBS mesa_coordinator_rpc mesa_client LABELS runtime)
