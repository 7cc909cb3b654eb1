# Trains the runs named in RUNS (each -D<name>=command;args..., given --metrics-json
# WORK_DIR/<name>.json) and requires every run's test accuracy within MAX_GAP_X100
# hundredths of a point of the first run's (the reference, same seed).

include(${CMAKE_CURRENT_LIST_DIR}/metrics.cmake)

# CMake's math is integer-only: "86.79" -> 8679.
function(to_hundredths value out)
  string(REGEX MATCH "^([0-9]+)(\\.([0-9]*))?" _ "${value}")
  set(whole "${CMAKE_MATCH_1}")
  set(frac "${CMAKE_MATCH_3}00")
  string(SUBSTRING "${frac}" 0 2 frac)
  string(REGEX REPLACE "^0" "" frac "${frac}")
  if(frac STREQUAL "")
    set(frac 0)
  endif()
  math(EXPR result "${whole} * 100 + ${frac}")
  set(${out} ${result} PARENT_SCOPE)
endfunction()

file(MAKE_DIRECTORY "${WORK_DIR}")
list(GET RUNS 0 reference)
foreach(run IN LISTS RUNS)
  run_for_metrics("${run}" "${WORK_DIR}/${run}.json" json ${${run}})
  string(JSON accuracy_${run} GET "${json}" test_accuracy)
  string(JSON skipped GET "${json}" skipped_steps)
  string(JSON ranks GET "${json}" world_size)
  string(JSON all_to_all GET "${json}" comm_elements_per_step all_to_all)
  message(STATUS "${run}: test accuracy ${accuracy_${run}} % on ${ranks} rank(s); skipped steps ${skipped}; "
                 "all-to-all elements per step ${all_to_all}")
  to_hundredths("${accuracy_${run}}" x100_${run})
endforeach()
foreach(run IN LISTS RUNS)
  math(EXPR gap "${x100_${reference}} - ${x100_${run}}")
  if(gap LESS 0)
    math(EXPR gap "0 - ${gap}")
  endif()
  if(gap GREATER MAX_GAP_X100)
    message(FATAL_ERROR "${run}: test accuracy ${accuracy_${run}} % is more than ${MAX_GAP_X100}/100 points "
                        "from ${reference}'s ${accuracy_${reference}} % with the same seed")
  endif()
endforeach()
