# gadget's stand-in for CMake's FindBLAS, first on GGML's CMAKE_MODULE_PATH (setup.py's wrapper
# project): the OpenBLAS of the scipy-openblas32 wheel (the build numpy's and scipy's wheels use),
# whose symbols carry a scipy_ prefix (scipy_sgemm_, scipy_cblas_sgemm), which CMake's own module,
# probing for sgemm_, cannot find. GADGET_OPENBLAS_DIR: the wheel's package folder.
set(BLAS_LIBRARIES "${GADGET_OPENBLAS_DIR}/lib/libscipy_openblas.so")
set(BLAS_INCLUDE_DIRS "${GADGET_OPENBLAS_DIR}/include")
set(BLAS_LINKER_FLAGS "")
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(BLAS REQUIRED_VARS BLAS_LIBRARIES BLAS_INCLUDE_DIRS)
