#include "parallel/local_communicator.h"

#include "kernels/check.h"

namespace fathom::parallel {
namespace {

class DoneWork : public Work {
 public:
  void wait() override {}
};

WorkHandle done() { return std::make_unique<DoneWork>(); }

void check_copy(const char* op, const Tensor& input, const Tensor& output) {
  check_dtype(op, "output", output, input.dtype());
  check_shape(op, "output", output, input.shape());
}

}  // namespace

WorkHandle LocalCommunicator::all_reduce(Tensor& t, ReduceOp) {
  check_defined("all_reduce", "t", t);
  return done();
}

WorkHandle LocalCommunicator::reduce_scatter(const Tensor& input, Tensor& output, ReduceOp) {
  check_copy("reduce_scatter", input, output);
  output.copy_from(input);
  return done();
}

WorkHandle LocalCommunicator::all_gather(const Tensor& input, Tensor& output) {
  check_copy("all_gather", input, output);
  output.copy_from(input);
  return done();
}

WorkHandle LocalCommunicator::all_to_all_v(const Tensor& input, absl::Span<const int64_t> send_rows,
                                           Tensor& output, absl::Span<const int64_t> recv_rows) {
  FATHOM_CHECK(send_rows.size() == 1 && recv_rows.size() == 1 && send_rows[0] == recv_rows[0] &&
               send_rows[0] == input.dim(0))
      << "all_to_all_v: a single rank sends its " << input.dim(0) << " rows to itself";
  check_copy("all_to_all_v", input, output);
  output.copy_from(input);
  return done();
}

WorkHandle LocalCommunicator::send(const Tensor&, int peer, int) {
  FATHOM_CHECK(false) << "send: a communicator of one rank has no peer " << peer;
  return done();
}

WorkHandle LocalCommunicator::recv(Tensor&, int peer, int) {
  FATHOM_CHECK(false) << "recv: a communicator of one rank has no peer " << peer;
  return done();
}

WorkHandle LocalCommunicator::broadcast(Tensor& t, int root) {
  FATHOM_CHECK(root == 0) << "broadcast: root " << root << " of a single-rank communicator";
  check_defined("broadcast", "t", t);
  return done();
}

std::unique_ptr<Communicator> LocalCommunicator::split(int, int) {
  return std::make_unique<LocalCommunicator>();
}

}  // namespace fathom::parallel
