# Driver of the bench.quick test (tests/bench.cmake): run the benchmark in
# quick JSON mode, then hand its stdout to the checker. A script, because
# CTest cannot pipe one command into another portably.
execute_process(
  COMMAND ${BENCH} --quick --json --quiet --python ${PYTHON}
  OUTPUT_FILE ${OUT}
  RESULT_VARIABLE bench_rc
  TIMEOUT 240)
if(NOT bench_rc EQUAL 0)
  message(FATAL_ERROR "biomatch-bench --quick --json failed: ${bench_rc}")
endif()
execute_process(
  COMMAND ${PYTHON} ${CHECKER} ${OUT}
  RESULT_VARIABLE check_rc
  TIMEOUT 60)
if(NOT check_rc EQUAL 0)
  message(FATAL_ERROR "bench JSON check failed (${OUT})")
endif()
