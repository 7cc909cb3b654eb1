// ZeroState over a memory policy whose buffers the host cannot touch: the discipline the GPU
// path (cuda::DeviceMemory) relies on, checked without a GPU. `FencedMemory` hands out
// buffers from a "device" mapping with no access rights (any direct read or write by the
// stage logic faults) and runs its operations through a second, readable mapping of the
// same memory; `FencedComm` does the same for the collectives and refuses pointers outside
// the fenced mapping (a host pointer where device memory is expected). Driven like a model
// would drive it, for every stage, fp32 and bf16, on 2 ranks, ZeroState over the fence ends
// bit for bit where ZeroState over host memory does.
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <span>
#include <stdexcept>
#include <tuple>
#include <utility>
#include <vector>

#include <doctest/doctest.h>

#include <ds/comm/threads.hpp>
#include <ds/device/cpu/host_memory.hpp>
#include <ds/engine/zero_state.hpp>
#include <ds/nn/linear.hpp>
#include <ds/nn/relu.hpp>
#include <ds/nn/sequential.hpp>

namespace {

/// One shared arena mapped twice: `fenced` (PROT_NONE: what the state sees) and `open`
/// (read-write: what the policy and the communicator work through). Bump allocation only.
class Arena {
public:
    static constexpr std::size_t capacity = std::size_t{64} << 20;
    static Arena& get() {
        static Arena arena;
        return arena;
    }
    std::byte* allocate(std::size_t bytes) {
        const std::lock_guard lock(mutex_);
        const std::size_t at = (used_ + 63) / 64 * 64;
        if (at + bytes > capacity) throw std::bad_alloc();
        used_ = at + bytes;
        return fenced_ + at;
    }
    bool fenced(const void* p) const {
        const auto* b = static_cast<const std::byte*>(p);
        return b >= fenced_ && b < fenced_ + capacity;
    }
    /// The readable alias of a fenced address.
    template <class T>
    T* open(T* p) const {
        if (p == nullptr) return nullptr;
        if (!fenced(p)) throw std::logic_error("a host pointer where fenced (device) memory is expected");
        const auto offset = reinterpret_cast<const std::byte*>(p) - fenced_;
        return reinterpret_cast<T*>(open_ + offset);
    }

private:
    Arena() {
        const int fd = memfd_create("dspp-fenced", 0);
        REQUIRE(fd >= 0);
        REQUIRE(ftruncate(fd, static_cast<off_t>(capacity)) == 0);
        fenced_ = static_cast<std::byte*>(mmap(nullptr, capacity, PROT_NONE, MAP_SHARED, fd, 0));
        open_ = static_cast<std::byte*>(mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
        close(fd);
        REQUIRE(fenced_ != MAP_FAILED);
        REQUIRE(open_ != MAP_FAILED);
    }
    std::mutex mutex_;
    std::byte* fenced_ = nullptr;
    std::byte* open_ = nullptr;
    std::size_t used_ = 0;
};

template <class T>
T* open(T* p) {
    return Arena::get().open(p);
}

/// Move-only like a device buffer, and like one it starts as garbage (0xFF bytes: NaN in
/// every float type) and is garbage again once freed, so a missing zeroing or a read of a
/// dropped buffer shows.
template <class T>
class FencedBuffer {
public:
    FencedBuffer() = default;
    explicit FencedBuffer(std::size_t n)
        : data_(n ? reinterpret_cast<T*>(Arena::get().allocate(n * sizeof(T))) : nullptr), size_(n) {
        poison();
    }
    FencedBuffer(FencedBuffer&& other) noexcept
        : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
    FencedBuffer& operator=(FencedBuffer&& other) noexcept {
        poison();
        data_ = std::exchange(other.data_, nullptr);
        size_ = std::exchange(other.size_, 0);
        return *this;
    }
    ~FencedBuffer() { poison(); }
    T* data() { return data_; }
    const T* data() const { return data_; }
    std::size_t size() const { return size_; }

private:
    void poison() {
        if (data_) std::memset(open(data_), 0xFF, size_ * sizeof(T));
    }
    T* data_ = nullptr;
    std::size_t size_ = 0;
};

/// `cpu::HostMemory`'s operations, through the open alias.
struct FencedMemory {
    template <class T>
    using buffer = FencedBuffer<T>;
    ds::cpu::HostMemory host;

    template <class T>
    void assign_zeros(buffer<T>& b, std::size_t n) const {
        if (b.size() != n) b = FencedBuffer<T>(n);
        zero(b.data(), n);
    }
    template <class T>
    void zero(T* p, std::size_t n) const {
        if (n) host.zero(open(p), n);
    }
    template <class T>
    void copy(const T* from, std::size_t n, T* to) const {
        if (n) host.copy(open(from), n, open(to));
    }
    template <class T>
    void scale(T* x, std::size_t n, float f) const {
        if (n) host.scale(open(x), n, f);
    }
    template <class T>
    void add_into(T* dst, const T* src, std::size_t n) const {
        if (n) host.add_into(open(dst), open(src), n);
    }
    template <class T>
    double square_sum(const T* x, std::size_t n) const {
        return n ? host.square_sum(open(x), n) : 0.0;
    }
    template <class From, class To>
    void convert(const From* in, To* out, std::size_t n) const {
        if (n) host.convert(open(in), open(out), n);
    }
    template <class From, class To>
    void upload(const From* from_host, std::size_t n, To* to) const {
        REQUIRE(!Arena::get().fenced(from_host));
        if (n) host.upload(from_host, n, open(to));
    }
    template <class From, class To>
    void download(const From* from, std::size_t n, To* to_host) const {
        REQUIRE(!Arena::get().fenced(to_host));
        if (n) host.download(open(from), n, to_host);
    }
    template <class Comm>
    double sum_over(Comm& comm, double x) const {
        FencedBuffer<double> value(1);
        *open(value.data()) = x;
        comm.all_reduce(value.data(), 1, ds::comm::ReduceOp::sum);
        return *open(value.data());
    }
    /// As the GPU's: the sum stays in a (fenced) buffer until the all-reduce is done.
    template <class Comm, class T>
    double square_sum_over(Comm& comm, const T* x, std::size_t n) const {
        FencedBuffer<double> value(1);
        *open(value.data()) = square_sum(x, n);
        comm.all_reduce(value.data(), 1, ds::comm::ReduceOp::sum);
        return *open(value.data());
    }
};

/// `comm::Threads` over fenced buffers only.
class FencedComm : public ds::comm::EagerAsync<FencedComm> {
public:
    explicit FencedComm(ds::comm::Threads threads) : threads_(std::move(threads)) {}
    int rank() const { return threads_.rank(); }
    int size() const { return threads_.size(); }
    const ds::comm::CommCounters& counters() const { return threads_.counters(); }
    template <class T>
    void all_reduce(T* buf, std::size_t n, ds::comm::ReduceOp op) {
        threads_.all_reduce(open(buf), n, op);
    }
    template <class T>
    void reduce_scatter(const T* in, T* out, std::size_t n, ds::comm::ReduceOp op) {
        threads_.reduce_scatter(open(in), open(out), n, op);
    }
    template <class T>
    void reduce_scatter_v(const T* in, T* out, std::span<const std::size_t> counts, ds::comm::ReduceOp op) {
        threads_.reduce_scatter_v(open(in), open(out), counts, op);
    }
    template <class T>
    void all_gather(const T* in, T* out, std::size_t n) {
        threads_.all_gather(open(in), open(out), n);
    }
    template <class T>
    void broadcast(T* buf, std::size_t n, int root) {
        threads_.broadcast(open(buf), n, root);
    }
    template <class T>
    void all_to_all(const T* in, T* out, std::size_t n) {
        threads_.all_to_all(open(in), open(out), n);
    }
    void barrier() { threads_.barrier(); }
    FencedComm split(int color, int key) { return FencedComm(threads_.split(color, key)); }

private:
    ds::comm::Threads threads_;
};
static_assert(ds::comm::communicator<FencedComm>);

using Tiny = ds::nn::Sequential<ds::nn::Features<5>, ds::nn::Linear<5, 3>, ds::nn::ReLU, ds::nn::Linear<3, 7>>;

/// Three steps of a model's use of the state: each layer's parameters read in forward and
/// backward, a rank- and step-dependent gradient added into each layer's buffer, the
/// boundary reduction, the norm, an SGD step on `shard_parts()`, the publication. Every
/// value crosses the boundary through the policy, as a GPU kernel's would.
template <class State, class Memory>
std::pair<std::vector<float>, std::vector<double>> drive(State& state, const Memory& mem, int rank) {
    using Range = typename State::Range;
    std::vector<double> norms;
    for (int step = 0; step < 3; ++step) {
        state.begin_pass(ds::Pass::forward);
        for (const Range& r : Tiny::layer_ranges) {
            if (r.count == 0) continue;
            std::vector<float> w(r.count);
            mem.download(state.parameters(r), r.count, w.data());
            state.forward_done(r);
        }
        state.begin_pass(ds::Pass::backward);
        for (std::size_t i = Tiny::layer_ranges.size(); i-- > 0;) {
            const Range r = Tiny::layer_ranges[i];
            if (r.count == 0) continue;
            std::vector<float> w(r.count), g(r.count);
            mem.download(state.parameters(r), r.count, w.data());
            auto* grads = state.gradients(r);
            mem.download(grads, r.count, g.data());
            for (std::size_t k = 0; k < r.count; ++k)
                g[k] += 0.1f * std::sin(static_cast<float>(r.offset + k + 7 * rank + 13 * step)) + 0.01f * w[k];
            mem.upload(g.data(), r.count, grads);
            state.backward_done(r);
        }
        state.backward_finished();
        state.reduce_gradients();
        norms.push_back(state.gradient_square_norm());
        for (const auto& part : state.shard_parts()) {
            std::vector<float> values(part.count), grads(part.count);
            mem.download(part.params, part.count, values.data());
            mem.download(part.grads, part.count, grads.data());
            for (std::size_t k = 0; k < part.count; ++k) values[k] -= 0.5f * grads[k];
            mem.upload(values.data(), part.count, part.params);
        }
        state.publish_parameters();
        state.zero_gradients();
    }
    return {state.full_parameters(), norms};
}

/// The paths a config can take: bucket size, reduce-scatter or all-reduce, bucket copies,
/// the averaging rule's variants.
struct Variant {
    std::int64_t bucket;
    bool reduce_scatter = true, contiguous_gradients = true, prescale = false;
    double predivide = 1.0;
};

template <class Z, class P>
void check_fenced_like_host(const Variant& v) {
    ds::Config cfg;
    cfg.zero_optimization.stage = Z::stage;
    cfg.zero_optimization.reduce_bucket_size = v.bucket;
    cfg.zero_optimization.reduce_scatter = v.reduce_scatter;
    cfg.zero_optimization.contiguous_gradients = v.contiguous_gradients;
    cfg.prescale_gradients = v.prescale;
    cfg.gradient_predivide_factor = v.predivide;
    cfg.zero_optimization.overlap_comm = true;
    cfg.zero_optimization.stage3_param_persistence_threshold = 4;  // stage 3: gather every tensor over 4 values
    std::vector<float> initial(Tiny::param_count);
    for (std::size_t i = 0; i < initial.size(); ++i) initial[i] = 0.3f * std::cos(static_cast<float>(i));

    std::vector<std::vector<float>> host_params(2), fenced_params(2);
    std::vector<std::vector<double>> host_norms(2), fenced_norms(2);
    ds::comm::run_ranks(2, [&](ds::comm::Threads& world) {
        const int r = world.rank();
        ds::cpu::HostMemory host;
        ds::ZeroState<Z, P, Tiny, ds::comm::Threads> reference(world, world, cfg, initial);
        std::tie(host_params[r], host_norms[r]) = drive(reference, host, r);
    });
    ds::comm::run_ranks(2, [&](ds::comm::Threads& world) {
        const int r = world.rank();
        FencedComm comm(std::move(world));
        FencedMemory mem;
        ds::ZeroState<Z, P, Tiny, FencedComm, FencedMemory> fenced(comm, comm, cfg, initial, mem);
        std::tie(fenced_params[r], fenced_norms[r]) = drive(fenced, mem, r);
    });
    for (int r = 0; r < 2; ++r) {
        INFO("rank " << r);
        CHECK(fenced_params[r] == host_params[r]);
        CHECK(fenced_norms[r] == host_norms[r]);
    }
    CHECK(host_params[0] != initial);  // the steps moved the parameters
}

}  // namespace

TEST_SUITE("zero") {

TEST_CASE_TEMPLATE("ZeroState never touches its buffers but through its memory policy (fenced memory, 2 ranks)", Z,
                   ds::Zero<0>, ds::Zero<1>, ds::Zero<2>, ds::Zero<3>) {
    // Stage 2: a bucket of 32 takes both layers (two flushes); 8 is smaller than either.
    const Variant variants[] = {{.bucket = 32},
                                {.bucket = 8},
                                {.bucket = 32, .reduce_scatter = false, .prescale = true},
                                {.bucket = 8, .reduce_scatter = false, .predivide = 2.0},
                                {.bucket = 32, .contiguous_gradients = false, .predivide = 2.0}};
    for (const Variant& v : variants) {
        INFO("bucket " << v.bucket << ", reduce_scatter " << v.reduce_scatter << ", contiguous "
                       << v.contiguous_gradients << ", prescale " << v.prescale << ", predivide " << v.predivide);
        check_fenced_like_host<Z, ds::FP32>(v);
        check_fenced_like_host<Z, ds::BF16>(v);
    }
}

}  // TEST_SUITE
