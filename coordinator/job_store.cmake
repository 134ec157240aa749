target_sources(mesa_coordinator_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/job_store.cc)
