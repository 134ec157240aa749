target_sources(mesa_kernels PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/ref/nn_ref.cc
  ${CMAKE_CURRENT_LIST_DIR}/ref/attention_ref.cc
  ${CMAKE_CURRENT_LIST_DIR}/cpu/nn_cpu.cc
  ${CMAKE_CURRENT_LIST_DIR}/cpu/attention_cpu.cc)
if(MESA_BUILD_TESTS)
  mesa_test(nn_test ${CMAKE_CURRENT_LIST_DIR}/cpu/nn_cpu_test.cc
                    ${CMAKE_CURRENT_LIST_DIR}/cpu/attention_cpu_test.cc
                    ${CMAKE_CURRENT_LIST_DIR}/ref/attention_ref_test.cc LIBS mesa_kernels)
endif()
