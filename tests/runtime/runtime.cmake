# The distributed runtime in one process: a real coordinator gRPC server and real
# worker gRPC servers on loopback, driven through raw stubs and mesa::client. Included
# from tests/CMakeLists.txt; CMAKE_CURRENT_LIST_DIR is this file's folder (tests/runtime).
mesa_test(coordinator_rpc_test ${CMAKE_CURRENT_LIST_DIR}/coordinator_rpc_test.cc
          LIBS mesa_coordinator_rpc mesa_client LABELS runtime)
# TLS, mutual TLS, bearer tokens and health ports (certificates made by
# scripts/make_test_certs.sh at test time).
mesa_test(security_test ${CMAKE_CURRENT_LIST_DIR}/security_test.cc
          LIBS mesa_coordinator_rpc mesa_client LABELS runtime)
target_compile_definitions(security_test PRIVATE MESA_SOURCE_DIR="${CMAKE_SOURCE_DIR}")

# `mesa cluster` under a real mpirun (OpenMPI, loopback, 3 ranks on 2 cores): records
# equal to `mesa run`'s, a killed rank, rank 0 killed and resumed, serving, usage errors.
# Skips visibly without mpirun or without MPI in the build.
foreach(scenario equal kill_rank resume serve secure usage)
  add_test(NAME mpi_${scenario}
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/mpi_test.sh $<TARGET_FILE:mesa> ${MESA_SHARED_DIR} ${scenario})
  set_tests_properties(mpi_${scenario} PROPERTIES LABELS runtime SKIP_RETURN_CODE 77 TIMEOUT 600)
endforeach()
# deploy/slurm/mesa.sbatch on a one-node Slurm cluster (slurmctld, slurmd, munged) brought
# up inside the test, as root; skips visibly where it cannot run.
add_test(NAME slurm_sbatch
         COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/slurm_test.sh $<TARGET_FILE:mesa> ${MESA_SHARED_DIR})
set_tests_properties(slurm_sbatch PROPERTIES LABELS runtime SKIP_RETURN_CODE 77 TIMEOUT 600 RUN_SERIAL TRUE)
