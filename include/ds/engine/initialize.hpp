#pragma once
/// @file
/// `ds::initialize`: the engine, its optimizer, the training loader and the schedule,
/// like `deepspeed.initialize`; and `ds::EngineFor`, the engine a constexpr config selects.

#include <cstdint>
#include <memory>

#include <ds/config/config.hpp>
#include <ds/data/data_loader.hpp>
#include <ds/data/dataset.hpp>
#include <ds/data/distributed_sampler.hpp>
#include <ds/engine/engine.hpp>
#include <ds/policy/policies_for.hpp>

namespace ds {

/// The engine `cfg` selects for `Model` on `Device`: `Engine<Model, Adam<...>, Zero<S>, P, Device>`.
template <class Model, Config C, device_policy Device = Cpu>
using EngineFor = Engine<Model, typename PoliciesFor<C, Device>::optimizer_policy,
                         typename PoliciesFor<C, Device>::zero_policy,
                         typename PoliciesFor<C, Device>::precision_policy, Device>;

/// What `ds::initialize` returns; bind it as `auto [engine, optimizer, loader, scheduler]`.
template <class E, data::dataset D>
struct Initialized {
    std::unique_ptr<E> engine;
    typename E::optimizer_type* optimizer;                 ///< owned by the engine
    std::unique_ptr<data::DataLoader<D>> training_dataloader;
    sched::LRScheduler* lr_scheduler;                      ///< owned by the engine
};

/// Options of `initialize` that DeepSpeed takes from elsewhere.
struct InitializeOptions {
    bool shuffle = true;  ///< false keeps the data's file order (the example's --no-shuffle)
};

/// Builds engine `E` (over `comm`, a world of one by default) from `cfg` and a loader over
/// `training_data` that yields
/// `train_micro_batch_size_per_gpu` samples per batch from this rank's `DistributedSampler`
/// share, reshuffled each epoch from `cfg.seed` (SPEC §9).
template <class E, data::dataset D>
Initialized<E, D> initialize(const Config& cfg, const D& training_data, InitializeOptions options = {},
                             typename E::communicator_type comm = {}) {
    auto engine = std::make_unique<E>(cfg, std::move(comm));
    data::DistributedSampler sampler(training_data.size(), static_cast<std::size_t>(engine->world_size()),
                                     static_cast<std::size_t>(engine->global_rank()), options.shuffle,
                                     static_cast<std::uint64_t>(cfg.seed));
    auto loader = std::make_unique<data::DataLoader<D>>(
        training_data, sampler, static_cast<std::size_t>(engine->train_micro_batch_size_per_gpu()),
        cfg.dataloader_drop_last);
    auto* optimizer = &engine->optimizer();
    auto* scheduler = &engine->lr_scheduler();
    return {std::move(engine), optimizer, std::move(loader), scheduler};
}

}  // namespace ds
