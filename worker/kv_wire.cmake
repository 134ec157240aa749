# The K/V byte form: CRC32C, manifest + pieces, the assembler (worker/kv_wire.h).
target_sources(mesa_worker_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/kv_wire.cc)
if(MESA_BUILD_TESTS)
  mesa_test(kv_wire_test ${CMAKE_CURRENT_LIST_DIR}/kv_wire_test.cc LIBS mesa_worker_core GTest::gmock)
endif()
