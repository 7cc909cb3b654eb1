#pragma once
/// @file
/// `ds::cpu::HostMemory`: the memory `ZeroState` keeps its buffers in on the CPU, and the
/// element-wise operations it runs on them.
///
/// A ZeRO state's stage logic is buffer arithmetic (zero, copy, scale, add, Σx², convert)
/// between collectives; a memory policy names where those buffers live and how that
/// arithmetic runs there, so the same stage code serves every device
/// (`cuda::DeviceMemory` is the GPU's). What a policy provides:
///
/// | member | meaning |
/// |---|---|
/// | `buffer<T>` | an owning array of T with `data()` and `size()` |
/// | `assign_zeros(b, n)` | `b` becomes n zeros |
/// | `zero(p, n)`, `copy(from, n, to)` | fill with zeros, copy between buffers |
/// | `scale(x, n, f)`, `add_into(dst, src, n)` | x *= f, dst += src, in the buffers' dtype |
/// | `square_sum(x, n)` | Σ x² of the widened values, as a double on the host |
/// | `convert(in, out, n)` | dtype cast between buffers |
/// | `upload(host, n, to)`, `download(from, n, host)` | host values in and out, cast on the way |
/// | `sum_over(comm, x)` | a host double summed over a communicator's ranks |
/// | `square_sum_over(comm, x, n)` | Σ x² summed over a communicator's ranks, as a host double |

#include <algorithm>
#include <cstddef>
#include <vector>

#include <ds/comm/communicator.hpp>
#include <ds/device/cpu/convert.hpp>
#include <ds/device/cpu/simd.hpp>
#include <ds/numeric/storage.hpp>

namespace ds::cpu {

/// Buffers are `std::vector`s and the arithmetic is the CPU kernels of `convert.hpp`.
struct HostMemory {
    template <class T>
    using buffer = std::vector<T>;

    template <class T>
    void assign_zeros(buffer<T>& b, std::size_t n) const {
        b.assign(n, T{});
    }
    template <class T>
    void zero(T* p, std::size_t n) const {
        std::fill_n(p, n, T{});
    }
    template <class T>
    void copy(const T* from, std::size_t n, T* to) const {
        std::copy_n(from, n, to);
    }
    template <storage_float T>
    void scale(T* x, std::size_t n, float factor) const {
        cpu::scale(x, n, factor);
    }
    template <storage_float T>
    void add_into(T* dst, const T* src, std::size_t n) const {
        cpu::add_into(dst, src, n);
    }
    template <storage_float T>
    double square_sum(const T* x, std::size_t n) const {
        return cpu::sum_of_squares(x, n);
    }
    template <storage_float From, storage_float To>
    void convert(const From* in, To* out, std::size_t n) const {
        cpu::convert(in, out, n);
    }
    template <storage_float From, storage_float To>
    void upload(const From* host, std::size_t n, To* to) const {
        cpu::convert(host, to, n);
    }
    template <storage_float From, storage_float To>
    void download(const From* from, std::size_t n, To* host) const {
        cpu::convert(from, host, n);
    }
    template <class Comm>
    double sum_over(Comm& comm, double x) const {
        comm.all_reduce(&x, 1, comm::ReduceOp::sum);
        return x;
    }
    template <class Comm, storage_float T>
    double square_sum_over(Comm& comm, const T* x, std::size_t n) const {
        return sum_over(comm, square_sum(x, n));
    }
};

}  // namespace ds::cpu
