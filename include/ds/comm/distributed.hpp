#pragma once
/// @file
/// Where this process sits in the job, and the process groups built from a communicator.

#include <cstdlib>
#include <stdexcept>
#include <string>
#include <utility>

#include <ds/comm/communicator.hpp>

namespace ds::comm {

/// Rank, world size and node-local rank of this process.
struct DistributedEnv {
    int rank = 0;
    int world_size = 1;
    int local_rank = 0;
    int local_world_size = 1;  ///< processes of this job on this machine
};

namespace detail {
inline int env_int(const char* name, int fallback) {
    const char* text = std::getenv(name);
    if (!text || !*text) return fallback;
    char* end = nullptr;
    const long v = std::strtol(text, &end, 10);
    if (*end != '\0' || v < 0) throw std::invalid_argument(std::string(name) + "=" + text + " is not a rank number");
    return static_cast<int>(v);
}
}  // namespace detail

/// `ds::init_distributed`'s answer: `RANK` / `WORLD_SIZE` / `LOCAL_RANK` when set (as
/// torchrun and DeepSpeed's launcher set them), else OpenMPI's `OMPI_COMM_WORLD_RANK` /
/// `_SIZE` / `_LOCAL_RANK` / `_LOCAL_SIZE` (as `mpirun` sets them), else a world of one;
/// `LOCAL_WORLD_SIZE` as torchrun sets it.
/// @throws std::invalid_argument when a variable is not a number or the rank is out of range
inline DistributedEnv init_distributed() {
    DistributedEnv env;
    env.rank = detail::env_int("OMPI_COMM_WORLD_RANK", 0);
    env.world_size = detail::env_int("OMPI_COMM_WORLD_SIZE", 1);
    env.local_rank = detail::env_int("OMPI_COMM_WORLD_LOCAL_RANK", env.rank);
    env.rank = detail::env_int("RANK", env.rank);
    env.world_size = detail::env_int("WORLD_SIZE", env.world_size);
    env.local_rank = detail::env_int("LOCAL_RANK", env.local_rank);
    env.local_world_size = detail::env_int("OMPI_COMM_WORLD_LOCAL_SIZE", env.world_size);
    env.local_world_size = detail::env_int("LOCAL_WORLD_SIZE", env.local_world_size);
    if (env.world_size < 1 || env.rank >= env.world_size)
        throw std::invalid_argument("rank " + std::to_string(env.rank) + " is not in a world of " +
                                    std::to_string(env.world_size));
    return env;
}

/// The example's pattern: rank 0 does `work` (say, preparing the data) while the others
/// wait at a barrier, then the others do it.
template <communicator C, class Work>
void rank_zero_first(C& comm, Work&& work) {
    if (comm.rank() == 0) work();
    comm.barrier();
    if (comm.rank() != 0) work();
}

/// DeepSpeed's expert and data parallel groups (E+D topology, SPEC §10).
template <communicator C>
struct ExpertGroups {
    C expert_parallel;       ///< blocked: ranks [i·ep, (i+1)·ep)
    C expert_data_parallel;  ///< strided: {j, j + ep, j + 2·ep, ...}
};

/// The expert-parallel group of this rank: `world` split into blocks of `ep_size`
/// consecutive ranks. Collective over `world`.
/// @throws std::invalid_argument unless the world size is a multiple of ep_size
template <communicator C>
C expert_parallel_group(C& world, int ep_size) {
    if (ep_size < 1 || world.size() % ep_size != 0)
        throw std::invalid_argument("expert parallel size " + std::to_string(ep_size) +
                                    " does not divide the world size " + std::to_string(world.size()));
    return world.split(world.rank() / ep_size, world.rank());
}

/// The expert-data-parallel group of this rank: the ranks holding the same experts,
/// {j, j + ep, j + 2·ep, ...}. Collective over `world`.
/// @throws std::invalid_argument unless the world size is a multiple of ep_size
template <communicator C>
C expert_data_parallel_group(C& world, int ep_size) {
    if (ep_size < 1 || world.size() % ep_size != 0)
        throw std::invalid_argument("expert parallel size " + std::to_string(ep_size) +
                                    " does not divide the world size " + std::to_string(world.size()));
    return world.split(world.rank() % ep_size, world.rank());
}

/// Splits `world` into expert-parallel groups of `ep_size` consecutive ranks and the
/// strided expert-data-parallel groups across them. Collective over `world`.
/// @throws std::invalid_argument unless the world size is a multiple of ep_size
template <communicator C>
ExpertGroups<C> expert_groups(C& world, int ep_size) {
    C blocked = expert_parallel_group(world, ep_size);
    C strided = expert_data_parallel_group(world, ep_size);
    return {std::move(blocked), std::move(strided)};
}

}  // namespace ds::comm
