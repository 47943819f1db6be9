# The house warnings (CONTRIBUTING.md) for our own code. Generated protobuf
# code is compiled without them: it is not ours to fix.
set(BM_WARNINGS
  -Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes -Wmissing-prototypes
  -Wwrite-strings -Wvla -Wformat=2)
if(BM_WERROR)
  list(APPEND BM_WARNINGS -Werror)
endif()

# POSIX.1-2008 plus the common BSD/SVID extensions (MAP_ANONYMOUS, endian.h).
add_compile_definitions(_DEFAULT_SOURCE)

# The libFuzzer build (tests/fuzz, scripts/fuzz): every library gets
# coverage instrumentation so the fuzzer sees inside the parsers, and
# ASan+UBSan unless another sanitizer set is asked for.
if(BM_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "BM_FUZZ=ON needs clang (configure with CC=clang)")
  endif()
  if(NOT BM_SANITIZE)
    set(BM_SANITIZE address,undefined)
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link)
endif()

if(BM_SANITIZE)
  string(REPLACE "," ";" _bm_san "${BM_SANITIZE}")
  if("thread" IN_LIST _bm_san AND ("address" IN_LIST _bm_san))
    message(FATAL_ERROR "BM_SANITIZE: thread cannot be combined with address")
  endif()
  add_compile_options(-fsanitize=${BM_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${BM_SANITIZE})
endif()

# bm_target_warnings(target): apply the house warnings to one of our targets.
function(bm_target_warnings target)
  target_compile_options(${target} PRIVATE ${BM_WARNINGS})
endfunction()
