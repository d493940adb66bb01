#include "parallel/mpi_communicator.h"

#include <climits>
#include <cstdio>
#include <functional>
#include <utility>

#include "kernels/check.h"
#include "kernels/dtype.h"
#include "parallel/mpi_env.h"

namespace fathom::parallel {
namespace {

bool mpi_is_finalized() {
  int flag = 0;
  MPI_Finalized(&flag);
  return flag != 0;
}

// Completes a set of MPI requests, then runs `on_complete` (bf16 results are converted back
// there). Holds the tensors whose buffers MPI reads or writes until then.
class MpiWork final : public Work {
 public:
  MpiWork(const char* op, std::vector<Tensor> buffers) : op_(op), buffers_(std::move(buffers)) {}
  ~MpiWork() override {
    if (done_) return;
    try {
      wait();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s (while destroying an un-waited %s handle)\n", e.what(), op_);
    }
  }

  MPI_Request* add_request() {
    requests_.push_back(MPI_REQUEST_NULL);
    return &requests_.back();
  }
  void set_on_complete(std::function<void()> f) { on_complete_ = std::move(f); }
  // recv: the element count the message must have, in units of `type`.
  void expect_count(MPI_Datatype type, int64_t count, int peer, int tag) {
    expect_type_ = type;
    expect_count_ = count;
    expect_peer_ = peer;
    expect_tag_ = tag;
  }
  // MPI keeps pointers to count arrays of v-collectives until completion.
  MpiCounts& counts(int i) { return counts_[i]; }

  void wait() override {
    if (done_) return;
    done_ = true;  // even when the wait fails: never wait on freed requests again
    std::vector<MPI_Status> statuses(requests_.size());
    FATHOM_MPI_CHECK(
        MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), statuses.data()));
    if (expect_count_ >= 0) {
      int received = 0;
      FATHOM_MPI_CHECK(MPI_Get_count(&statuses[0], expect_type_, &received));
      FATHOM_CHECK(received == expect_count_)
          << op_ << " (mpi): expected " << expect_count_ << " elements from rank " << expect_peer_
          << " with tag " << expect_tag_ << ", the message has " << received;
    }
    if (on_complete_) on_complete_();
    buffers_.clear();
  }

 private:
  const char* op_;
  std::vector<Tensor> buffers_;
  std::vector<MPI_Request> requests_;
  std::function<void()> on_complete_;
  MPI_Datatype expect_type_ = MPI_DATATYPE_NULL;
  int64_t expect_count_ = -1;
  int expect_peer_ = -1;
  int expect_tag_ = -1;
  MpiCounts counts_[2];
  bool done_ = false;
};

MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return MPI_FLOAT;
    case DType::kBF16:
      return MPI_UINT16_T;
    case DType::kF8E4M3:
    case DType::kF8E5M2:
    case DType::kU8:
      return MPI_UINT8_T;
    case DType::kI32:
      return MPI_INT32_T;
    case DType::kI64:
      return MPI_INT64_T;
  }
  FATHOM_CHECK(false) << "unknown dtype " << static_cast<int>(dtype);
  return MPI_DATATYPE_NULL;
}

MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::kSum ? MPI_SUM : MPI_MAX; }

int checked_count(const char* op, int64_t count) {
  FATHOM_CHECK(count <= INT_MAX) << op << " (mpi): " << count
                                 << " elements exceed MPI's int count limit (" << INT_MAX << ")";
  return static_cast<int>(count);
}

void check_host(const char* op, const char* name, const Tensor& t) {
  FATHOM_CHECK(t.defined()) << op << " (mpi): " << name << " is undefined";
  FATHOM_CHECK(t.device().is_cpu()) << op << " (mpi): " << name << " " << t.str()
                                    << " is not on the host; MpiCommunicator works on host tensors";
}

void check_reducible(const char* op, const Tensor& t) {
  const DType d = t.dtype();
  FATHOM_CHECK(d == DType::kF32 || d == DType::kBF16 || d == DType::kI32 || d == DType::kI64)
      << op << " (mpi): cannot reduce " << t.str() << "; reductions take f32, bf16, i32 or i64";
}

// Elements per row of dim 0 (the product of the other dims).
int64_t row_elems(const Tensor& t) {
  int64_t n = 1;
  for (int i = 1; i < t.ndim(); ++i) n *= t.dim(i);
  return n;
}

bool same_rows(const Tensor& a, const Tensor& b) {
  if (a.ndim() != b.ndim() || a.ndim() < 1) return false;
  for (int i = 1; i < a.ndim(); ++i) {
    if (a.dim(i) != b.dim(i)) return false;
  }
  return true;
}

Tensor bf16_to_f32(const Tensor& t) {
  Tensor f = Tensor::empty(t.shape(), DType::kF32);
  const bf16* src = t.data<bf16>();
  float* dst = f.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) dst[i] = bf16_to_float(src[i]);
  return f;
}

void f32_to_bf16_into(const Tensor& f, Tensor& t) {
  const float* src = f.data<float>();
  bf16* dst = t.data<bf16>();
  for (int64_t i = 0; i < t.numel(); ++i) dst[i] = float_to_bf16(src[i]);
}

}  // namespace

MpiCounts mpi_row_counts(const char* op, absl::Span<const int64_t> rows, int64_t row_elems) {
  MpiCounts c;
  int64_t offset = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    FATHOM_CHECK(rows[r] >= 0) << op << " (mpi): negative row count " << rows[r] << " for rank "
                               << r;
    const int64_t count = rows[r] * row_elems;
    FATHOM_CHECK(offset <= INT_MAX && count <= INT_MAX)
        << op << " (mpi): " << rows[r] << " rows of " << row_elems << " elements for rank " << r
        << " at element offset " << offset << " exceed MPI's int count limit (" << INT_MAX
        << "); send fewer rows per call";
    c.counts.push_back(static_cast<int>(count));
    c.displs.push_back(static_cast<int>(offset));
    offset += count;
  }
  return c;
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
  FATHOM_CHECK(comm != MPI_COMM_NULL) << "MpiCommunicator: MPI_COMM_NULL";
  FATHOM_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  FATHOM_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  FATHOM_MPI_CHECK(MPI_Comm_size(comm_, &size_));
  int* tag_ub = nullptr;
  int found = 0;
  FATHOM_MPI_CHECK(MPI_Comm_get_attr(comm_, MPI_TAG_UB, &tag_ub, &found));
  if (found && tag_ub != nullptr) tag_ub_ = *tag_ub;
}

MpiCommunicator::~MpiCommunicator() {
  if (owned_ && comm_ != MPI_COMM_WORLD && comm_ != MPI_COMM_SELF && !mpi_is_finalized()) {
    MPI_Comm_free(&comm_);
  }
}

WorkHandle MpiCommunicator::all_reduce(Tensor& t, ReduceOp op) {
  check_host("all_reduce", "tensor", t);
  check_reducible("all_reduce", t);
  const int count = checked_count("all_reduce", t.numel());
  if (t.dtype() == DType::kBF16) {
    Tensor f = bf16_to_f32(t);
    auto work = std::make_unique<MpiWork>("all_reduce", std::vector<Tensor>{t, f});
    FATHOM_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, f.raw_data(), count, MPI_FLOAT, mpi_op(op), comm_,
                                    work->add_request()));
    work->set_on_complete([f, t]() mutable { f32_to_bf16_into(f, t); });
    return work;
  }
  auto work = std::make_unique<MpiWork>("all_reduce", std::vector<Tensor>{t});
  FATHOM_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, t.raw_data(), count, mpi_type(t.dtype()),
                                  mpi_op(op), comm_, work->add_request()));
  return work;
}

WorkHandle MpiCommunicator::reduce_scatter(const Tensor& input, Tensor& output, ReduceOp op) {
  check_host("reduce_scatter", "input", input);
  check_host("reduce_scatter", "output", output);
  check_reducible("reduce_scatter", input);
  FATHOM_CHECK(input.dtype() == output.dtype() && same_rows(input, output) &&
               input.dim(0) == static_cast<int64_t>(size_) * output.dim(0))
      << "reduce_scatter (mpi): input " << input.str() << " must be (size * n, ...) for output "
      << output.str() << " (n, ...), size " << size_ << ", same dtype";
  const int count = checked_count("reduce_scatter", output.numel());
  checked_count("reduce_scatter", input.numel());
  if (input.dtype() == DType::kBF16) {
    Tensor in_f = bf16_to_f32(input);
    Tensor out_f = Tensor::empty(output.shape(), DType::kF32);
    auto work =
        std::make_unique<MpiWork>("reduce_scatter", std::vector<Tensor>{in_f, out_f, output});
    FATHOM_MPI_CHECK(MPI_Ireduce_scatter_block(in_f.raw_data(), out_f.raw_data(), count, MPI_FLOAT,
                                               mpi_op(op), comm_, work->add_request()));
    work->set_on_complete([out_f, output]() mutable { f32_to_bf16_into(out_f, output); });
    return work;
  }
  auto work = std::make_unique<MpiWork>("reduce_scatter", std::vector<Tensor>{input, output});
  FATHOM_MPI_CHECK(MPI_Ireduce_scatter_block(input.raw_data(), output.raw_data(), count,
                                             mpi_type(input.dtype()), mpi_op(op), comm_,
                                             work->add_request()));
  return work;
}

WorkHandle MpiCommunicator::all_gather(const Tensor& input, Tensor& output) {
  check_host("all_gather", "input", input);
  check_host("all_gather", "output", output);
  FATHOM_CHECK(input.dtype() == output.dtype() && same_rows(input, output) &&
               output.dim(0) == static_cast<int64_t>(size_) * input.dim(0))
      << "all_gather (mpi): output " << output.str() << " must be (size * n, ...) for input "
      << input.str() << " (n, ...), size " << size_ << ", same dtype";
  const int count = checked_count("all_gather", input.numel());
  checked_count("all_gather", output.numel());
  const char* own_rows =
      static_cast<const char*>(output.raw_data()) + static_cast<size_t>(rank_) * input.nbytes();
  const bool in_place = input.numel() > 0 && input.raw_data() == own_rows;
  auto work = std::make_unique<MpiWork>("all_gather", std::vector<Tensor>{input, output});
  FATHOM_MPI_CHECK(MPI_Iallgather(in_place ? MPI_IN_PLACE : input.raw_data(), count,
                                  mpi_type(input.dtype()), output.raw_data(), count,
                                  mpi_type(output.dtype()), comm_, work->add_request()));
  return work;
}

WorkHandle MpiCommunicator::all_to_all_v(const Tensor& input, absl::Span<const int64_t> send_rows,
                                         Tensor& output, absl::Span<const int64_t> recv_rows) {
  check_host("all_to_all_v", "input", input);
  check_host("all_to_all_v", "output", output);
  FATHOM_CHECK(input.dtype() == output.dtype() && same_rows(input, output))
      << "all_to_all_v (mpi): input " << input.str() << " and output " << output.str()
      << " must have the same dtype and row shape";
  FATHOM_CHECK(static_cast<int>(send_rows.size()) == size_ &&
               static_cast<int>(recv_rows.size()) == size_)
      << "all_to_all_v (mpi): " << send_rows.size() << " send and " << recv_rows.size()
      << " recv row counts for " << size_ << " ranks";
  int64_t send_total = 0, recv_total = 0;
  for (int64_t r : send_rows) send_total += r;
  for (int64_t r : recv_rows) recv_total += r;
  FATHOM_CHECK(send_total == input.dim(0) && recv_total == output.dim(0))
      << "all_to_all_v (mpi): send rows sum to " << send_total << " for input " << input.str()
      << ", recv rows sum to " << recv_total << " for output " << output.str();
  const int64_t elems = row_elems(input);
  auto work = std::make_unique<MpiWork>("all_to_all_v", std::vector<Tensor>{input, output});
  MpiCounts& send = work->counts(0);
  MpiCounts& recv = work->counts(1);
  send = mpi_row_counts("all_to_all_v", send_rows, elems);
  recv = mpi_row_counts("all_to_all_v", recv_rows, elems);
  const MPI_Datatype type = mpi_type(input.dtype());
  FATHOM_MPI_CHECK(MPI_Ialltoallv(input.raw_data(), send.counts.data(), send.displs.data(), type,
                                  output.raw_data(), recv.counts.data(), recv.displs.data(), type,
                                  comm_, work->add_request()));
  return work;
}

WorkHandle MpiCommunicator::send(const Tensor& t, int peer, int tag) {
  check_host("send", "tensor", t);
  FATHOM_CHECK(peer >= 0 && peer < size_)
      << "send (mpi): peer " << peer << " is not a rank of " << size_;
  FATHOM_CHECK(tag >= 0 && tag <= tag_ub_)
      << "send (mpi): tag " << tag << " outside 0.." << tag_ub_;
  const int count = checked_count("send", t.numel());
  auto work = std::make_unique<MpiWork>("send", std::vector<Tensor>{t});
  FATHOM_MPI_CHECK(
      MPI_Isend(t.raw_data(), count, mpi_type(t.dtype()), peer, tag, comm_, work->add_request()));
  return work;
}

WorkHandle MpiCommunicator::recv(Tensor& t, int peer, int tag) {
  check_host("recv", "tensor", t);
  FATHOM_CHECK(peer >= 0 && peer < size_)
      << "recv (mpi): peer " << peer << " is not a rank of " << size_;
  FATHOM_CHECK(tag >= 0 && tag <= tag_ub_)
      << "recv (mpi): tag " << tag << " outside 0.." << tag_ub_;
  const int count = checked_count("recv", t.numel());
  auto work = std::make_unique<MpiWork>("recv", std::vector<Tensor>{t});
  const MPI_Datatype type = mpi_type(t.dtype());
  FATHOM_MPI_CHECK(MPI_Irecv(t.raw_data(), count, type, peer, tag, comm_, work->add_request()));
  work->expect_count(type, count, peer, tag);
  return work;
}

WorkHandle MpiCommunicator::broadcast(Tensor& t, int root) {
  check_host("broadcast", "tensor", t);
  FATHOM_CHECK(root >= 0 && root < size_)
      << "broadcast (mpi): root " << root << " is not a rank of " << size_;
  const int count = checked_count("broadcast", t.numel());
  auto work = std::make_unique<MpiWork>("broadcast", std::vector<Tensor>{t});
  FATHOM_MPI_CHECK(
      MPI_Ibcast(t.raw_data(), count, mpi_type(t.dtype()), root, comm_, work->add_request()));
  return work;
}

void MpiCommunicator::barrier() { FATHOM_MPI_CHECK(MPI_Barrier(comm_)); }

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) {
  MPI_Comm sub = MPI_COMM_NULL;
  FATHOM_MPI_CHECK(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &sub));
  if (sub == MPI_COMM_NULL) return nullptr;
  return std::make_unique<MpiCommunicator>(sub, /*owned=*/true);
}

}  // namespace fathom::parallel
