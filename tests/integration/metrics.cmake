# run_for_metrics(<what> <metrics file> <out var> <command> [args...]): runs the command with
# `--metrics-json <metrics file>` appended, fails with its output on a non-zero exit, and
# sets <out var> to the metrics JSON. Included by the integration scripts.
function(run_for_metrics what metrics out)
  file(REMOVE "${metrics}")
  execute_process(COMMAND ${ARGN} --metrics-json "${metrics}"
                  RESULT_VARIABLE rc OUTPUT_VARIABLE stdout ERROR_VARIABLE stderr)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (exit code ${rc}):\n${stdout}\n${stderr}")
  endif()
  file(READ "${metrics}" json)
  set(${out} "${json}" PARENT_SCOPE)
endfunction()
