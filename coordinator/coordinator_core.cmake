target_sources(mesa_coordinator_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/coordinator_core.cc)
