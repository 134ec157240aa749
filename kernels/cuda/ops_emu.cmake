# Host emulation test of the CUDA kernels of ops_basic.cu and ops_kv.cu (their headers
# run as fibers on the CPU, cuda_emu.h): built everywhere, with or without the CUDA toolkit.
if(MESA_BUILD_TESTS)
  mesa_test(cuda_ops_emu_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/ops_emu_test.cc
            LIBS mesa_kernels mesa_random_weights)
  target_compile_definitions(cuda_ops_emu_test PRIVATE MESA_CUDA_HOST_SIM=1)
endif()
