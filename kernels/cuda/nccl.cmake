# NCCL point-to-point entries of the CUDA plugin (nccl_plugin.cc; worker/nccl_peer.h
# drives them). Compiled with MESA_HAVE_NCCL where NCCL was found, else as stubs that
# say so. cmake/MesaCuda.cmake may define MESA_HAVE_NCCL itself (NCCL optional in a CUDA
# build); until then NCCL is there whenever MESA_NCCL_LIBRARY is.
target_sources(mesa_cuda PRIVATE ${CMAKE_CURRENT_LIST_DIR}/nccl_plugin.cc)
if(DEFINED MESA_HAVE_NCCL)
  set(_mesa_nccl ${MESA_HAVE_NCCL})
elseif(MESA_NCCL_LIBRARY)
  set(_mesa_nccl ON)
else()
  set(_mesa_nccl OFF)
endif()
if(_mesa_nccl)
  set_property(SOURCE ${CMAKE_CURRENT_LIST_DIR}/nccl_plugin.cc APPEND PROPERTY COMPILE_DEFINITIONS MESA_HAVE_NCCL=1)
endif()
