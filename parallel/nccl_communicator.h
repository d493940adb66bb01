// NcclCommunicator: the Communicator of parallel/communicator.h over NCCL, on device tensors.
//
// A communicator belongs to one CUDA device. Operations run on the current stream of that device
// (kernels/cuda/runtime.h current_stream) at the time they are posted; wait() returns once the
// operation is enqueued there, so later work on that stream sees its result (to read on the host,
// copy: Tensor::to synchronises with the stream). Tensors must be on the communicator's device.
//
// dtypes: f32, bf16, i32, i64 for reductions (NCCL reduces bf16 step by step, so a bf16 sum over
// more than two ranks can round differently from MpiCommunicator's single rounding); u8 and fp8
// move as bytes. all_to_all_v is one NCCL group of ncclSend / ncclRecv. NCCL has no tags: send and
// recv check the tag's range only, and messages between two ranks match in posting order.
// Posted send/recv are collected and issued together as one NCCL group at the first wait() on any
// of them or at the next other operation, so that "post every send and recv, then wait" exchanges
// (a ring, a pipeline stage's send + recv) do not deadlock; a recv of another size than the
// matching send is not detected.
//
// Creation is collective. The NCCL unique id travels over a host communicator (MPI), or through a
// file on a shared file system for launches without MPI. Communicators are non-blocking NCCL
// communicators (config.blocking = 0): every NCCL call is polled until it completes, at most
// `timeout_s`; on a timeout the communicator is aborted and the call throws fathom::Error. abort()
// (ncclCommAbort) can be called from any thread, for example by the fault handler
// (parallel/fault.h) when another rank failed: it ends operations still in flight, and every later
// operation throws. NCCL failures throw fathom::Error naming the NCCL call, file:line and rank.
//
// Builds without NCCL compile no_nccl_communicator.cc instead: the factories return
// FailedPrecondition "built without NCCL". To reach abort() from a Communicator made by the
// factories: dynamic_cast<NcclCommunicator*>.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace fathom::parallel {

class NcclCommunicator : public Communicator {
 public:
  // Aborts the communicator (ncclCommAbort): kernels and calls in flight end with an error, later
  // operations throw. Idempotent, never throws, callable from any thread.
  virtual void abort() = 0;
  virtual bool aborted() const = 0;
  // The CUDA device this communicator runs on.
  virtual int device() const = 0;
};

// True when this build has NCCL (nccl_communicator.cc rather than no_nccl_communicator.cc).
bool nccl_built();

// Seconds an NCCL call (creation, an operation's enqueue, a barrier) may take before the
// communicator is aborted.
inline constexpr double kNcclDefaultTimeoutS = 300.0;

// Collective over `bootstrap`: rank 0 creates the NCCL unique id, broadcasts it over `bootstrap`
// (a host communicator such as MpiCommunicator), and every rank joins an NCCL communicator of
// bootstrap.size() ranks, with the same ranks as `bootstrap`, on CUDA device `device`.
// Errors: FailedPrecondition without NCCL or without that device; InvalidArgument for a device
// bootstrap (NCCL); DeadlineExceeded when creation takes longer than `timeout_s`; Internal for
// NCCL failures (message from NCCL).
absl::StatusOr<std::unique_ptr<Communicator>> make_nccl_communicator(
    Communicator& bootstrap, int device, double timeout_s = kNcclDefaultTimeoutS);

// The same without MPI: rank 0 writes the unique id to `id_path` (a path on a file system every
// rank sees, unique to this launch, e.g. containing the job id) and the other ranks read it.
// Rank 0 removes the file once creation ends (every rank has read it by then). Errors as above,
// plus those of exchange_bytes_through_file.
absl::StatusOr<std::unique_ptr<Communicator>> make_nccl_communicator_from_file(
    const std::string& id_path, int rank, int size, int device,
    double timeout_s = kNcclDefaultTimeoutS);

// Rank 0 writes `bytes` to `path` atomically (a temporary file in the same folder, fsync, rename)
// and returns them; every other rank polls for `path` every 10 ms and returns its contents.
// Errors: AlreadyExists on rank 0 when `path` exists (a stale id of an earlier launch, which other
// ranks may already have read), DeadlineExceeded when the file has not appeared after
// `timeout_s`, DataLoss when the file read does not hold exactly `size` bytes, InvalidArgument
// when rank 0's `bytes` are not `size` bytes, Internal for I/O errors. Header-only, so that it is
// there (and tested) in builds with and without NCCL.
inline absl::StatusOr<std::string> exchange_bytes_through_file(const std::string& path, int rank,
                                                               const std::string& bytes,
                                                               size_t size, double timeout_s) {
  if (rank == 0) {
    if (bytes.size() != size) {
      return absl::InvalidArgumentError(
          "exchange_bytes_through_file: " + std::to_string(bytes.size()) +
          " bytes to write, expected " + std::to_string(size));
    }
    if (access(path.c_str(), F_OK) == 0) {
      return absl::AlreadyExistsError("NCCL id file " + path +
                                      " already exists (left by an earlier launch?); remove it or "
                                      "use a path unique to this launch");
    }
    const std::string tmp = path + ".tmp." + std::to_string(getpid());
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    if (f == nullptr) {
      return absl::InternalError("cannot create " + tmp + ": " + std::strerror(errno));
    }
    const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size() &&
                    std::fflush(f) == 0 && fsync(fileno(f)) == 0;
    const int write_errno = errno;
    std::fclose(f);
    if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
      std::remove(tmp.c_str());
      return absl::InternalError("cannot write NCCL id file " + path + ": " +
                                 std::strerror(ok ? errno : write_errno));
    }
    return bytes;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (access(path.c_str(), F_OK) != 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      return absl::DeadlineExceededError("rank " + std::to_string(rank) + ": NCCL id file " + path +
                                         " did not appear within " + std::to_string(timeout_s) +
                                         " s; is rank 0 running, with the same path?");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::ifstream in(path, std::ios::binary);
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof()) return absl::InternalError("cannot read NCCL id file " + path);
  if (data.size() != size) {
    return absl::DataLossError("NCCL id file " + path + " holds " + std::to_string(data.size()) +
                               " bytes, expected " + std::to_string(size));
  }
  return data;
}

}  // namespace fathom::parallel
