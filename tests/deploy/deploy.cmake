# Static checks of deploy/ (container files, Kubernetes manifests) against the built
# binary: its `--help` flags and its `ldd` libraries. Included from tests/CMakeLists.txt.
add_test(NAME deploy_manifests
         COMMAND python3 ${CMAKE_CURRENT_LIST_DIR}/deploy_test.py --mesa $<TARGET_FILE:mesa>
                 --build-dir ${CMAKE_BINARY_DIR} --source ${CMAKE_SOURCE_DIR})
set_tests_properties(deploy_manifests PROPERTIES LABELS deploy TIMEOUT 300)
