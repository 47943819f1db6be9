# Tests on a replicated Kafka: a 3-broker KRaft cluster (replication factor
# 3, min.insync.replicas 2, unclean leader election off) and its own Redis,
# started once by the bm_services3 fixture in build/services3 and used only
# by the tests below, which kill and restart its nodes. Labels 'fault' and
# 'integration'.
#
#  fault.failover  tests/fault/matrix with two faults: SIGKILL of the broker
#                  leading the jobs partition (and its restart), and two
#                  brokers down (NOT_ENOUGH_REPLICAS / no leader) for 20 s,
#                  while face and iris jobs flow through a coordinator and
#                  three workers; every answer checked, nothing lost. Also
#                  checks that topics get their replication factor and
#                  min.insync.replicas from the configuration.
#  fault.matrix    every fault and poison kind (tests/fault/matrix --help),
#                  CI size, in every run (-DBM_FAULT_MATRIX=OFF leaves it
#                  out); the full size is `tests/fault/matrix --full`.
set(BM_SERVICES3_DIR ${CMAKE_BINARY_DIR}/services3)
if(TARGET biomatch_cli AND TARGET biomatch-coordinator AND TARGET biomatch-worker-fault)
  if(BM_PYTHON)
    set(_bm_fault_python ${BM_PYTHON})
  else()
    find_program(_bm_fault_python python3)
  endif()
  option(BM_FAULT_MATRIX "register fault.matrix (every fault and poison kind) with ctest" ON)

  add_test(NAME services3.start
    COMMAND ${CMAKE_SOURCE_DIR}/scripts/services start --dir ${BM_SERVICES3_DIR} --brokers 3)
  set_tests_properties(services3.start PROPERTIES
    FIXTURES_SETUP bm_services3 LABELS "integration;fault" TIMEOUT 400)
  add_test(NAME services3.stop
    COMMAND ${CMAKE_SOURCE_DIR}/scripts/services stop --dir ${BM_SERVICES3_DIR})
  set_tests_properties(services3.stop PROPERTIES
    FIXTURES_CLEANUP bm_services3 LABELS "integration;fault" TIMEOUT 120)

  set(_bm_matrix ${_bm_fault_python} ${CMAKE_CURRENT_SOURCE_DIR}/fault/matrix
      --bin $<TARGET_FILE_DIR:biomatch_cli> --proto ${CMAKE_SOURCE_DIR}/proto/biomatch.proto
      --worker $<TARGET_FILE:biomatch-worker-fault>
      --services ${BM_SERVICES3_DIR})
  add_test(NAME fault.failover
    COMMAND ${_bm_matrix} --workdir ${CMAKE_CURRENT_BINARY_DIR}/fault-failover
            --faults broker_kill,min_isr --poison none --jobs 120)
  set_tests_properties(fault.failover PROPERTIES
    LABELS "integration;fault" FIXTURES_REQUIRED bm_services3
    RESOURCE_LOCK bm_services3 TIMEOUT 900)
  if(BM_FAULT_MATRIX)
    add_test(NAME fault.matrix
      COMMAND ${_bm_matrix} --workdir ${CMAKE_CURRENT_BINARY_DIR}/fault-matrix)
    set_tests_properties(fault.matrix PROPERTIES
      LABELS "integration;fault" FIXTURES_REQUIRED bm_services3
      RESOURCE_LOCK bm_services3 TIMEOUT 1500)
  endif()
endif()
