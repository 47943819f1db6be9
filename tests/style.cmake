# House-style checks that are cheap enough to run with every test run.
add_test(NAME style.banned-functions
  COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/harness/check-banned)
set_tests_properties(style.banned-functions PROPERTIES LABELS unit TIMEOUT 60)
