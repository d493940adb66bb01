// Test helper: the path of a model preset in the source tree (configs/models/<name>.yaml).
//
// The tests run from the build tree, so the source root is found as: FATHOM_SOURCE_DIR
// (environment, then compile definition) if set, else the first ancestor of the test executable or
// of the working directory that holds configs/models/tiny.yaml. Returns "" when none does; callers
// fail the test.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>

namespace fathom::model::testing {

inline std::string source_root() {
  namespace fs = std::filesystem;
  auto has_presets = [](const fs::path& dir) {
    std::error_code ec;
    return fs::exists(dir / "configs" / "models" / "tiny.yaml", ec);
  };
  if (const char* env = std::getenv("FATHOM_SOURCE_DIR"); env != nullptr && has_presets(env)) {
    return env;
  }
#ifdef FATHOM_SOURCE_DIR
  if (has_presets(FATHOM_SOURCE_DIR)) return FATHOM_SOURCE_DIR;
#endif
  std::error_code ec;
  for (fs::path start : {fs::read_symlink("/proc/self/exe", ec), fs::current_path(ec)}) {
    for (fs::path dir = start; !dir.empty(); dir = dir.parent_path()) {
      if (has_presets(dir)) return dir.string();
      if (dir == dir.root_path()) break;
    }
  }
  return "";
}

inline std::string preset_path(const std::string& name) {
  const std::string root = source_root();
  if (root.empty()) return "";
  return root + "/configs/models/" + name + ".yaml";
}

}  // namespace fathom::model::testing
