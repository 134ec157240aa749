# CUDA pieces. The .cu code is a plugin (libmesa_cuda.so) linked against cudart,
# cuBLAS and (if found) NCCL, built only when the toolkit is found (MESA_HAVE_CUDA); the host side
# loads it with dlopen when a GPU is asked about, so CPU runs never map those libraries.
# Nothing links libcuda (the driver): everything runs on machines without a GPU.
#   mesa_cuda_ops  the kernels (ops.h), a static library linked into the plugin and
#                  into the gpu-labelled tests (which skip visibly without a device)
#   mesa_cuda      the plugin: device query + the backend's op table
target_sources(mesa_kernels PRIVATE ${CMAKE_CURRENT_LIST_DIR}/device_query.cc)
target_link_libraries(mesa_kernels PUBLIC ${CMAKE_DL_LIBS})
include(${CMAKE_CURRENT_LIST_DIR}/attention_emu.cmake)  # attention kernels on the CPU
include(${CMAKE_CURRENT_LIST_DIR}/ops_emu.cmake)  # ops_basic/ops_kv kernels on the CPU
if(MESA_HAVE_CUDA)
  # dtype.cc: the block sizes the kernels plan with (also in mesa_kernels; the plugin
  # links no other part of Mesa).
  add_library(mesa_cuda_ops STATIC ${CMAKE_CURRENT_LIST_DIR}/ops_common.cu ${CMAKE_CURRENT_LIST_DIR}/ops_kv.cu
                                   ${CMAKE_SOURCE_DIR}/kernels/dtype.cc)
  set_target_properties(mesa_cuda_ops PROPERTIES POSITION_INDEPENDENT_CODE ON
                                                 CUDA_SEPARABLE_COMPILATION OFF)
  target_include_directories(mesa_cuda_ops PUBLIC ${CMAKE_SOURCE_DIR})
  target_include_directories(mesa_cuda_ops SYSTEM PUBLIC ${CUDAToolkit_INCLUDE_DIRS} ${CUDAToolkit_INCLUDE_DIRS}/cccl)
  target_link_libraries(mesa_cuda_ops PUBLIC CUDA::cudart CUDA::cublas)
  include(${CMAKE_CURRENT_LIST_DIR}/ops_basic.cmake)      # norms, rope, embed, matmul
  include(${CMAKE_CURRENT_LIST_DIR}/ops_attention.cmake)  # attention

  add_library(mesa_cuda SHARED ${CMAKE_CURRENT_LIST_DIR}/device_query.cu
                               ${CMAKE_CURRENT_LIST_DIR}/backend_plugin.cc)
  # Every symbol resolved when the plugin is linked, not when a GPU machine loads it.
  target_link_options(mesa_cuda PRIVATE -Wl,--no-undefined)
  target_include_directories(mesa_cuda PRIVATE ${CMAKE_SOURCE_DIR})
  target_include_directories(mesa_cuda SYSTEM PRIVATE ${CUDAToolkit_INCLUDE_DIRS} ${CUDAToolkit_INCLUDE_DIRS}/cccl)
  target_link_libraries(mesa_cuda PRIVATE mesa_cuda_ops CUDA::cudart CUDA::cublas mesa_nccl)
  include(${CMAKE_CURRENT_LIST_DIR}/nccl.cmake)  # NCCL point-to-point entries (worker/nccl_peer.h)
  target_compile_definitions(mesa_kernels PRIVATE MESA_CUDA_PLUGIN_PATH="$<TARGET_FILE:mesa_cuda>")
  add_dependencies(mesa_kernels mesa_cuda)
endif()
