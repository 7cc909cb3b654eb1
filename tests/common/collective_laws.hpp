#pragma once
// Laws every communicator keeps, checked against closed forms: the same body runs on the
// threaded communicator (doctest, in-process) and on MPI (mpirun -np 2 / 4).
#include <cmath>
#include <cstdint>
#include <vector>

#include <doctest/doctest.h>

#include <ds/comm/communicator.hpp>
#include <ds/comm/distributed.hpp>

namespace laws {

/// A value no two (rank, index) pairs share, exactly representable in float.
inline float value(int rank, std::size_t i) { return static_cast<float>(rank * 1000 + static_cast<int>(i)) * 0.5f; }

template <class C>
void check_collectives(C& comm) {
    const int r = comm.rank(), n = comm.size();
    const std::size_t len = 10;

    // all_reduce (sum, max), in place.
    std::vector<float> buf(len);
    for (std::size_t i = 0; i < len; ++i) buf[i] = value(r, i);
    comm.all_reduce(buf.data(), len, ds::comm::ReduceOp::sum);
    for (std::size_t i = 0; i < len; ++i) {
        float expected = 0;
        for (int k = 0; k < n; ++k) expected += value(k, i);
        CHECK(buf[i] == expected);
    }
    std::vector<double> flags{static_cast<double>(r == n - 1 ? 7 : r)};
    comm.all_reduce(flags.data(), 1, ds::comm::ReduceOp::max);
    CHECK(flags[0] == (n == 1 ? 7.0 : std::max(7.0, n - 2.0)));

    // reduce_scatter: block r of the sum.
    std::vector<float> in(len * n), out(len);
    for (std::size_t i = 0; i < in.size(); ++i) in[i] = value(r, i);
    comm.reduce_scatter(in.data(), out.data(), len, ds::comm::ReduceOp::sum);
    for (std::size_t i = 0; i < len; ++i) {
        float expected = 0;
        for (int k = 0; k < n; ++k) expected += value(k, r * len + i);
        CHECK(out[i] == expected);
    }

    // reduce_scatter_v: rank k gets k + 1 values.
    std::vector<std::size_t> counts;
    std::size_t total = 0, offset = 0;
    for (int k = 0; k < n; ++k) {
        if (k == r) offset = total;
        counts.push_back(static_cast<std::size_t>(k) + 1);
        total += counts.back();
    }
    std::vector<float> v_in(total), v_out(counts[r]);
    for (std::size_t i = 0; i < total; ++i) v_in[i] = value(r, i);
    comm.reduce_scatter_v(v_in.data(), v_out.data(), std::span<const std::size_t>(counts), ds::comm::ReduceOp::sum);
    for (std::size_t i = 0; i < counts[r]; ++i) {
        float expected = 0;
        for (int k = 0; k < n; ++k) expected += value(k, offset + i);
        CHECK(v_out[i] == expected);
    }

    // all_gather, out of place and in place.
    std::vector<float> mine(len), gathered(len * n);
    for (std::size_t i = 0; i < len; ++i) mine[i] = value(r, i);
    comm.all_gather(mine.data(), gathered.data(), len);
    for (int k = 0; k < n; ++k)
        for (std::size_t i = 0; i < len; ++i) CHECK(gathered[k * len + i] == value(k, i));
    std::vector<float> in_place(len * n, -1.0f);
    std::copy(mine.begin(), mine.end(), in_place.begin() + r * len);
    comm.all_gather(in_place.data() + r * len, in_place.data(), len);
    CHECK(in_place == gathered);

    // broadcast from the last rank.
    std::vector<std::int32_t> ints(3, r);
    comm.broadcast(ints.data(), ints.size(), n - 1);
    CHECK(ints == std::vector<std::int32_t>(3, n - 1));

    // all_to_all: block k of rank r's input becomes block r of rank k's output.
    std::vector<float> send(2 * n), receive(2 * n);
    for (int k = 0; k < n; ++k) send[2 * k] = value(r, k), send[2 * k + 1] = -value(r, k);
    comm.all_to_all(send.data(), receive.data(), 2);
    for (int k = 0; k < n; ++k) {
        CHECK(receive[2 * k] == value(k, r));
        CHECK(receive[2 * k + 1] == -value(k, r));
    }

    // Asynchronous variants give the blocking results.
    for (std::size_t i = 0; i < len; ++i) buf[i] = value(r, i);
    auto pending = comm.all_reduce_async(buf.data(), len, ds::comm::ReduceOp::sum);
    pending.wait();
    float first = 0;
    for (int k = 0; k < n; ++k) first += value(k, 0);
    CHECK(buf[0] == first);
    auto gather = comm.all_gather_async(mine.data(), gathered.data(), len);
    gather.wait();
    CHECK(gathered[(n - 1) * len] == value(n - 1, 0));
    comm.barrier();

    // Counters, in the ZeRO paper's units.
    const auto& c = comm.counters();
    CHECK(c[ds::comm::Op::all_reduce] == 2 * len + 2 * 1 + 2 * len);
    CHECK(c[ds::comm::Op::reduce_scatter] == len * n + total);
    CHECK(c[ds::comm::Op::all_gather] == 3 * len * n);
    CHECK(c[ds::comm::Op::broadcast] == 3);
    CHECK(c[ds::comm::Op::all_to_all] == 2u * n);
}

/// Expert groups: blocked expert-parallel groups and strided expert-data-parallel ones.
template <class C>
void check_expert_groups(C& world, int ep_size) {
    auto groups = ds::comm::expert_groups(world, ep_size);
    const int r = world.rank();
    CHECK(groups.expert_parallel.size() == ep_size);
    CHECK(groups.expert_parallel.rank() == r % ep_size);
    CHECK(groups.expert_data_parallel.size() == world.size() / ep_size);
    CHECK(groups.expert_data_parallel.rank() == r / ep_size);
    // Sum of world ranks within each group identifies its members.
    std::vector<std::int32_t> v{r};
    groups.expert_parallel.all_reduce(v.data(), 1, ds::comm::ReduceOp::sum);
    const int block = r / ep_size * ep_size;
    CHECK(v[0] == ep_size * block + ep_size * (ep_size - 1) / 2);
    v[0] = r;
    groups.expert_data_parallel.all_reduce(v.data(), 1, ds::comm::ReduceOp::sum);
    int strided = 0;
    for (int k = r % ep_size; k < world.size(); k += ep_size) strided += k;
    CHECK(v[0] == strided);
}

}  // namespace laws
