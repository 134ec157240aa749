# CUDA pieces. The .cu code is a plugin (libmesa_cuda.so) linked against cudart,
# cuBLAS and NCCL, built only when the toolkit is found (MESA_HAVE_CUDA); the host side
# loads it with dlopen when a GPU is asked about, so CPU runs never map those libraries.
# Nothing links libcuda (the driver): everything runs on machines without a GPU.
target_sources(mesa_kernels PRIVATE ${CMAKE_CURRENT_LIST_DIR}/device_query.cc)
target_link_libraries(mesa_kernels PUBLIC ${CMAKE_DL_LIBS})
if(MESA_HAVE_CUDA)
  add_library(mesa_cuda SHARED ${CMAKE_CURRENT_LIST_DIR}/device_query.cu)
  target_include_directories(mesa_cuda PRIVATE ${CMAKE_SOURCE_DIR})
  target_include_directories(mesa_cuda SYSTEM PRIVATE ${CUDAToolkit_INCLUDE_DIRS} ${CUDAToolkit_INCLUDE_DIRS}/cccl)
  target_link_libraries(mesa_cuda PRIVATE CUDA::cudart CUDA::cublas ${MESA_NCCL_LIBRARY})
  target_compile_definitions(mesa_kernels PRIVATE MESA_CUDA_PLUGIN_PATH="$<TARGET_FILE:mesa_cuda>")
  add_dependencies(mesa_kernels mesa_cuda)
endif()
