# Deployment checks (issue 7), included by tests/CMakeLists.txt. All offline:
# scripts/setup-deploy-tools fetched kustomize, kubeconform and the schemas
# into $BIOMATCH_CACHE/deploy-tools beforehand; a missing cache is a failure,
# never a skip.
#
#   deploy.validate              render every kustomization, validate strictly
#   deploy.validate-negative     doctored copies must fail, naming the field
#   deploy.runtime-libs          the Dockerfile's runtime packages cover ldd of bin/
#   deploy.runtime-libs-negative the runtime check fails when a package is missing
#   deploy.check-config-flags    every container's command line, env and the
#                                rendered ConfigMap pass the binaries' --check-config
set(_deploy ${CMAKE_SOURCE_DIR}/deploy)

add_test(NAME deploy.validate COMMAND ${_deploy}/validate)
add_test(NAME deploy.validate-negative COMMAND ${_deploy}/validate-negative)
add_test(NAME deploy.runtime-libs
  COMMAND ${_deploy}/check-runtime-libs --bin-dir ${CMAKE_BINARY_DIR}/bin)
add_test(NAME deploy.runtime-libs-negative
  COMMAND ${_deploy}/check-runtime-libs-negative --bin-dir ${CMAKE_BINARY_DIR}/bin)

add_test(NAME deploy.check-config-flags
  COMMAND ${_deploy}/check-config-flags --bin-dir ${CMAKE_BINARY_DIR}/bin)

set_tests_properties(deploy.validate deploy.runtime-libs deploy.runtime-libs-negative
  deploy.check-config-flags
  PROPERTIES LABELS unit TIMEOUT 300)
# Renders the whole tree ten times.
set_tests_properties(deploy.validate-negative PROPERTIES LABELS unit TIMEOUT 600)
