target_sources(mesa_coordinator_core PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/coordinator_core.cc
  ${CMAKE_CURRENT_LIST_DIR}/job_request.cc
  ${CMAKE_CURRENT_LIST_DIR}/in_process_worker.cc)
target_sources(mesa_coordinator_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/local_run.cc)  # mesa run --workers K
target_sources(mesa_coordinator_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/coordinator_metrics.cc)  # its metrics
target_link_libraries(mesa_coordinator_core PUBLIC mesa_ops)
