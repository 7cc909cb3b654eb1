// The CPU reference run of tests/gpu/engine_mpi_gpu_test.cu: the CPU engine over comm::Mpi
// (see engine_reference.hpp).
#include "gpu/engine_reference.hpp"

#include <ds/comm/mpi.hpp>
#include <ds/engine/engine.hpp>

#include "cifar10/net.hpp"

TrainingRun train_on_cpu_mpi(int steps) {
    ds::comm::Mpi world;
    const int ranks = world.size();
    ds::Engine<cifar10::CifarNet, ds::Adam<>, ds::Zero<0>, ds::FP32, ds::Cpu, ds::comm::Mpi> engine(
        engine_test_config(ranks), std::move(world));
    return train_steps(engine, steps);
}
