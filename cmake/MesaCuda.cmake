# CUDA detection. MESA_WITH_CUDA=AUTO builds the CUDA sources when the toolkit at
# /usr/local/cuda (or CUDAToolkit_ROOT) is found with cuBLAS; ON requires it; OFF skips it.
# NCCL is optional inside a CUDA build: MESA_WITH_NCCL=AUTO uses it when libnccl and
# nccl.h are found (ON requires them, OFF builds without). The interface target
# mesa_nccl carries it: the library, its headers and the compile definition
# MESA_HAVE_NCCL=1 when present, nothing otherwise (code without it reports NCCL
# version 0 and keeps K/V on the gRPC stream).
# Nothing here links libcuda (the driver): binaries must run on machines without a GPU.
set(MESA_WITH_NCCL "AUTO" CACHE STRING "Use NCCL in a CUDA build: AUTO (if found), ON or OFF")
set_property(CACHE MESA_WITH_NCCL PROPERTY STRINGS AUTO ON OFF)
set(MESA_HAVE_CUDA OFF)
set(MESA_HAVE_NCCL OFF)
if(NOT MESA_WITH_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 90)
    endif()
    set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
    set(CMAKE_CUDA_STANDARD 17)
    enable_language(CUDA)
    find_package(CUDAToolkit)
    if(CUDAToolkit_FOUND AND TARGET CUDA::cublas)
      set(MESA_HAVE_CUDA ON)
    endif()
  endif()
  if(MESA_WITH_CUDA STREQUAL "ON" AND NOT MESA_HAVE_CUDA)
    message(FATAL_ERROR "MESA_WITH_CUDA=ON but the CUDA toolkit or cuBLAS was not found")
  endif()
endif()

add_library(mesa_nccl INTERFACE)
if(MESA_HAVE_CUDA AND NOT MESA_WITH_NCCL STREQUAL "OFF")
  get_filename_component(_cuda_lib_dir "${CUDAToolkit_LIBRARY_DIR}" ABSOLUTE)
  find_library(MESA_NCCL_LIBRARY nccl HINTS ${_cuda_lib_dir} /usr/local/cuda/lib64)
  find_path(MESA_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include)
  if(MESA_NCCL_LIBRARY AND MESA_NCCL_INCLUDE_DIR)
    set(MESA_HAVE_NCCL ON)
    target_link_libraries(mesa_nccl INTERFACE ${MESA_NCCL_LIBRARY})
    target_include_directories(mesa_nccl SYSTEM INTERFACE ${MESA_NCCL_INCLUDE_DIR})
    target_compile_definitions(mesa_nccl INTERFACE MESA_HAVE_NCCL=1)
  endif()
endif()
if(MESA_WITH_NCCL STREQUAL "ON" AND NOT MESA_HAVE_NCCL)
  message(FATAL_ERROR "MESA_WITH_NCCL=ON but CUDA or NCCL (libnccl, nccl.h) was not found")
endif()
message(STATUS "Mesa: CUDA support ${MESA_HAVE_CUDA} (MESA_WITH_CUDA=${MESA_WITH_CUDA}), "
               "NCCL ${MESA_HAVE_NCCL} (MESA_WITH_NCCL=${MESA_WITH_NCCL})")
