# The K/V byte form: CRC32C, manifest + pieces, the assembler (worker/kv_wire.h), and
# the pool of K/V receive memory (worker/kv_pool.h).
target_sources(mesa_worker_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/kv_wire.cc
                                        ${CMAKE_CURRENT_LIST_DIR}/kv_pool.cc)
if(MESA_BUILD_TESTS)
  mesa_test(kv_wire_test ${CMAKE_CURRENT_LIST_DIR}/kv_wire_test.cc LIBS mesa_worker_core GTest::gmock)
  mesa_test(kv_pool_test ${CMAKE_CURRENT_LIST_DIR}/kv_pool_test.cc LIBS mesa_worker_core GTest::gmock)
endif()
