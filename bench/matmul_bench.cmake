# matmul_bench: GFLOP/s and weight GB/s of cpu::MatMul per weight type, for decode
# (m = 1) and prefill (m = 128) at 4096 x 4096. Run: build/.../bench/matmul_bench
add_executable(matmul_bench ${CMAKE_CURRENT_LIST_DIR}/matmul_bench.cc
               ${CMAKE_SOURCE_DIR}/tests/testing/random_weights.cc)
target_link_libraries(matmul_bench PRIVATE mesa_kernels benchmark::benchmark)
