// `fathom train RUN.yaml [--set key.path=value ...] [--run-dir DIR] [--resume] [--device D]`.
#pragma once

#include <string>
#include <vector>

namespace fathom::launch {

// Exit codes: 0 success, 1 a failure (bad config, I/O), 2 a usage error.
int train_main(const std::vector<std::string>& args);

}  // namespace fathom::launch
