// Running the optional Python reference tooling of tests/reference (CONVENTIONS.md 7) from C++
// tests: Debian's interpreter, whether it has the packages a script needs, and running a command
// with its output captured. Header-only; tests only.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

namespace fathom::testing {

// Debian's interpreter, which sees python3-torch and python3-numpy.
inline constexpr const char* kPython = "/usr/bin/python3";

// Whether kPython can import numpy and, with `torch`, torch (found without importing torch,
// which takes about a second). The answer is computed once per process and kind.
inline bool python_has_numpy(bool torch = false) {
  const auto probe = [](bool with_torch) {
    const std::string specs = with_torch ? "u.find_spec(\"torch\") and u.find_spec(\"numpy\")"
                                         : "u.find_spec(\"numpy\")";
    return std::system((std::string(kPython) + " -c 'import importlib.util as u, sys; " +
                        "sys.exit(not (" + specs + "))' >/dev/null 2>&1")
                           .c_str()) == 0;
  };
  static const bool numpy = probe(false);
  static const bool numpy_and_torch = probe(true);
  return torch ? numpy_and_torch : numpy;
}
inline bool python_has_torch() { return python_has_numpy(/*torch=*/true); }

// Runs `command` through the shell; returns its exit status, with stdout + stderr in *output.
inline int run_command(const std::string& command, std::string* output) {
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return -1;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) output->append(buf, n);
  return pclose(pipe);
}

}  // namespace fathom::testing
