target_sources(mesa_engine PRIVATE ${CMAKE_CURRENT_LIST_DIR}/tokenizer_factory.cc)
