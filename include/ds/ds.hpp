#pragma once
/// @file
/// The whole public API of dspp.

#include <ds/config/check.hpp>
#include <ds/config/check_result.hpp>
#include <ds/config/config.hpp>
#include <ds/config/enums.hpp>
#include <ds/config/json.hpp>
#include <ds/config/maybe.hpp>
#include <ds/config/print.hpp>
#include <ds/config/reflect.hpp>
#include <ds/numeric/bf16.hpp>
#include <ds/numeric/bit_cast.hpp>
#include <ds/numeric/half.hpp>
#include <ds/optim/adam.hpp>
#include <ds/optim/loss_scaler.hpp>
#include <ds/optim/optimizer.hpp>
#include <ds/policy/device.hpp>
#include <ds/policy/policies_for.hpp>
#include <ds/policy/precision.hpp>
#include <ds/policy/zero.hpp>
#include <ds/sched/lr_scheduler.hpp>
#include <ds/sched/one_cycle.hpp>
#include <ds/sched/warmup.hpp>
#include <ds/sched/warmup_cosine.hpp>
#include <ds/util/host_device.hpp>
