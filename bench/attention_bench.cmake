# attention_bench: GFLOP/s of cpu::Attention per position mode, for prefill
# (n = 4096, causal) and decode (n_q = 1, n_kv = 32768). Run: build/.../bench/attention_bench
add_executable(attention_bench ${CMAKE_CURRENT_LIST_DIR}/attention_bench.cc)
target_link_libraries(attention_bench PRIVATE mesa_kernels benchmark::benchmark)
