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
