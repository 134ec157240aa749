target_sources(mesa_kernels PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/ref/nn_ref.cc
  ${CMAKE_CURRENT_LIST_DIR}/ref/attention_ref.cc
  ${CMAKE_CURRENT_LIST_DIR}/cpu/nn_cpu.cc
  ${CMAKE_CURRENT_LIST_DIR}/cpu/activation_cpu.cc
  ${CMAKE_CURRENT_LIST_DIR}/cpu/attention_cpu.cc)
# The attention unit kernel and the activation kernels are compiled once per x86 ISA
# with that ISA's flags (as the MatMul kernels in cpu/cpu.cmake) and picked per call by
# attention_cpu.cc and activation_cpu.cc.
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
  target_sources(mesa_kernels PRIVATE
    ${CMAKE_CURRENT_LIST_DIR}/cpu/attention_x86_avx2.cc
    ${CMAKE_CURRENT_LIST_DIR}/cpu/attention_x86_avx512.cc
    ${CMAKE_CURRENT_LIST_DIR}/cpu/activation_x86_avx2.cc
    ${CMAKE_CURRENT_LIST_DIR}/cpu/activation_x86_avx512.cc)
  set_source_files_properties(${CMAKE_CURRENT_LIST_DIR}/cpu/attention_x86_avx2.cc
                              ${CMAKE_CURRENT_LIST_DIR}/cpu/activation_x86_avx2.cc
    PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma;-mf16c")
  set_source_files_properties(${CMAKE_CURRENT_LIST_DIR}/cpu/attention_x86_avx512.cc
                              ${CMAKE_CURRENT_LIST_DIR}/cpu/activation_x86_avx512.cc
    PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma;-mf16c;-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq")
  set_source_files_properties(${CMAKE_CURRENT_LIST_DIR}/cpu/attention_cpu.cc
    PROPERTIES COMPILE_DEFINITIONS "MESA_HAVE_X86_ATTENTION=1")
  set_source_files_properties(${CMAKE_CURRENT_LIST_DIR}/cpu/activation_cpu.cc
    PROPERTIES COMPILE_DEFINITIONS "MESA_HAVE_X86_ACTIVATIONS=1")
endif()
if(MESA_BUILD_TESTS)
  mesa_test(nn_test ${CMAKE_CURRENT_LIST_DIR}/cpu/nn_cpu_test.cc
                    ${CMAKE_CURRENT_LIST_DIR}/cpu/attention_cpu_test.cc
                    ${CMAKE_CURRENT_LIST_DIR}/ref/attention_ref_test.cc
                    ${CMAKE_CURRENT_LIST_DIR}/attention_variant_test.cc LIBS mesa_kernels)
endif()
