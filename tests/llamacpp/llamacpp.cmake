# The llama.cpp reference (tests/llamacpp): mesa_llama_ref, a small driver over
# llama.cpp's C API linked to the prebuilt npm libraries, and reference_test,
# which compares `mesa` against it. Included from tests/CMakeLists.txt.
#
# mesa_llama_ref exists only when scripts/setup_reference.sh has filled
# MESA_LLAMACPP_DIR (headers in src/, libraries in lib/) before configuring;
# reference_test is always built and skips with a message without it.

set(_mesa_llama_dir "${MESA_LLAMACPP_DIR}")
set(_mesa_llama_lib "${_mesa_llama_dir}/lib")
set(MESA_LLAMACPP_FOUND OFF)
if(EXISTS "${_mesa_llama_dir}/src/include/llama.h"
   AND EXISTS "${_mesa_llama_dir}/src/ggml/include/ggml.h"
   AND EXISTS "${_mesa_llama_lib}/libllama.v0.5.0.so"
   AND EXISTS "${_mesa_llama_lib}/libggml.v0.5.0.so"
   AND EXISTS "${_mesa_llama_lib}/libggml-base.so")
  set(MESA_LLAMACPP_FOUND ON)
endif()

set(_mesa_llamacpp_test_dir "${CMAKE_CURRENT_LIST_DIR}")

if(MESA_LLAMACPP_FOUND)
  message(STATUS "llama.cpp reference: ${_mesa_llama_dir} (building mesa_llama_ref)")
  foreach(_lib llama:libllama.v0.5.0.so ggml:libggml.v0.5.0.so ggml_base:libggml-base.so)
    string(REPLACE ":" ";" _pair "${_lib}")
    list(GET _pair 0 _name)
    list(GET _pair 1 _file)
    add_library(mesa_llamacpp_${_name} SHARED IMPORTED GLOBAL)
    set_target_properties(mesa_llamacpp_${_name} PROPERTIES
      IMPORTED_LOCATION "${_mesa_llama_lib}/${_file}"
      IMPORTED_SONAME "${_file}")
  endforeach()

  add_executable(mesa_llama_ref "${_mesa_llamacpp_test_dir}/llama_ref.cc")
  # llama.cpp's headers are third-party: no warnings from them.
  target_include_directories(mesa_llama_ref SYSTEM PRIVATE
    "${_mesa_llama_dir}/src/include" "${_mesa_llama_dir}/src/ggml/include")
  target_link_libraries(mesa_llama_ref PRIVATE
    mesa_llamacpp_llama mesa_llamacpp_ggml mesa_llamacpp_ggml_base ${CMAKE_DL_LIBS})
  target_compile_definitions(mesa_llama_ref PRIVATE
    MESA_LLAMACPP_LIB_DIR="${_mesa_llama_lib}")
  set_target_properties(mesa_llama_ref PROPERTIES
    RUNTIME_OUTPUT_DIRECTORY "${CMAKE_BINARY_DIR}/tests/llamacpp"
    BUILD_RPATH "${_mesa_llama_lib}"
    INSTALL_RPATH "${_mesa_llama_lib}")
else()
  message(STATUS "llama.cpp reference: absent in '${_mesa_llama_dir}' "
                 "(run scripts/setup_reference.sh and reconfigure); reference tests will skip")
endif()

mesa_test(reference_test
  SOURCES "${_mesa_llamacpp_test_dir}/reference_test.cc"
  LIBS nlohmann_json::nlohmann_json
  LABELS reference)
set_target_properties(reference_test PROPERTIES
  RUNTIME_OUTPUT_DIRECTORY "${CMAKE_BINARY_DIR}/tests/llamacpp")
if(MESA_LLAMACPP_FOUND)
  add_dependencies(reference_test mesa_llama_ref)
  target_compile_definitions(reference_test PRIVATE
    MESA_LLAMA_REF_PATH="$<TARGET_FILE:mesa_llama_ref>")
endif()
# The binaries under test may be defined after this file is read: hook them up
# once the including directory is fully processed.
function(_mesa_llamacpp_add_tool_deps)
  foreach(_tool mesa mesa_make_random_model)
    if(TARGET ${_tool})
      add_dependencies(reference_test ${_tool})
    endif()
  endforeach()
endfunction()
cmake_language(DEFER CALL _mesa_llamacpp_add_tool_deps)
