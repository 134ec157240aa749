# GGUF and safetensors readers, GGUF writer, model config and loaders, and their tests.
target_sources(mesa_engine PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/gguf.cc
  ${CMAKE_CURRENT_LIST_DIR}/gguf_writer.cc
  ${CMAKE_CURRENT_LIST_DIR}/safetensors.cc
  ${CMAKE_CURRENT_LIST_DIR}/model_config.cc
  ${CMAKE_CURRENT_LIST_DIR}/model_loader.cc
)
if(MESA_BUILD_TESTS)
  mesa_test(gguf_test ${CMAKE_CURRENT_LIST_DIR}/gguf_test.cc LIBS mesa_engine)
endif()
if(MESA_BUILD_TESTS)
  mesa_test(safetensors_test ${CMAKE_CURRENT_LIST_DIR}/safetensors_test.cc LIBS mesa_engine)
  # Uses the random-model library from tests/testing (defined later; linking by name is fine).
  mesa_test(model_loader_test ${CMAKE_CURRENT_LIST_DIR}/model_loader_test.cc LIBS mesa_engine mesa_testing)
endif()
