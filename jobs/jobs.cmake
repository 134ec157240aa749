target_sources(mesa_jobs PRIVATE ${CMAKE_CURRENT_LIST_DIR}/jobs_placeholder.cc)
