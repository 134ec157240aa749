# kernels/cpu: SIMD + threaded kernels. The x86 kernel files are compiled once per ISA
# with that ISA's flags and picked at run time (matmul_cpu.cc), so the library runs on
# any x86-64; other architectures get the portable fallback only.
target_sources(mesa_kernels PRIVATE ${CMAKE_CURRENT_LIST_DIR}/matmul_cpu.cc ${CMAKE_CURRENT_LIST_DIR}/pack_x8.cc)
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
  target_sources(mesa_kernels PRIVATE
    ${CMAKE_CURRENT_LIST_DIR}/matmul_x86_avx2.cc
    ${CMAKE_CURRENT_LIST_DIR}/matmul_x86_avx512.cc)
  set_source_files_properties(${CMAKE_CURRENT_LIST_DIR}/matmul_x86_avx2.cc
    PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma;-mf16c")
  set_source_files_properties(${CMAKE_CURRENT_LIST_DIR}/matmul_x86_avx512.cc
    PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma;-mf16c;-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx512vnni")
  set_source_files_properties(${CMAKE_CURRENT_LIST_DIR}/matmul_cpu.cc
    PROPERTIES COMPILE_DEFINITIONS "MESA_HAVE_X86_KERNELS=1")
endif()

if(MESA_BUILD_TESTS)
  mesa_test(matmul_cpu_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/matmul_cpu_test.cc LIBS mesa_kernels mesa_random_weights)
endif()
