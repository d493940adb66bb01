#include "parallel/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include "kernels/check.h"
#include "kernels/cuda/runtime.h"
#include "kernels/device.h"

namespace fathom::parallel {
namespace {

using Clock = std::chrono::steady_clock;

enum class PollOutcome { kDone, kTimedOut, kAbortRequested };

// Polls a non-blocking communicator until `result` (the value an NCCL call returned) is no longer
// ncclInProgress. `result` becomes the final state.
PollOutcome poll_nccl(ncclComm_t comm, ncclResult_t& result, double timeout_s,
                      const std::atomic<bool>* abort_requested) {
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration<double>(timeout_s);
  while (result == ncclInProgress) {
    if (abort_requested != nullptr && abort_requested->load()) return PollOutcome::kAbortRequested;
    const auto now = Clock::now();
    if (now > deadline) return PollOutcome::kTimedOut;
    if (now - start > std::chrono::milliseconds(1)) {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    } else {
      std::this_thread::yield();
    }
    ncclResult_t state = ncclInProgress;
    const ncclResult_t query = ncclCommGetAsyncError(comm, &state);
    result = query != ncclSuccess ? query : state;
  }
  return PollOutcome::kDone;
}

std::string nccl_error_text(ncclResult_t result, ncclComm_t comm) {
  std::string text = ncclGetErrorString(result);
  const char* last = ncclGetLastError(comm);
  if (last != nullptr && *last != '\0') text += std::string(" (") + last + ")";
  return text;
}

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kI32:
      return ncclInt32;
    case DType::kI64:
      return ncclInt64;
    case DType::kF8E4M3:
    case DType::kF8E5M2:
    case DType::kU8:
      return ncclUint8;
  }
  FATHOM_CHECK(false) << "unknown dtype " << static_cast<int>(dtype);
  return ncclUint8;
}

ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::kSum ? ncclSum : ncclMax; }

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

void check_reducible(const char* op, const Tensor& t) {
  const DType d = t.dtype();
  FATHOM_CHECK(d == DType::kF32 || d == DType::kBF16 || d == DType::kI32 || d == DType::kI64)
      << op << " (nccl): cannot reduce " << t.str() << "; reductions take f32, bf16, i32 or i64";
}

// State shared by a communicator and its handles; every NCCL call on `comm` holds `mutex`.
class NcclState {
 public:
  NcclState(ncclComm_t comm, int device, int rank, int size, double timeout_s)
      : comm_(comm), device_(device), rank_(rank), size_(size), timeout_s_(timeout_s) {}

  ~NcclState() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (aborted_) return;
    try {
      flush_locked();
      cuda::set_device(device_);
      call_locked(ncclCommFinalize(comm_), comm_, "ncclCommFinalize(comm)", __FILE__, __LINE__);
      ncclCommDestroy(comm_);
      aborted_ = true;  // the handle is gone
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s (while destroying an NCCL communicator)\n", e.what());
      abort_locked();
    }
  }

  int device() const { return device_; }
  int rank() const { return rank_; }
  int size() const { return size_; }
  double timeout_s() const { return timeout_s_; }
  ncclComm_t comm() const { return comm_; }
  std::mutex& mutex() { return mutex_; }
  bool aborted() const { return aborted_.load() || abort_requested_.load(); }

  void abort() {
    abort_requested_ = true;
    std::lock_guard<std::mutex> lock(mutex_);
    abort_locked();
  }

  // The rest needs mutex() held.

  void abort_locked() {
    if (aborted_) return;
    ncclCommAbort(comm_);
    aborted_ = true;
    pending_.clear();
  }

  void ensure_usable_locked(const char* op) {
    if (abort_requested_) abort_locked();
    FATHOM_CHECK(!aborted_) << op << " (nccl): the communicator was aborted" << where();
  }

  void check_tensor(const char* op, const char* name, const Tensor& t) const {
    FATHOM_CHECK(t.defined()) << op << " (nccl): " << name << " is undefined";
    FATHOM_CHECK(t.device() == Device::cuda(device_))
        << op << " (nccl): " << name << " " << t.str() << " is not on "
        << Device::cuda(device_).str() << ", the communicator's device";
  }

  // Completes an NCCL call on a non-blocking communicator: polls `poll_comm` while the call is in
  // progress. Throws fathom::Error naming the call on failure; aborts on a timeout, on an abort
  // request, and on errors other than bad arguments (which leave the communicator usable).
  void call_locked(ncclResult_t result, ncclComm_t poll_comm, const char* call, const char* file,
                   int line) {
    const PollOutcome outcome = poll_nccl(poll_comm, result, timeout_s_, &abort_requested_);
    if (outcome == PollOutcome::kDone && result == ncclSuccess) return;
    std::ostringstream message;
    if (!error_context().empty()) message << "[" << error_context() << "] ";
    message << file << ":" << line << ": NCCL call failed: " << call << ": ";
    if (outcome == PollOutcome::kTimedOut) {
      message << "did not complete within " << timeout_s_ << " s; communicator aborted";
    } else if (outcome == PollOutcome::kAbortRequested) {
      message << "communicator aborted while the call was in progress";
    } else {
      message << nccl_error_text(result, poll_comm);
    }
    message << where();
    if (outcome != PollOutcome::kDone ||
        (result != ncclInvalidArgument && result != ncclInvalidUsage)) {
      abort_locked();
    }
    throw Error(message.str());
  }

  // Queues a send or recv; returns its sequence number.
  int64_t post_p2p_locked(bool is_send, const Tensor& t, int peer) {
    pending_.push_back({is_send, t, peer, cuda::current_stream(device_)});
    return ++posted_p2p_;
  }
  bool p2p_issued_locked(int64_t seq) const { return seq <= issued_p2p_; }

  // Issues the queued sends and recvs as one NCCL group.
  void flush_locked() {
    if (pending_.empty()) return;
    std::vector<P2p> ops = std::move(pending_);
    pending_.clear();
    issued_p2p_ = posted_p2p_;
    cuda::set_device(device_);
    call_locked(ncclGroupStart(), comm_, "ncclGroupStart()", __FILE__, __LINE__);
    ncclResult_t first_error = ncclSuccess;
    for (P2p& op : ops) {
      const size_t count = static_cast<size_t>(op.t.numel());
      const ncclResult_t r = op.is_send ? ncclSend(op.t.raw_data(), count, nccl_type(op.t.dtype()),
                                                   op.peer, comm_, op.stream)
                                        : ncclRecv(op.t.raw_data(), count, nccl_type(op.t.dtype()),
                                                   op.peer, comm_, op.stream);
      if (r != ncclSuccess && r != ncclInProgress && first_error == ncclSuccess) first_error = r;
    }
    call_locked(ncclGroupEnd(), comm_, "ncclGroupEnd() of send/recv", __FILE__, __LINE__);
    call_locked(first_error, comm_, "ncclSend/ncclRecv", __FILE__, __LINE__);
  }

  // Throws when the communicator reports an asynchronous error (a failed peer, a network error).
  void check_async_locked(const char* op) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t query = ncclCommGetAsyncError(comm_, &state);
    const ncclResult_t result = query != ncclSuccess ? query : state;
    if (result == ncclSuccess || result == ncclInProgress) return;
    const std::string text = nccl_error_text(result, comm_);
    abort_locked();
    FATHOM_CHECK(false) << op << " (nccl): asynchronous NCCL error " << text
                        << "; communicator aborted" << where();
  }

  // Device scratch for barrier().
  Tensor& scratch_locked() {
    if (!scratch_.defined()) scratch_ = Tensor::zeros({1}, DType::kF32, Device::cuda(device_));
    return scratch_;
  }

  std::string where() const {
    return " (nccl rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ", " +
           Device::cuda(device_).str() + ")";
  }

 private:
  struct P2p {
    bool is_send;
    Tensor t;
    int peer;
    cuda::Stream stream;
  };

  std::mutex mutex_;
  ncclComm_t comm_;
  const int device_, rank_, size_;
  const double timeout_s_;
  std::atomic<bool> abort_requested_{false};
  std::atomic<bool> aborted_{false};
  std::vector<P2p> pending_;
  int64_t posted_p2p_ = 0;
  int64_t issued_p2p_ = 0;
  Tensor scratch_;
};

// Runs an NCCL call on `state`'s communicator (mutex held) and completes it, or throws.
#define FATHOM_NCCL_CALL(state, call) \
  (state).call_locked((call), (state).comm(), #call, __FILE__, __LINE__)

class NcclWork final : public Work {
 public:
  // p2p_seq: the sequence number of a queued send/recv, or 0 for an operation already enqueued.
  NcclWork(std::shared_ptr<NcclState> state, const char* op, std::vector<Tensor> buffers,
           int64_t p2p_seq)
      : state_(std::move(state)), op_(op), buffers_(std::move(buffers)), p2p_seq_(p2p_seq) {}
  ~NcclWork() override {
    if (done_) return;
    try {
      wait();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s (while destroying an un-waited %s handle)\n", e.what(), op_);
    }
  }

  void wait() override {
    if (done_) return;
    done_ = true;
    std::lock_guard<std::mutex> lock(state_->mutex());
    state_->ensure_usable_locked(op_);
    if (p2p_seq_ > 0 && !state_->p2p_issued_locked(p2p_seq_)) state_->flush_locked();
    state_->check_async_locked(op_);
    buffers_.clear();
  }

 private:
  std::shared_ptr<NcclState> state_;
  const char* op_;
  std::vector<Tensor> buffers_;
  int64_t p2p_seq_;
  bool done_ = false;
};

class NcclCommunicatorImpl final : public NcclCommunicator {
 public:
  explicit NcclCommunicatorImpl(std::shared_ptr<NcclState> state) : state_(std::move(state)) {}

  int rank() const override { return state_->rank(); }
  int size() const override { return state_->size(); }
  std::string backend() const override { return "nccl"; }
  void abort() override { state_->abort(); }
  bool aborted() const override { return state_->aborted(); }
  int device() const override { return state_->device(); }

  WorkHandle all_reduce(Tensor& t, ReduceOp op) override {
    NcclState& s = *state_;
    s.check_tensor("all_reduce", "tensor", t);
    check_reducible("all_reduce", t);
    return enqueue("all_reduce", {t}, [&](cudaStream_t stream) {
      FATHOM_NCCL_CALL(s, ncclAllReduce(t.raw_data(), t.raw_data(), static_cast<size_t>(t.numel()),
                                        nccl_type(t.dtype()), nccl_op(op), s.comm(), stream));
    });
  }

  WorkHandle reduce_scatter(const Tensor& input, Tensor& output, ReduceOp op) override {
    NcclState& s = *state_;
    s.check_tensor("reduce_scatter", "input", input);
    s.check_tensor("reduce_scatter", "output", output);
    check_reducible("reduce_scatter", input);
    FATHOM_CHECK(input.dtype() == output.dtype() && same_rows(input, output) &&
                 input.dim(0) == static_cast<int64_t>(s.size()) * output.dim(0))
        << "reduce_scatter (nccl): input " << input.str() << " must be (size * n, ...) for output "
        << output.str() << " (n, ...), size " << s.size() << ", same dtype";
    return enqueue("reduce_scatter", {input, output}, [&](cudaStream_t stream) {
      FATHOM_NCCL_CALL(
          s, ncclReduceScatter(input.raw_data(), output.raw_data(),
                               static_cast<size_t>(output.numel()), nccl_type(input.dtype()),
                               nccl_op(op), s.comm(), stream));
    });
  }

  WorkHandle all_gather(const Tensor& input, Tensor& output) override {
    NcclState& s = *state_;
    s.check_tensor("all_gather", "input", input);
    s.check_tensor("all_gather", "output", output);
    FATHOM_CHECK(input.dtype() == output.dtype() && same_rows(input, output) &&
                 output.dim(0) == static_cast<int64_t>(s.size()) * input.dim(0))
        << "all_gather (nccl): output " << output.str() << " must be (size * n, ...) for input "
        << input.str() << " (n, ...), size " << s.size() << ", same dtype";
    return enqueue("all_gather", {input, output}, [&](cudaStream_t stream) {
      FATHOM_NCCL_CALL(
          s, ncclAllGather(input.raw_data(), output.raw_data(), static_cast<size_t>(input.numel()),
                           nccl_type(input.dtype()), s.comm(), stream));
    });
  }

  WorkHandle all_to_all_v(const Tensor& input, absl::Span<const int64_t> send_rows, Tensor& output,
                          absl::Span<const int64_t> recv_rows) override {
    NcclState& s = *state_;
    s.check_tensor("all_to_all_v", "input", input);
    s.check_tensor("all_to_all_v", "output", output);
    FATHOM_CHECK(input.dtype() == output.dtype() && same_rows(input, output))
        << "all_to_all_v (nccl): input " << input.str() << " and output " << output.str()
        << " must have the same dtype and row shape";
    FATHOM_CHECK(static_cast<int>(send_rows.size()) == s.size() &&
                 static_cast<int>(recv_rows.size()) == s.size())
        << "all_to_all_v (nccl): " << send_rows.size() << " send and " << recv_rows.size()
        << " recv row counts for " << s.size() << " ranks";
    int64_t send_total = 0, recv_total = 0;
    bool non_negative = true;
    for (int r = 0; r < s.size(); ++r) {
      send_total += send_rows[r];
      recv_total += recv_rows[r];
      non_negative = non_negative && send_rows[r] >= 0 && recv_rows[r] >= 0;
    }
    FATHOM_CHECK(non_negative && send_total == input.dim(0) && recv_total == output.dim(0))
        << "all_to_all_v (nccl): send rows sum to " << send_total << " for input " << input.str()
        << ", recv rows sum to " << recv_total << " for output " << output.str()
        << " (row counts must be >= 0)";
    const size_t row_bytes = static_cast<size_t>(row_elems(input)) * dtype_size(input.dtype());
    const size_t row_count = static_cast<size_t>(row_elems(input));
    const ncclDataType_t type = nccl_type(input.dtype());
    return enqueue("all_to_all_v", {input, output}, [&](cudaStream_t stream) {
      FATHOM_NCCL_CALL(s, ncclGroupStart());
      const char* in = static_cast<const char*>(input.raw_data());
      char* out = static_cast<char*>(output.raw_data());
      ncclResult_t first_error = ncclSuccess;
      auto note = [&](ncclResult_t r) {
        if (r != ncclSuccess && r != ncclInProgress && first_error == ncclSuccess) first_error = r;
      };
      for (int r = 0; r < s.size(); ++r) {
        if (send_rows[r] > 0) {
          note(ncclSend(in, static_cast<size_t>(send_rows[r]) * row_count, type, r, s.comm(),
                        stream));
        }
        if (recv_rows[r] > 0) {
          note(ncclRecv(out, static_cast<size_t>(recv_rows[r]) * row_count, type, r, s.comm(),
                        stream));
        }
        in += static_cast<size_t>(send_rows[r]) * row_bytes;
        out += static_cast<size_t>(recv_rows[r]) * row_bytes;
      }
      FATHOM_NCCL_CALL(s, ncclGroupEnd());
      s.call_locked(first_error, s.comm(), "ncclSend/ncclRecv of all_to_all_v", __FILE__, __LINE__);
    });
  }

  WorkHandle send(const Tensor& t, int peer, int tag) override {
    return post_p2p("send", /*is_send=*/true, t, peer, tag);
  }
  WorkHandle recv(Tensor& t, int peer, int tag) override {
    return post_p2p("recv", /*is_send=*/false, t, peer, tag);
  }

  WorkHandle broadcast(Tensor& t, int root) override {
    NcclState& s = *state_;
    s.check_tensor("broadcast", "tensor", t);
    FATHOM_CHECK(root >= 0 && root < s.size())
        << "broadcast (nccl): root " << root << " is not a rank of " << s.size();
    return enqueue("broadcast", {t}, [&](cudaStream_t stream) {
      FATHOM_NCCL_CALL(s, ncclBroadcast(t.raw_data(), t.raw_data(), static_cast<size_t>(t.numel()),
                                        nccl_type(t.dtype()), root, s.comm(), stream));
    });
  }

  // An all-reduce of one value, then a wait for the stream (polled: a timeout or an abort ends it).
  void barrier() override {
    NcclState& s = *state_;
    cudaStream_t stream = nullptr;
    {
      std::lock_guard<std::mutex> lock(s.mutex());
      s.ensure_usable_locked("barrier");
      s.flush_locked();
      cuda::set_device(s.device());
      stream = cuda::current_stream(s.device());
      Tensor& one = s.scratch_locked();
      FATHOM_NCCL_CALL(s, ncclAllReduce(one.raw_data(), one.raw_data(), 1, ncclFloat32, ncclSum,
                                        s.comm(), stream));
    }
    const auto deadline = Clock::now() + std::chrono::duration<double>(s.timeout_s());
    while (true) {
      const cudaError_t e = cudaStreamQuery(stream);
      // An aborted all-reduce ends too: after an abort the barrier fails, whatever the stream says.
      FATHOM_CHECK(!s.aborted()) << "barrier (nccl): the communicator was aborted" << s.where();
      if (e == cudaSuccess) return;
      FATHOM_CHECK(e == cudaErrorNotReady)
          << "barrier (nccl): cudaStreamQuery: " << cudaGetErrorString(e) << s.where();
      if (Clock::now() > deadline) {
        s.abort();
        FATHOM_CHECK(false) << "barrier (nccl): not complete within " << s.timeout_s()
                            << " s; communicator aborted" << s.where();
      }
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

  std::unique_ptr<Communicator> split(int color, int key) override {
    NcclState& s = *state_;
    std::lock_guard<std::mutex> lock(s.mutex());
    s.ensure_usable_locked("split");
    s.flush_locked();
    cuda::set_device(s.device());
    ncclComm_t sub = nullptr;
    const ncclResult_t r =
        ncclCommSplit(s.comm(), color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &sub, nullptr);
    s.call_locked(r, sub != nullptr ? sub : s.comm(), "ncclCommSplit(comm, color, key, &sub)",
                  __FILE__, __LINE__);
    if (sub == nullptr) return nullptr;
    int sub_rank = 0, sub_size = 0;
    if (ncclCommUserRank(sub, &sub_rank) != ncclSuccess ||
        ncclCommCount(sub, &sub_size) != ncclSuccess) {
      ncclCommAbort(sub);
      FATHOM_CHECK(false) << "split (nccl): cannot query the new communicator" << s.where();
    }
    return std::make_unique<NcclCommunicatorImpl>(
        std::make_shared<NcclState>(sub, s.device(), sub_rank, sub_size, s.timeout_s()));
  }

 private:
  template <typename F>
  WorkHandle enqueue(const char* op, std::vector<Tensor> buffers, F&& body) {
    NcclState& s = *state_;
    std::lock_guard<std::mutex> lock(s.mutex());
    s.ensure_usable_locked(op);
    s.flush_locked();  // earlier send/recv go first, in posting order
    cuda::set_device(s.device());
    body(cuda::current_stream(s.device()));
    return std::make_unique<NcclWork>(state_, op, std::move(buffers), 0);
  }

  WorkHandle post_p2p(const char* op, bool is_send, const Tensor& t, int peer, int tag) {
    NcclState& s = *state_;
    s.check_tensor(op, "tensor", t);
    FATHOM_CHECK(peer >= 0 && peer < s.size())
        << op << " (nccl): peer " << peer << " is not a rank of " << s.size();
    FATHOM_CHECK(tag >= 0) << op << " (nccl): negative tag " << tag;
    std::lock_guard<std::mutex> lock(s.mutex());
    s.ensure_usable_locked(op);
    const int64_t seq = s.post_p2p_locked(is_send, t, peer);
    return std::make_unique<NcclWork>(state_, op, std::vector<Tensor>{t}, seq);
  }

  std::shared_ptr<NcclState> state_;
};

// An empty string when `device` can run NCCL here, else why not.
std::string device_problem(int device) {
  const int count = cuda::device_count();
  if (count == 0) return "no CUDA device (or no driver): NCCL needs a GPU";
  if (device < 0 || device >= count) {
    return "CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(count) +
           " visible)";
  }
  return "";
}

absl::StatusOr<std::unique_ptr<Communicator>> join(const ncclUniqueId& id, int rank, int size,
                                                   int device, double timeout_s) {
  cuda::set_device(device);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  ncclResult_t result = ncclCommInitRankConfig(&comm, size, id, rank, &config);
  const std::string what = "ncclCommInitRankConfig (rank " + std::to_string(rank) + " of " +
                           std::to_string(size) + ", cuda:" + std::to_string(device) + ")";
  const PollOutcome outcome =
      comm != nullptr ? poll_nccl(comm, result, timeout_s, nullptr) : PollOutcome::kDone;
  if (outcome == PollOutcome::kTimedOut) {
    ncclCommAbort(comm);
    return absl::DeadlineExceededError(what + " did not complete within " +
                                       std::to_string(timeout_s) + " s; are all ranks running?");
  }
  if (result != ncclSuccess) {
    const std::string text = nccl_error_text(result, comm);
    if (comm != nullptr) ncclCommAbort(comm);
    return absl::InternalError(what + " failed: " + text);
  }
  return std::unique_ptr<Communicator>(std::make_unique<NcclCommunicatorImpl>(
      std::make_shared<NcclState>(comm, device, rank, size, timeout_s)));
}

}  // namespace

bool nccl_built() { return true; }

absl::StatusOr<std::unique_ptr<Communicator>> make_nccl_communicator(Communicator& bootstrap,
                                                                     int device, double timeout_s) {
  if (bootstrap.backend() == "nccl") {
    return absl::InvalidArgumentError(
        "make_nccl_communicator: the bootstrap communicator must work on host tensors (mpi), "
        "not nccl");
  }
  // Every rank learns whether every rank can join, so that none waits for a rank that gave up.
  const std::string problem = device_problem(device);
  Tensor failed = Tensor::from_vector<int32_t>({problem.empty() ? 0 : 1}, {1});
  all_reduce_sync(bootstrap, failed, ReduceOp::kMax);
  if (failed.data<int32_t>()[0] != 0) {
    return absl::FailedPreconditionError(
        "make_nccl_communicator: " +
        (problem.empty() ? std::string("another rank cannot use its CUDA device (see its error)")
                         : "rank " + std::to_string(bootstrap.rank()) + ": " + problem));
  }
  // Byte 0: 0 when rank 0 created the id; then the id.
  Tensor message = Tensor::zeros({1 + static_cast<int64_t>(sizeof(ncclUniqueId))}, DType::kU8);
  uint8_t* bytes = message.data<uint8_t>();
  std::string id_error;
  if (bootstrap.rank() == 0) {
    ncclUniqueId id;
    const ncclResult_t r = ncclGetUniqueId(&id);
    if (r == ncclSuccess) {
      std::memcpy(bytes + 1, &id, sizeof id);
    } else {
      bytes[0] = 1;
      id_error = nccl_error_text(r, nullptr);
    }
  }
  bootstrap.broadcast(message, 0)->wait();
  if (bytes[0] != 0) {
    return absl::InternalError("make_nccl_communicator: ncclGetUniqueId failed on rank 0" +
                               (id_error.empty() ? std::string() : ": " + id_error));
  }
  ncclUniqueId id;
  std::memcpy(&id, bytes + 1, sizeof id);
  return join(id, bootstrap.rank(), bootstrap.size(), device, timeout_s);
}

absl::StatusOr<std::unique_ptr<Communicator>> make_nccl_communicator_from_file(
    const std::string& id_path, int rank, int size, int device, double timeout_s) {
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError("make_nccl_communicator_from_file: rank " +
                                      std::to_string(rank) + " of " + std::to_string(size));
  }
  if (const std::string problem = device_problem(device); !problem.empty()) {
    return absl::FailedPreconditionError("make_nccl_communicator_from_file: rank " +
                                         std::to_string(rank) + ": " + problem);
  }
  std::string id_bytes;
  if (rank == 0) {
    ncclUniqueId id;
    const ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess) {
      return absl::InternalError("ncclGetUniqueId failed: " + nccl_error_text(r, nullptr));
    }
    id_bytes.assign(reinterpret_cast<const char*>(&id), sizeof id);
  }
  absl::StatusOr<std::string> shared =
      exchange_bytes_through_file(id_path, rank, id_bytes, sizeof(ncclUniqueId), timeout_s);
  if (!shared.ok()) return shared.status();
  ncclUniqueId id;
  std::memcpy(&id, shared->data(), sizeof id);
  absl::StatusOr<std::unique_ptr<Communicator>> comm = join(id, rank, size, device, timeout_s);
  // Every rank has read the id once the communicator exists (creation needs them all).
  if (rank == 0) std::remove(id_path.c_str());
  return comm;
}

}  // namespace fathom::parallel
