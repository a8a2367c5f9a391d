# psrpcPackaging.cmake — CPack configuration of the C release artifacts
# (scripts/release.sh makes them; included by the top-level CMakeLists.txt).
#
#   cpack --config CPackSourceConfig.cmake   libpsrpc-VERSION.tar.gz: the source tree
#   cpack -G DEB                             libpsrpc0_VERSION_ARCH.deb   (component Runtime:
#                                              libpsrpc.so.0 and its real file)
#                                            libpsrpc-dev_VERSION_ARCH.deb (component Development:
#                                              psrpc.h, libpsrpc.so, libpsrpc.a, psrpc.pc, the
#                                              CMake package)
#
# Configure the tree for the .debs with -DCMAKE_INSTALL_PREFIX=/usr, so that
# GNUInstallDirs picks Debian's multiarch libdir (lib/x86_64-linux-gnu) and
# psrpc.pc says prefix=/usr.

set(CPACK_PACKAGE_NAME libpsrpc)
set(CPACK_PACKAGE_VENDOR "libpsrpc")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "libpsrpc maintainers <libpsrpc@users.noreply.github.com>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "protobuf RPC over Redis/NATS pub/sub, wire compatible with livekit/psrpc")
set(CPACK_PACKAGE_DESCRIPTION
    "libpsrpc is a C library for protobuf RPC over pub/sub (Redis, NATS or an
in-process bus) that speaks the wire protocol of livekit/psrpc v0.8.2: unary,
multi and affinity-routed requests, topics, streams, deadlines and psrpc's
error codes, behind one header with a stable C ABI.")
# (The bindings' copies of the C sources, csrc/, have no README.md.)
if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/README.md)
  set(CPACK_RESOURCE_FILE_README ${CMAKE_CURRENT_SOURCE_DIR}/README.md)
endif()

# --- Debian packages ------------------------------------------------------------
set(CPACK_GENERATOR DEB)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL Runtime Development)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
# Install with DESTDIR, so that CMAKE_INSTALL_PREFIX (and with it the prefix
# written into psrpc.pc and the CMake package) is the real one, /usr.
set(CPACK_SET_DESTDIR ON)
set(CPACK_PACKAGING_INSTALL_PREFIX ${CMAKE_INSTALL_PREFIX})
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://github.com/livekit/psrpc")

set(CPACK_COMPONENT_RUNTIME_DISPLAY_NAME "libpsrpc shared library")
set(CPACK_COMPONENT_RUNTIME_DESCRIPTION "${CPACK_PACKAGE_DESCRIPTION}
This package holds the shared library libpsrpc.so.${PROJECT_VERSION_MAJOR}.")
set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME libpsrpc${PROJECT_VERSION_MAJOR})
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SECTION libs)
# Depends: from dpkg-shlibdeps over libpsrpc.so.0 (libc6, libuv1, libhiredis,
# libnats, libprotobuf-c, libssl, zlib1g at the versions it was linked with).
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SHLIBDEPS ON)
# shlibs control file and the ldconfig trigger.
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS_POLICY ">=")

set(CPACK_COMPONENT_DEVELOPMENT_DISPLAY_NAME "libpsrpc development files")
set(CPACK_COMPONENT_DEVELOPMENT_DESCRIPTION "${CPACK_PACKAGE_DESCRIPTION}
This package holds the header psrpc.h, the static library, psrpc.pc for
pkg-config and the CMake package (find_package(psrpc)).")
set(CPACK_DEBIAN_DEVELOPMENT_PACKAGE_NAME libpsrpc-dev)
set(CPACK_DEBIAN_DEVELOPMENT_PACKAGE_SECTION libdevel)
# The header needs nothing, but psrpc.pc's Requires.private, the static
# library and psrpc::psrpc_static need the dependencies' development files.
set(_psrpc_dev_depends
    "libpsrpc${PROJECT_VERSION_MAJOR} (= ${PROJECT_VERSION})" libuv1-dev libprotobuf-c-dev
    zlib1g-dev libssl-dev)
if(PSRPC_WITH_REDIS)
  list(APPEND _psrpc_dev_depends libhiredis-dev)
endif()
if(PSRPC_WITH_NATS)
  list(APPEND _psrpc_dev_depends libnats-dev)
endif()
list(JOIN _psrpc_dev_depends ", " CPACK_DEBIAN_DEVELOPMENT_PACKAGE_DEPENDS)
set(CPACK_DEBIAN_DEVELOPMENT_PACKAGE_RECOMMENDS pkg-config)

# --- source tarball --------------------------------------------------------------
# The tree as git has it: no build trees, dependencies or generated files.
set(CPACK_SOURCE_GENERATOR TGZ)
set(CPACK_SOURCE_PACKAGE_FILE_NAME libpsrpc-${PROJECT_VERSION})
set(CPACK_SOURCE_IGNORE_FILES
    "/\\\\.git$" "/\\\\.git/" "/build[^/]*/" "/dist/" "/node_modules/" "/target/"
    "/target-asan/" "/csrc/" "/gen/" "/__pycache__/" "\\\\.pyc$" "\\\\.so$" "\\\\.tgz$"
    "\\\\.egg-info/" "/\\\\.pytest_cache/" "/\\\\.venv/" "/tests/_generated/"
    "/src/psrpc/_core\\\\.py$" "/Cargo\\\\.lock\\\\.bak$" "~$" "/\\\\.#")

include(CPack)
