# bench.quick: biomatch-bench --quick --json must run and print one JSON
# object with the documented keys (bench/check_bench_json.py). It never looks
# at a speed figure: only that the figures exist and have the right types.
# The interpreter is BM_PYTHON (scripts/test passes the virtualenv that has
# faiss-cpu) or any python3; without FAISS the run still passes, with the
# FAISS figures null.
if(TARGET biomatch-bench)
  if(BM_PYTHON)
    set(BM_PYTHON3 ${BM_PYTHON})
  else()
    find_program(BM_PYTHON3 python3)
  endif()
  if(BM_PYTHON3)
    add_test(NAME bench.quick
      COMMAND ${CMAKE_COMMAND}
        -DBENCH=$<TARGET_FILE:biomatch-bench>
        -DPYTHON=${BM_PYTHON3}
        -DCHECKER=${CMAKE_SOURCE_DIR}/bench/check_bench_json.py
        -DOUT=${CMAKE_CURRENT_BINARY_DIR}/bench-quick.json
        -P ${CMAKE_SOURCE_DIR}/bench/run_quick.cmake)
    set_tests_properties(bench.quick PROPERTIES LABELS unit TIMEOUT 300)
  endif()
endif()
