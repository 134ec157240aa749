# Batch jobs: JSONL formats, task and chat templates, the `mesa run` loop and progress.
target_sources(mesa_jobs PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/job_format.cc
  ${CMAKE_CURRENT_LIST_DIR}/templates.cc
  ${CMAKE_CURRENT_LIST_DIR}/batch_runner.cc
  ${CMAKE_CURRENT_LIST_DIR}/progress.cc
  ${CMAKE_CURRENT_LIST_DIR}/long_generator.cc)
target_link_libraries(mesa_jobs PUBLIC absl::flat_hash_map absl::flat_hash_set)

if(MESA_BUILD_TESTS)
  mesa_test(jobs_test ${CMAKE_CURRENT_LIST_DIR}/job_format_test.cc
                      ${CMAKE_CURRENT_LIST_DIR}/templates_test.cc
                      ${CMAKE_CURRENT_LIST_DIR}/batch_runner_test.cc LIBS mesa_jobs GTest::gmock)
  # End to end on the shared stories260K model (skips without ../shared).
  mesa_test(batch_run_model_test ${CMAKE_CURRENT_LIST_DIR}/batch_run_model_test.cc LIBS mesa_jobs)
endif()
