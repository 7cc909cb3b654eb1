# Header-only dependencies of dspp::dspp, as imported targets. Used by the build and by
# installed copies (dsppConfig.cmake). Searched in the system paths, CMAKE_PREFIX_PATH and
# DSPP_DEPS_DIR (a folder with boost/, nlohmann/, doctest/ for machines without packages).
include_guard(GLOBAL)

set(_dspp_dep_hints ${DSPP_DEPS_DIR} $ENV{DSPP_DEPS_DIR})

function(_dspp_header_target target header what)
  if(TARGET ${target})
    return()
  endif()
  string(MAKE_C_IDENTIFIER "DSPP_${header}_DIR" var)
  string(TOUPPER "${var}" var)
  find_path(${var} ${header} HINTS ${_dspp_dep_hints} PATH_SUFFIXES include)
  if(NOT ${var})
    message(FATAL_ERROR "dspp: ${header} not found. Install ${what}, or put it under DSPP_DEPS_DIR.")
  endif()
  add_library(${target} INTERFACE IMPORTED GLOBAL)
  set_target_properties(${target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${${var}}")
endfunction()

_dspp_header_target(dspp::hana boost/hana.hpp "Boost.Hana (Debian: libboost-dev)")
_dspp_header_target(dspp::json nlohmann/json.hpp "nlohmann-json (Debian: nlohmann-json3-dev)")

# OpenBLAS for the CPU backend's GEMMs. Optional so that a GPU-only machine can build the
# CUDA parts; the CPU layers and examples need it.
if(NOT TARGET dspp::openblas)
  find_path(DSPP_CBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas x86_64-linux-gnu/openblas-pthread)
  find_library(DSPP_OPENBLAS_LIBRARY NAMES openblas openblasp)
  if(DSPP_CBLAS_INCLUDE_DIR AND DSPP_OPENBLAS_LIBRARY)
    add_library(dspp::openblas INTERFACE IMPORTED GLOBAL)
    set_target_properties(dspp::openblas PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${DSPP_CBLAS_INCLUDE_DIR}"
                                                    INTERFACE_LINK_LIBRARIES "${DSPP_OPENBLAS_LIBRARY}")
  endif()
endif()

# zlib reads gzip-compressed IDX files (Fashion-MNIST as Debian ships it).
if(NOT TARGET dspp::zlib)
  find_package(ZLIB QUIET)
  if(ZLIB_FOUND)
    add_library(dspp::zlib INTERFACE IMPORTED GLOBAL)
    set_target_properties(dspp::zlib PROPERTIES INTERFACE_LINK_LIBRARIES ZLIB::ZLIB)
  endif()
endif()

# MPI for the multi-rank communicator (ds/comm/mpi.hpp). Optional: without it (DSPP_MPI=OFF
# or not found) the in-process communicators still work.
if(NOT TARGET dspp::mpi AND (NOT DEFINED DSPP_MPI OR DSPP_MPI))
  find_package(MPI QUIET COMPONENTS CXX)
  if(MPI_CXX_FOUND)
    add_library(dspp::mpi INTERFACE IMPORTED GLOBAL)
    set_target_properties(dspp::mpi PROPERTIES INTERFACE_LINK_LIBRARIES MPI::MPI_CXX)
  endif()
endif()
