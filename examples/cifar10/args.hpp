#pragma once
// Command-line flags of the CIFAR-10 example, named as in DeepSpeedExamples'
// cifar10_deepspeed.py where they exist there.
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace cifar10 {

struct Args {
    int epochs = 30;
    int log_interval = 2000;
    std::string dtype;  // empty: this binary's own
    std::optional<int> stage;
    std::string deepspeed_config;
    std::string dataset;  // empty: cifar10 if its files are in data_dir, else fashion-mnist
    std::string data_dir = "./data/cifar-10-batches-bin";
    bool data_dir_given = false;
    std::optional<std::int64_t> max_steps;
    std::optional<std::int64_t> seed;
    bool no_shuffle = false;
    std::optional<int> threads;
    std::string init_weights, save_weights, metrics_json;
    bool help = false;
    // Mixture of Experts, as the Python example's flags (cifar10_moe_* binaries).
    bool moe = false;
    std::vector<int> num_experts{1};
    int ep_world_size = 1;
    int top_k = 1;
    int min_capacity = 0;
    std::string noisy_gate_policy;  // empty: None
    std::string mlp_type = "standard";
    bool moe_param_group = false;
};

inline constexpr std::string_view usage_text =
    "Trains the DeepSpeed CIFAR-10 tutorial's Net with dspp and reports test accuracy.\n"
    "\n"
    "  --epochs N               training epochs (default 30)\n"
    "  --log-interval N         print the mean loss every N steps (default 2000)\n"
    "  --dtype {fp32,bf16,fp16} must name this binary's precision; run_ds.sh picks the binary\n"
    "  --stage {0,1,2,3}        must name this binary's ZeRO stage\n"
    "  --deepspeed_config FILE  DeepSpeed JSON config; numbers are read from it, policies must match\n"
    "  --dataset {cifar10,fashion-mnist,synthetic}\n"
    "  --data-dir DIR           CIFAR-10 binary batches, or IDX files (default ./data/cifar-10-batches-bin)\n"
    "  --max-steps N            stop after N optimizer steps\n"
    "  --seed N                 initialisation and shuffling seed (default: the config's)\n"
    "  --no-shuffle             keep the training data in file order\n"
    "  --threads N              compute threads per rank (default: OMP_NUM_THREADS, or the cores shared among the ranks on this machine)\n"
    "  --init-weights FILE      start from a safetensors file (PyTorch names)\n"
    "  --save-weights FILE      write the trained weights as safetensors\n"
    "  --metrics-json FILE      write the run's figures as one JSON object\n"
    "  --moe                    Mixture of Experts (cifar10_moe_* binaries), with:\n"
    "    --num-experts N [N ...]  experts per MoE layer, one layer per number (built: 2, and 2 4)\n"
    "    --mlp-type {standard,residual}  residual = PR-MoE\n"
    "    --top-k {1,2}  --min-capacity N  --noisy-gate-policy {None,Jitter,RSample}\n"
    "    --ep-world-size N  --moe-param-group\n";

inline Args parse_args(int argc_in, char** argv_in) {
    // "--flag=value" is "--flag value", as argparse reads it.
    std::vector<std::string> words{argv_in[0]};
    for (int i = 1; i < argc_in; ++i) {
        const std::string word = argv_in[i];
        const auto eq = word.find('=');
        if (word.starts_with("--") && eq != std::string::npos) {
            words.push_back(word.substr(0, eq));
            words.push_back(word.substr(eq + 1));
        } else {
            words.push_back(word);
        }
    }
    const int argc = static_cast<int>(words.size());
    std::vector<char*> pointers;
    for (auto& w : words) pointers.push_back(w.data());
    char** argv = pointers.data();
    Args a;
    auto value = [&](int& i, std::string_view flag) -> std::string {
        if (i + 1 >= argc) throw std::invalid_argument(std::string(flag) + " needs a value");
        return argv[++i];
    };
    auto integer = [&](int& i, std::string_view flag) -> std::int64_t {
        const std::string text = value(i, flag);
        char* end = nullptr;
        const long long v = std::strtoll(text.c_str(), &end, 10);
        if (text.empty() || *end != '\0' || v < 0)
            throw std::invalid_argument(std::string(flag) + " needs a non-negative integer, got '" + text + "'");
        return v;
    };
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--help" || arg == "-h") a.help = true;
        else if (arg == "--epochs") a.epochs = static_cast<int>(integer(i, arg));
        else if (arg == "--log-interval" || arg == "--log_interval") a.log_interval = static_cast<int>(integer(i, arg));
        else if (arg == "--dtype") a.dtype = value(i, arg);
        else if (arg == "--stage") a.stage = static_cast<int>(integer(i, arg));
        else if (arg == "--deepspeed_config" || arg == "--deepspeed-config") a.deepspeed_config = value(i, arg);
        else if (arg == "--deepspeed") continue;  // DeepSpeed's launcher flag: nothing to do
        else if (arg == "--local_rank" || arg == "--local-rank") value(i, arg);
        else if (arg == "--dataset") a.dataset = value(i, arg);
        else if (arg == "--data-dir") a.data_dir = value(i, arg), a.data_dir_given = true;
        else if (arg == "--max-steps") a.max_steps = integer(i, arg);
        else if (arg == "--seed") a.seed = integer(i, arg);
        else if (arg == "--no-shuffle") a.no_shuffle = true;
        else if (arg == "--threads") a.threads = static_cast<int>(integer(i, arg));
        else if (arg == "--init-weights") a.init_weights = value(i, arg);
        else if (arg == "--save-weights") a.save_weights = value(i, arg);
        else if (arg == "--metrics-json") a.metrics_json = value(i, arg);
        else if (arg == "--moe") a.moe = true;
        else if (arg == "--num-experts" || arg == "--num_experts") {
            a.num_experts.clear();
            a.num_experts.push_back(static_cast<int>(integer(i, arg)));
            while (i + 1 < argc && !std::string_view(argv[i + 1]).starts_with("--"))
                a.num_experts.push_back(static_cast<int>(integer(i, arg)));
        } else if (arg == "--ep-world-size" || arg == "--ep_world_size") a.ep_world_size = static_cast<int>(integer(i, arg));
        else if (arg == "--top-k" || arg == "--top_k") a.top_k = static_cast<int>(integer(i, arg));
        else if (arg == "--min-capacity" || arg == "--min_capacity") a.min_capacity = static_cast<int>(integer(i, arg));
        else if (arg == "--noisy-gate-policy" || arg == "--noisy_gate_policy") a.noisy_gate_policy = value(i, arg);
        else if (arg == "--mlp-type" || arg == "--mlp_type") a.mlp_type = value(i, arg);
        else if (arg == "--moe-param-group" || arg == "--moe_param_group") a.moe_param_group = true;
        else throw std::invalid_argument("unknown flag '" + std::string(arg) + "' (see --help)");
    }
    if (a.log_interval <= 0) throw std::invalid_argument("--log-interval must be positive");
    if (a.mlp_type != "standard" && a.mlp_type != "residual")
        throw std::invalid_argument("--mlp-type must be standard or residual, got '" + a.mlp_type + "'");
    if (!a.noisy_gate_policy.empty() && a.noisy_gate_policy != "None" && a.noisy_gate_policy != "Jitter" &&
        a.noisy_gate_policy != "RSample")
        throw std::invalid_argument("--noisy-gate-policy must be None, Jitter or RSample, got '" + a.noisy_gate_policy + "'");
    if (a.top_k != 1 && a.top_k != 2) throw std::invalid_argument("--top-k must be 1 or 2");
    if (a.ep_world_size < 1) throw std::invalid_argument("--ep-world-size must be at least 1");
    if (!a.dataset.empty() && a.dataset != "cifar10" && a.dataset != "fashion-mnist" && a.dataset != "synthetic")
        throw std::invalid_argument("--dataset must be cifar10, fashion-mnist or synthetic, got '" + a.dataset + "'");
    return a;
}

}  // namespace cifar10
