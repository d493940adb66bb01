// The NCCL factories of a build without NCCL (CONVENTIONS.md 4): they report it.
#include "parallel/nccl_communicator.h"

namespace fathom::parallel {
namespace {

absl::Status built_without_nccl(const char* factory) {
  return absl::FailedPreconditionError(std::string(factory) +
                                       ": built without NCCL (configure with FATHOM_CUDA=ON where "
                                       "the CUDA toolkit and NCCL are installed)");
}

}  // namespace

bool nccl_built() { return false; }

absl::StatusOr<std::unique_ptr<Communicator>> make_nccl_communicator(Communicator& bootstrap,
                                                                     int device, double timeout_s) {
  return built_without_nccl("make_nccl_communicator");
}

absl::StatusOr<std::unique_ptr<Communicator>> make_nccl_communicator_from_file(
    const std::string& id_path, int rank, int size, int device, double timeout_s) {
  return built_without_nccl("make_nccl_communicator_from_file");
}

}  // namespace fathom::parallel
