# CUDA pieces. Built only when the toolkit is found (MESA_HAVE_CUDA); otherwise a
# host-only stub answers "built without CUDA".
if(MESA_HAVE_CUDA)
  target_sources(mesa_kernels PRIVATE ${CMAKE_CURRENT_LIST_DIR}/device_query.cu)
  target_compile_definitions(mesa_kernels PUBLIC MESA_HAVE_CUDA=1)
  target_include_directories(mesa_kernels SYSTEM PRIVATE ${CUDAToolkit_INCLUDE_DIRS} ${CUDAToolkit_INCLUDE_DIRS}/cccl)
  # cudart, cuBLAS and NCCL; never libcuda (the driver), so binaries run without a GPU.
  target_link_libraries(mesa_kernels PUBLIC CUDA::cudart CUDA::cublas ${MESA_NCCL_LIBRARY})
else()
  target_sources(mesa_kernels PRIVATE ${CMAKE_CURRENT_LIST_DIR}/device_query_nocuda.cc)
endif()
