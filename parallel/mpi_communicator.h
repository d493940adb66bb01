// MpiCommunicator: the Communicator of parallel/communicator.h over MPI, on host tensors.
//
// Every operation is posted with a non-blocking MPI call (MPI_Iallreduce,
// MPI_Ireduce_scatter_block, MPI_Iallgather, MPI_Ialltoallv, MPI_Isend / MPI_Irecv, MPI_Ibcast) and
// returns a handle whose wait() completes it (MPI_Waitall). Several operations may be in flight and
// waited on in any order. A handle keeps its tensors' storage alive until it is waited on;
// destroying a handle that was not waited on waits for it.
//
// dtypes: f32, bf16, i32, i64 and u8 everywhere; fp8 (e4m3, e5m2) for the operations that only
// move data. MPI has no bf16 type: bf16 reductions convert the tensor to f32, reduce in f32 and
// round the result to bf16 once (round to nearest even) when the handle is waited on; the result
// is therefore the correctly rounded f32 sum, whatever the number of ranks. u8 and fp8 cannot be
// reduced. MPI counts are C ints: an operation whose element counts or displacements exceed
// INT_MAX throws fathom::Error naming it.
//
// Errors: a tensor on a CUDA device, an undefined tensor, a shape or dtype mismatch, a rank or tag
// out of range all throw fathom::Error whose message names the operation and the tensors. A
// received message of another size than the receive tensor throws from wait(). MPI failures
// throw fathom::Error with the MPI call and the rank (FATHOM_MPI_CHECK).
//
// Thread safety: needs MPI_THREAD_MULTIPLE (parallel/mpi_env.h); different threads may post and
// wait concurrently. Collectives must still be posted in the same order on every rank.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "parallel/communicator.h"

namespace fathom::parallel {

class MpiCommunicator final : public Communicator {
 public:
  // Wraps `comm`. When `owned`, the destructor frees it (MPI_Comm_free); MPI_COMM_WORLD and
  // MPI_COMM_SELF are never freed. Sets MPI_ERRORS_RETURN on `comm`. MPI must be initialised.
  MpiCommunicator(MPI_Comm comm, bool owned);
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  MPI_Comm comm() const { return comm_; }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  WorkHandle all_reduce(Tensor& t, ReduceOp op) override;
  WorkHandle reduce_scatter(const Tensor& input, Tensor& output, ReduceOp op) override;
  // `input` may be the rank's own rows of `output` (output.narrow(rank * n, n)): in-place gather.
  WorkHandle all_gather(const Tensor& input, Tensor& output) override;
  WorkHandle all_to_all_v(const Tensor& input, absl::Span<const int64_t> send_rows, Tensor& output,
                          absl::Span<const int64_t> recv_rows) override;
  // tag: 0 .. MPI_TAG_UB. recv's wait() throws when the message has another element count.
  WorkHandle send(const Tensor& t, int peer, int tag) override;
  WorkHandle recv(Tensor& t, int peer, int tag) override;
  WorkHandle broadcast(Tensor& t, int root) override;
  void barrier() override;
  // A negative color leaves this rank out: it gets nullptr (MPI_UNDEFINED).
  std::unique_ptr<Communicator> split(int color, int key) override;

 private:
  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0;
  int size_ = 1;
  int tag_ub_ = 32767;
};

// Per-rank element counts (rows[r] * row_elems) and displacements (prefix sums) for MPI's
// int-based v-collectives. Throws fathom::Error naming `op` when a row count is negative or a
// count or displacement exceeds INT_MAX.
struct MpiCounts {
  std::vector<int> counts;
  std::vector<int> displs;
};
MpiCounts mpi_row_counts(const char* op, absl::Span<const int64_t> rows, int64_t row_elems);

}  // namespace fathom::parallel
