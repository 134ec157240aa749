# NCCL point-to-point entries of the CUDA plugin (nccl_plugin.cc; worker/nccl_peer.h
# drives them). Compiled with MESA_HAVE_NCCL where NCCL was found (the mesa_nccl target
# of cmake/MesaCuda.cmake carries the definition), else as stubs that say so.
target_sources(mesa_cuda PRIVATE ${CMAKE_CURRENT_LIST_DIR}/nccl_plugin.cc)
