# biomatch-replay's integration test (tests/integration/test_replay.c) runs
# the real binary as a child process: it needs cJSON to read the --json
# output, the binary built first, and its path in BIOMATCH_REPLAY_BIN.
if(TARGET integration_test_replay)
  target_link_libraries(integration_test_replay PRIVATE PkgConfig::CJSON)
  if(TARGET biomatch-replay)
    add_dependencies(integration_test_replay biomatch-replay)
    set_tests_properties(integration.test_replay PROPERTIES
      ENVIRONMENT BIOMATCH_REPLAY_BIN=$<TARGET_FILE:biomatch-replay>)
  endif()
endif()

# integration.replay_e2e: biomatch-replay against the real pipeline (a
# coordinator and a worker on the fixture's broker and Redis) through
# bench/e2e's bounded --rates mode; tests/harness/replay-e2e checks that the
# JSON line parses and every job is accounted for, never a speed figure.
if(TARGET biomatch-replay AND TARGET biomatch AND TARGET biomatch-coordinator
   AND TARGET biomatch-worker)
  add_test(NAME integration.replay_e2e
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/harness/with-services ${BM_SERVICES_DIR}
            ${CMAKE_CURRENT_SOURCE_DIR}/harness/replay-e2e
            $<TARGET_FILE_DIR:biomatch-replay>)
  set_tests_properties(integration.replay_e2e PROPERTIES
    LABELS integration FIXTURES_REQUIRED bm_services TIMEOUT 300)
endif()
