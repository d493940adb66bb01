// Collective and point-to-point communication between ranks (DESIGN.md decision 3).
//
// One interface, three implementations:
//   MpiCommunicator   host tensors, over MPI (parallel/mpi_communicator.h)
//   NcclCommunicator  device tensors on the current stream, over NCCL; the unique id travels over
//                     MPI, or through a shared file when MPI is absent (parallel/nccl_communicator.h)
//   a stub            when NCCL is not built: creating one fails with "built without NCCL"
// Every operation is non-blocking and returns a Work handle; wait() blocks until the operation
// is complete (for NCCL: until it is enqueued on the stream, whose order then guarantees
// completion for later work on that stream). A handle must be waited on before its tensors are
// reused or freed. The *_sync helpers below post and wait.
//
// Tensors are contiguous; dtypes f32, bf16 (sum is computed in f32 and rounded for MPI), i32,
// i64, u8 (not for reductions). Shapes are checked and mismatches throw fathom::Error naming the
// operation and the tensors. Ranks must call collectives in the same order with matching shapes;
// a rank that fails aborts all (parallel/fault.h), so no rank waits forever.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/types/span.h"
#include "kernels/tensor.h"

namespace fathom::parallel {

enum class ReduceOp : uint8_t { kSum, kMax };

class Work {
 public:
  virtual ~Work() = default;
  // Blocks until the operation has completed (see above). Idempotent.
  virtual void wait() = 0;
};
using WorkHandle = std::unique_ptr<Work>;

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "mpi", "nccl"

  // t = op over ranks of t, in place.
  virtual WorkHandle all_reduce(Tensor& t, ReduceOp op) = 0;
  // input: (size * n, ...) -> output: (n, ...) = op over ranks of rows [rank * n, (rank + 1) * n)
  // of every rank's input.
  virtual WorkHandle reduce_scatter(const Tensor& input, Tensor& output, ReduceOp op) = 0;
  // input: (n, ...) -> output: (size * n, ...), rank r's input at rows [r * n, (r + 1) * n).
  virtual WorkHandle all_gather(const Tensor& input, Tensor& output) = 0;
  // Rows of dim 0: send_rows[r] consecutive rows of input go to rank r (in rank order),
  // recv_rows[r] rows from rank r land in output (in rank order). Row sizes (the other dims) and
  // dtypes of input and output match. sum(send_rows) == input.dim(0), sum(recv_rows) ==
  // output.dim(0); both spans have size() entries.
  virtual WorkHandle all_to_all_v(const Tensor& input, absl::Span<const int64_t> send_rows,
                                  Tensor& output, absl::Span<const int64_t> recv_rows) = 0;
  virtual WorkHandle send(const Tensor& t, int peer, int tag) = 0;
  virtual WorkHandle recv(Tensor& t, int peer, int tag) = 0;
  // t on every rank = t on root.
  virtual WorkHandle broadcast(Tensor& t, int root) = 0;
  virtual void barrier() = 0;
  // A communicator over the ranks that pass the same color, ordered by key then by rank
  // (MPI_Comm_split). Collective over this communicator.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
};

inline void all_reduce_sync(Communicator& c, Tensor& t, ReduceOp op = ReduceOp::kSum) {
  c.all_reduce(t, op)->wait();
}
inline void reduce_scatter_sync(Communicator& c, const Tensor& in, Tensor& out,
                                ReduceOp op = ReduceOp::kSum) {
  c.reduce_scatter(in, out, op)->wait();
}
inline void all_gather_sync(Communicator& c, const Tensor& in, Tensor& out) {
  c.all_gather(in, out)->wait();
}
inline void all_to_all_v_sync(Communicator& c, const Tensor& in, absl::Span<const int64_t> send,
                              Tensor& out, absl::Span<const int64_t> recv) {
  c.all_to_all_v(in, send, out, recv)->wait();
}

}  // namespace fathom::parallel
