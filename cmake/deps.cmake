# Every dependency is a Debian bookworm package found through pkg-config
# (scripts/setup installs them). Each becomes an imported target PkgConfig::X.
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)
pkg_check_modules(RDKAFKA    REQUIRED IMPORTED_TARGET rdkafka>=2.0)
pkg_check_modules(HIREDIS    REQUIRED IMPORTED_TARGET hiredis>=0.14)
pkg_check_modules(PROTOBUFC  REQUIRED IMPORTED_TARGET libprotobuf-c>=1.4)
pkg_check_modules(OPENSSL    REQUIRED IMPORTED_TARGET openssl>=3.0)
pkg_check_modules(MHD        REQUIRED IMPORTED_TARGET libmicrohttpd)
pkg_check_modules(YAML       REQUIRED IMPORTED_TARGET yaml-0.1)
pkg_check_modules(CJSON      REQUIRED IMPORTED_TARGET libcjson)
pkg_check_modules(CMOCKA     REQUIRED IMPORTED_TARGET cmocka)
find_program(PROTOC_C protoc-c REQUIRED)
