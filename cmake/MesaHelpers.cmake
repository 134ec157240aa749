# mesa_test(NAME SOURCES... [LIBS ...] [LABELS ...]): a GoogleTest binary registered with ctest.
# Tests get MESA_SHARED_DIR and MESA_LLAMACPP_DIR in their environment.
function(mesa_test name)
  cmake_parse_arguments(T "" "" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${T_SOURCES} ${T_UNPARSED_ARGUMENTS})
  target_link_libraries(${name} PRIVATE ${T_LIBS} GTest::gtest GTest::gtest_main)
  set(labels unit)
  if(T_LABELS)
    set(labels ${T_LABELS})
  endif()
  gtest_discover_tests(${name}
    PROPERTIES LABELS "${labels}"
               ENVIRONMENT "MESA_SHARED_DIR=${MESA_SHARED_DIR};MESA_LLAMACPP_DIR=${MESA_LLAMACPP_DIR};MESA_BINARY_DIR=${CMAKE_BINARY_DIR}"
               SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]"
    DISCOVERY_TIMEOUT 60)
endfunction()
