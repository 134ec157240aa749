target_sources(mesa_worker_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/kv_wire.cc)
