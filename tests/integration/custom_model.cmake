# Runs examples/custom_model (COMMAND, a ;-list) and checks its --metrics-json: the world
# size it ran on (WORLD), ZeRO stage 3, and a loss that fell from chance (ln 4 = 1.39) to
# below 0.9 (every seed tried ends below 0.65).
include(${CMAKE_CURRENT_LIST_DIR}/metrics.cmake)
run_for_metrics("custom_model" "${METRICS}" json ${COMMAND})
string(JSON world GET "${json}" world_size)
string(JSON stage GET "${json}" zero_stage)
string(JSON first GET "${json}" first_loss)
string(JSON final GET "${json}" final_loss)
if(NOT world EQUAL WORLD OR NOT stage EQUAL 3)
  message(FATAL_ERROR "custom_model ran on ${world} ranks at stage ${stage}, expected ${WORLD} at 3:\n${json}")
endif()
if(NOT first GREATER 1.2 OR NOT final LESS 0.9)
  message(FATAL_ERROR "custom_model's loss went from ${first} to ${final}: expected from above 1.2 to below 0.9")
endif()
message(STATUS "custom_model on ${world} ranks: loss ${first} -> ${final}")
