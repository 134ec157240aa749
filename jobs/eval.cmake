# Evaluations behind `mesa eval`: perplexity against length and passkey retrieval.
target_sources(mesa_jobs PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/eval_common.cc
  ${CMAKE_CURRENT_LIST_DIR}/eval_ppl.cc
  ${CMAKE_CURRENT_LIST_DIR}/eval_passkey.cc)

if(MESA_BUILD_TESTS)
  mesa_test(eval_test ${CMAKE_CURRENT_LIST_DIR}/eval_test.cc LIBS mesa_jobs)
  mesa_test(eval_model_test ${CMAKE_CURRENT_LIST_DIR}/eval_model_test.cc LIBS mesa_jobs)
endif()
