# mesa_testing: helpers shared by tests and benchmarks (random-weight GGUF models),
# and the mesa_make_random_model tool. Included from tests/CMakeLists.txt.
add_library(mesa_testing STATIC ${CMAKE_CURRENT_LIST_DIR}/random_model.cc)
# Random weight matrices in any type (kernel tests); the benchmarks build their own copy
# of the source so they do not depend on the test tree.
add_library(mesa_random_weights STATIC ${CMAKE_CURRENT_LIST_DIR}/random_weights.cc)
target_link_libraries(mesa_random_weights PUBLIC mesa_kernels)
target_link_libraries(mesa_testing PUBLIC mesa_engine)
add_executable(mesa_make_random_model ${CMAKE_CURRENT_LIST_DIR}/make_random_model.cc)
target_link_libraries(mesa_make_random_model PRIVATE mesa_testing CLI11::CLI11)
if(MESA_BUILD_TESTS)
  # bf16 / q8_0 / q4_k random models (the GPU benchmarks' synthetic Llama-3-8B shape).
  mesa_test(random_model_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/random_model_test.cc
            LIBS mesa_testing mesa_engine)
endif()
