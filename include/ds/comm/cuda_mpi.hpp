#pragma once
/// @file
/// `ds::comm::CudaMpi`: device buffers over MPI, staged through pinned host memory
/// (`CudaStaged`): several GPU ranks can share one card, where NCCL refuses that.

#include <ds/comm/cuda_staged.hpp>
#include <ds/comm/mpi.hpp>

namespace ds::comm {

using CudaMpi = CudaStaged<Mpi>;
static_assert(communicator<CudaMpi>);

}  // namespace ds::comm
