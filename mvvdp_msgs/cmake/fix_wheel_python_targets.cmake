# Included before project() through -DCMAKE_PROJECT_INCLUDE when building against the ROS 2 wheels.
# The wheels export *__rosidl_generator_py targets whose include directories point at the wheel builder's
# Python (/opt/python/...). Once the project's packages are found, replace those paths with this
# interpreter's Python and numpy include directories so the generated C extension compiles.
function(mvvdp_fix_wheel_python_targets)
  if(NOT DEFINED MVVDP_PYTHON_INCLUDE_DIRS)
    execute_process(
      COMMAND "${Python3_EXECUTABLE}" -c
        "import sysconfig, numpy; print(sysconfig.get_paths()['include'] + ';' + numpy.get_include())"
      OUTPUT_VARIABLE _includes OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _rc)
    if(NOT _rc EQUAL 0)
      message(FATAL_ERROR "cannot query Python/numpy include directories from ${Python3_EXECUTABLE}")
    endif()
    set(MVVDP_PYTHON_INCLUDE_DIRS "${_includes}" CACHE INTERNAL "")
  endif()
  get_property(_targets DIRECTORY "${CMAKE_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  foreach(_target IN LISTS _targets)
    if(_target MATCHES "__rosidl_generator_py$")
      get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
      if(_dirs MATCHES "/opt/python/")
        list(FILTER _dirs EXCLUDE REGEX "^/opt/python/")
        list(APPEND _dirs ${MVVDP_PYTHON_INCLUDE_DIRS})
        set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_dirs}")
      endif()
    endif()
  endforeach()
endfunction()

# Imported targets appear as find_package() runs inside rosidl_generate_interfaces; fix them when the
# generator starts using them, i.e. right before the project's directory is finished being configured.
cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL mvvdp_fix_wheel_python_targets)
