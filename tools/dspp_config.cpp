// dspp-config: check a DeepSpeed config file the way the engine will read it.
//
//   dspp-config validate FILE.json [--world-size N]   normalized config on stdout, exit 0;
//                                                     or the problems on stderr, exit 2
//   dspp-config show-defaults                         every key with its default
#include <cstdlib>
#include <iostream>
#include <string>
#include <string_view>

#include <ds/ds.hpp>

namespace {

constexpr int exit_invalid = 2;
constexpr int exit_usage = 1;

int usage(std::ostream& out, int code) {
    out << "usage: dspp-config validate FILE.json [--world-size N]\n"
           "       dspp-config show-defaults\n"
           "validate prints the config with the derived batch sizes filled in and exits 0,\n"
           "or prints every problem and exits 2. show-defaults prints every key with its default\n"
           "(null: not given, DeepSpeed's behaviour for an absent key).\n";
    return code;
}

int validate(const std::string& file, long world_size) {
    try {
        const auto loaded = ds::load_config(file, world_size);
        for (const auto& warning : loaded.warnings) std::cerr << "warning: " << warning << '\n';
        std::cout << ds::to_json(ds::normalized(loaded.config, world_size)).dump(2) << '\n';
        return EXIT_SUCCESS;
    } catch (const ds::ConfigError& e) {
        for (const auto& problem : e.problems()) std::cerr << "error: " << problem << '\n';
        return exit_invalid;
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) return usage(std::cerr, exit_usage);
    const std::string_view command = argv[1];
    if (command == "--help" || command == "-h") return usage(std::cout, EXIT_SUCCESS);
    if (command == "show-defaults" && argc == 2) {
        std::cout << ds::to_json_complete(ds::Config{}).dump(2) << '\n';
        return EXIT_SUCCESS;
    }
    if (command != "validate" || argc < 3) return usage(std::cerr, exit_usage);
    long world_size = 1;
    for (int i = 3; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--world-size" && i + 1 < argc) {
            char* end = nullptr;
            world_size = std::strtol(argv[++i], &end, 10);
            if (*end != '\0' || world_size < 1) {
                std::cerr << "error: --world-size needs a positive integer, got '" << argv[i] << "'\n";
                return exit_usage;
            }
        } else {
            return usage(std::cerr, exit_usage);
        }
    }
    return validate(argv[2], world_size);
}
