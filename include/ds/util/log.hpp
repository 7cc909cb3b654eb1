#pragma once
/// @file
/// Rank-0 log lines in DeepSpeed's shape: `[timestamp] [INFO] [dspp] message`.

#include <chrono>
#include <cstdio>
#include <ctime>
#include <string_view>

namespace ds {

/// Severity of a log line.
enum class LogLevel { info, warning };

/// Prints one line to stdout (info) or stderr (warning), prefixed like DeepSpeed's logger.
inline void log_line(LogLevel level, std::string_view message) {
    const auto now = std::chrono::system_clock::now();
    const std::time_t t = std::chrono::system_clock::to_time_t(now);
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
    std::tm tm{};
    localtime_r(&t, &tm);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &tm);
    std::FILE* out = level == LogLevel::info ? stdout : stderr;
    std::fprintf(out, "[%s,%03d] [%s] [dspp] %.*s\n", stamp, static_cast<int>(ms),
                 level == LogLevel::info ? "INFO" : "WARNING", static_cast<int>(message.size()), message.data());
    std::fflush(out);
}

}  // namespace ds
