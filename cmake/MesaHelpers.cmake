# mesa_test(NAME SOURCES... [LIBS ...] [LABELS ...]): a GoogleTest binary registered with
# ctest (one ctest entry per test case). Tests see MESA_SHARED_DIR, MESA_LLAMACPP_DIR
# and MESA_BINARY_DIR in their environment (defaults compiled in; the caller's win).
function(mesa_test name)
  cmake_parse_arguments(T "" "" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${T_SOURCES} ${T_UNPARSED_ARGUMENTS} ${CMAKE_SOURCE_DIR}/cmake/test_env_init.cc)
  target_link_libraries(${name} PRIVATE ${T_LIBS} GTest::gtest GTest::gtest_main)
  target_compile_definitions(${name} PRIVATE
    MESA_TEST_SHARED_DIR="${MESA_SHARED_DIR}"
    MESA_TEST_LLAMACPP_DIR="${MESA_LLAMACPP_DIR}"
    MESA_TEST_BINARY_DIR="${CMAKE_BINARY_DIR}")
  set(labels unit)
  if(T_LABELS)
    set(labels ${T_LABELS})
  endif()
  gtest_discover_tests(${name}
    PROPERTIES LABELS "${labels}"
               SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]"
    DISCOVERY_TIMEOUT 60)
endfunction()
