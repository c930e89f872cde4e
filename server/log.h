// Minimal line logger for engramd: timestamped lines on stderr.
#ifndef ENGRAM_SERVER_LOG_H_
#define ENGRAM_SERVER_LOG_H_

#include <string_view>

namespace engram {

enum class LogLevel { kInfo, kWarning, kError };

// Thread-safe: each call writes one whole line with a single write(2).
void Log(LogLevel level, std::string_view message);
inline void LogInfo(std::string_view m) { Log(LogLevel::kInfo, m); }
inline void LogWarning(std::string_view m) { Log(LogLevel::kWarning, m); }
inline void LogError(std::string_view m) { Log(LogLevel::kError, m); }

}  // namespace engram

#endif  // ENGRAM_SERVER_LOG_H_
