// A communicator of one rank: every collective is a copy (or nothing), with the shape checks of
// the real ones. Lets single-process training run the same code as a multi-rank job, without MPI.
#pragma once

#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace fathom::parallel {

class LocalCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "local"; }

  WorkHandle all_reduce(Tensor& t, ReduceOp op) override;
  WorkHandle reduce_scatter(const Tensor& input, Tensor& output, ReduceOp op) override;
  WorkHandle all_gather(const Tensor& input, Tensor& output) override;
  WorkHandle all_to_all_v(const Tensor& input, absl::Span<const int64_t> send_rows,
                          Tensor& output, absl::Span<const int64_t> recv_rows) override;
  // There is no peer: both throw fathom::Error.
  WorkHandle send(const Tensor& t, int peer, int tag) override;
  WorkHandle recv(Tensor& t, int peer, int tag) override;
  WorkHandle broadcast(Tensor& t, int root) override;
  void barrier() override {}
  std::unique_ptr<Communicator> split(int color, int key) override;
};

}  // namespace fathom::parallel
