# kernels/ref: scalar references (double accumulation), the specification of each op.
target_sources(mesa_kernels PRIVATE ${CMAKE_CURRENT_LIST_DIR}/quant_ref.cc)

if(MESA_BUILD_TESTS)
  mesa_test(dtype_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/../dtype_test.cc LIBS mesa_kernels)
  mesa_test(quant_q4k_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/quant_q4k_test.cc LIBS mesa_kernels)
endif()
