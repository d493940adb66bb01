// Communicator tests at any world size (parallel_tests runs them at 1, 2 and 4 ranks).
//
// CommunicatorTest runs every case on MpiCommunicator (host tensors, the world) and on
// NcclCommunicator (device tensors; skipped without a GPU). Values encode the source rank (and
// for all_to_all_v the destination and the row), so a misrouted or misreduced element fails an
// exact comparison. Every rank runs the same collectives in the same order; shape errors are
// raised before anything is sent, on every rank alike.
#include "parallel/communicator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "kernels/device.h"
#include "kernels/dtype.h"
#include "kernels/tensor.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_env.h"
#include "parallel/nccl_communicator.h"

namespace fathom::parallel {
namespace {

using ::testing::HasSubstr;

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

// The NCCL communicator of this rank's GPU, shared by the NCCL cases (created once: creation is
// slow). Ranks beyond the number of GPUs get nullptr (NCCL needs one device per rank).
Communicator* nccl_world() {
  static Communicator* comm = []() -> Communicator* {
    const int gpus = cuda_device_count();
    Communicator& world = world_communicator();
    std::unique_ptr<Communicator> members = world.split(world.rank() < gpus ? 0 : -1, 0);
    if (members == nullptr) return nullptr;
    absl::StatusOr<std::unique_ptr<Communicator>> nccl =
        make_nccl_communicator(*members, world.rank() % gpus);
    FATHOM_CHECK(nccl.ok()) << nccl.status().ToString();
    return nccl->release();
  }();
  return comm;
}

class CommunicatorTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "mpi") {
      comm_ = &world_communicator();
      return;
    }
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: NCCL needs a GPU";
    if (!nccl_built()) GTEST_SKIP() << "built without NCCL";
    comm_ = nccl_world();
    if (comm_ == nullptr) GTEST_SKIP() << "more ranks than GPUs: this rank has none";
    device_ = Device::cuda(dynamic_cast<NcclCommunicator&>(*comm_).device());
  }

  Communicator& comm() { return *comm_; }
  int rank() { return comm_->rank(); }
  int size() { return comm_->size(); }

  template <typename T>
  Tensor make(const std::vector<T>& values, std::vector<int64_t> shape) {
    return Tensor::from_vector<T>(values, shape, device_);
  }
  Tensor make_bf16(const std::vector<float>& values, std::vector<int64_t> shape) {
    return Tensor::from_floats(values, shape, DType::kBF16, device_);
  }

  Communicator* comm_ = nullptr;
  Device device_ = Device::cpu();
};

TEST_P(CommunicatorTest, AllReduceSumAndMaxF32) {
  const int r = rank(), w = size(), n = 37;
  std::vector<float> x(n), y(n);
  for (int i = 0; i < n; ++i) {
    x[i] = r * 1000.0f + i;
    y[i] = (i % 2 ? 1.0f : -1.0f) * (r * 1000.0f + i);  // max: the last rank's odd, rank 0's even
  }
  Tensor tx = make(x, {n}), ty = make(y, {n});
  all_reduce_sync(comm(), tx, ReduceOp::kSum);
  all_reduce_sync(comm(), ty, ReduceOp::kMax);
  const std::vector<float> sx = tx.to_vector<float>(), sy = ty.to_vector<float>();
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(sx[i], 1000.0f * (w * (w - 1) / 2) + static_cast<float>(w) * i) << "i=" << i;
    EXPECT_EQ(sy[i], i % 2 ? (w - 1) * 1000.0f + i : -static_cast<float>(i)) << "i=" << i;
  }
}

TEST_P(CommunicatorTest, AllReduceSumAndMaxBf16) {
  const int r = rank(), w = size(), n = 20;
  std::vector<float> x(n), y(n);
  for (int i = 0; i < n; ++i) {
    x[i] = static_cast<float>(1 << r) * (i % 5 + 1);  // sums stay small integers: exact in bf16
    y[i] = (i % 2 ? 1.0f : -1.0f) * (r + 1) * (i % 3 + 1);
  }
  Tensor tx = make_bf16(x, {4, 5}), ty = make_bf16(y, {4, 5});
  all_reduce_sync(comm(), tx, ReduceOp::kSum);
  all_reduce_sync(comm(), ty, ReduceOp::kMax);
  const std::vector<float> sx = tx.to_floats(), sy = ty.to_floats();
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(sx[i], static_cast<float>((1 << w) - 1) * (i % 5 + 1)) << "i=" << i;
    EXPECT_EQ(sy[i], i % 2 ? static_cast<float>(w * (i % 3 + 1)) : -(i % 3 + 1.0f)) << "i=" << i;
  }
}

TEST_P(CommunicatorTest, AllReduceIntegers) {
  const int r = rank(), w = size(), n = 11;
  const int64_t big = int64_t{1} << 33;  // beyond 32 bits: a truncation to i32 would show
  std::vector<int32_t> a(n), b(n);
  std::vector<int64_t> c(n), d(n);
  for (int i = 0; i < n; ++i) {
    a[i] = r * 1000 + i;
    b[i] = (i % 2 ? 1 : -1) * (r * 1000 + i);
    c[i] = r * big + i;
    d[i] = r * big - i;
  }
  Tensor ta = make(a, {n}), tb = make(b, {n}), tc = make(c, {n}), td = make(d, {n});
  all_reduce_sync(comm(), ta, ReduceOp::kSum);
  all_reduce_sync(comm(), tb, ReduceOp::kMax);
  all_reduce_sync(comm(), tc, ReduceOp::kSum);
  all_reduce_sync(comm(), td, ReduceOp::kMax);
  const auto sa = ta.to_vector<int32_t>(), sb = tb.to_vector<int32_t>();
  const auto sc = tc.to_vector<int64_t>(), sd = td.to_vector<int64_t>();
  const int64_t ranks_sum = int64_t{w} * (w - 1) / 2;
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(sa[i], 1000 * ranks_sum + w * i) << "i=" << i;
    EXPECT_EQ(sb[i], i % 2 ? (w - 1) * 1000 + i : -i) << "i=" << i;
    EXPECT_EQ(sc[i], big * ranks_sum + int64_t{w} * i) << "i=" << i;
    EXPECT_EQ(sd[i], (w - 1) * big - i) << "i=" << i;
  }
}

TEST_P(CommunicatorTest, ReduceScatterMultiDimRows) {
  const int r = rank(), w = size();
  const int n = 3, row = 10;  // rows of shape (2, 5)
  std::vector<float> x(static_cast<size_t>(w) * n * row), b(x.size());
  for (int g = 0; g < w * n; ++g) {
    for (int j = 0; j < row; ++j) {
      x[g * row + j] = r * 10000.0f + g * 100.0f + j;
      b[g * row + j] = static_cast<float>(1 << r) * ((g + j) % 4 + 1);
    }
  }
  Tensor in = make(x, {w * n, 2, 5}), in_bf16 = make_bf16(b, {w * n, 2, 5});
  Tensor sum = Tensor::zeros({n, 2, 5}, DType::kF32, device_);
  Tensor max = Tensor::zeros({n, 2, 5}, DType::kF32, device_);
  Tensor sum_bf16 = Tensor::zeros({n, 2, 5}, DType::kBF16, device_);
  reduce_scatter_sync(comm(), in, sum, ReduceOp::kSum);
  reduce_scatter_sync(comm(), in, max, ReduceOp::kMax);
  reduce_scatter_sync(comm(), in_bf16, sum_bf16, ReduceOp::kSum);
  const auto s = sum.to_vector<float>(), m = max.to_vector<float>();
  const auto sb = sum_bf16.to_floats();
  for (int k = 0; k < n; ++k) {
    const int g = r * n + k;  // this rank's rows of the input
    for (int j = 0; j < row; ++j) {
      const float local = g * 100.0f + j;
      EXPECT_EQ(s[k * row + j], 10000.0f * (w * (w - 1) / 2) + w * local) << k << "," << j;
      EXPECT_EQ(m[k * row + j], 10000.0f * (w - 1) + local) << k << "," << j;
      EXPECT_EQ(sb[k * row + j], static_cast<float>((1 << w) - 1) * ((g + j) % 4 + 1))
          << k << "," << j;
    }
  }
}

TEST_P(CommunicatorTest, AllGatherMultiDimRows) {
  const int r = rank(), w = size();
  const int n = 2, row = 12;  // rows of shape (3, 4)
  std::vector<int32_t> x(n * row);
  for (int i = 0; i < n * row; ++i) x[i] = r * 1000 + i;
  Tensor in = make(x, {n, 3, 4});
  Tensor out = Tensor::zeros({w * n, 3, 4}, DType::kI32, device_);
  all_gather_sync(comm(), in, out);
  // In place: the input is this rank's rows of the output.
  std::vector<float> y(static_cast<size_t>(w) * n * row, -1.0f);
  for (int i = 0; i < n * row; ++i) y[r * n * row + i] = r * 1000.0f + i;
  Tensor full = make(y, {w * n, 3, 4});
  all_gather_sync(comm(), full.narrow(r * n, n), full);
  const auto g = out.to_vector<int32_t>();
  const auto f = full.to_vector<float>();
  for (int s = 0; s < w; ++s) {
    for (int i = 0; i < n * row; ++i) {
      EXPECT_EQ(g[s * n * row + i], s * 1000 + i) << "from rank " << s << ", i=" << i;
      EXPECT_EQ(f[s * n * row + i], s * 1000.0f + i) << "in place, from rank " << s << ", i=" << i;
    }
  }
}

// Rows from rank s to rank d: 0, 1 or 2 (zeros included once there are two ranks).
int64_t rows_between(int s, int d) { return (s + 2 * d + 1) % 3; }

TEST_P(CommunicatorTest, AllToAllVRoutesUnevenRows) {
  const int r = rank(), w = size();
  const int row = 6;  // rows of shape (2, 3)
  std::vector<int64_t> send_rows(w), recv_rows(w);
  for (int p = 0; p < w; ++p) {
    send_rows[p] = rows_between(r, p);
    recv_rows[p] = rows_between(p, r);
  }
  int64_t n_send = 0, n_recv = 0;
  for (int p = 0; p < w; ++p) {
    n_send += send_rows[p];
    n_recv += recv_rows[p];
  }
  // value(src, dst, k, c): src, dst and the row index k in separate decimal digits.
  auto value = [](int s, int d, int k, int c) { return s * 1000 + d * 100 + k * 10 + c; };
  std::vector<float> x;
  std::vector<int64_t> xi;
  for (int d = 0; d < w; ++d) {
    for (int k = 0; k < send_rows[d]; ++k) {
      for (int c = 0; c < row; ++c) {
        x.push_back(static_cast<float>(value(r, d, k, c)));
        xi.push_back((int64_t{r} << 40) + (int64_t{d} << 20) + value(0, 0, k, c));
      }
    }
  }
  Tensor in = make(x, {n_send, 2, 3}), in_i = make(xi, {n_send, 2, 3});
  Tensor out = Tensor::zeros({n_recv, 2, 3}, DType::kF32, device_);
  Tensor out_i = Tensor::zeros({n_recv, 2, 3}, DType::kI64, device_);
  all_to_all_v_sync(comm(), in, send_rows, out, recv_rows);
  all_to_all_v_sync(comm(), in_i, send_rows, out_i, recv_rows);
  const auto o = out.to_vector<float>();
  const auto oi = out_i.to_vector<int64_t>();
  size_t at = 0;
  for (int s = 0; s < w; ++s) {
    for (int k = 0; k < recv_rows[s]; ++k) {
      for (int c = 0; c < row; ++c, ++at) {
        EXPECT_EQ(o[at], static_cast<float>(value(s, r, k, c))) << "src " << s << " row " << k;
        EXPECT_EQ(oi[at], (int64_t{s} << 40) + (int64_t{r} << 20) + value(0, 0, k, c))
            << "src " << s << " row " << k;
      }
    }
  }
  EXPECT_EQ(at, o.size());
}

TEST_P(CommunicatorTest, SendRecvRing) {
  const int r = rank(), w = size();
  const int next = (r + 1) % w, prev = (r + w - 1) % w;
  std::vector<int64_t> x(5);
  for (int i = 0; i < 5; ++i) x[i] = r * 1000 + i;
  Tensor out = make(x, {5});
  Tensor in = Tensor::zeros({5}, DType::kI64, device_);
  WorkHandle sent = comm().send(out, next, 7);
  WorkHandle received = comm().recv(in, prev, 7);
  received->wait();  // reverse order: the receive first
  sent->wait();
  const auto got = in.to_vector<int64_t>();
  for (int i = 0; i < 5; ++i) EXPECT_EQ(got[i], prev * 1000 + i) << "i=" << i;
}

TEST_P(CommunicatorTest, BroadcastFromLastRank) {
  const int r = rank(), w = size(), root = w - 1;
  std::vector<int32_t> x(12, -1);
  std::vector<float> b(12, 0.0f);
  if (r == root) {
    for (int i = 0; i < 12; ++i) {
      x[i] = root * 1000 + i;
      b[i] = static_cast<float>(i + 1);
    }
  }
  Tensor t = make(x, {3, 4}), tb = make_bf16(b, {3, 4});
  comm().broadcast(t, root)->wait();
  comm().broadcast(tb, root)->wait();
  const auto got = t.to_vector<int32_t>();
  const auto got_b = tb.to_floats();
  for (int i = 0; i < 12; ++i) {
    EXPECT_EQ(got[i], root * 1000 + i) << "i=" << i;
    EXPECT_EQ(got_b[i], static_cast<float>(i + 1)) << "i=" << i;
  }
}

TEST_P(CommunicatorTest, SplitEvenOddRanks) {
  const int r = rank(), w = size();
  // Key -r orders each group by descending rank.
  std::unique_ptr<Communicator> half = comm().split(r % 2, -r);
  ASSERT_NE(half, nullptr);
  std::vector<int> members;  // same parity, descending
  for (int p = w - 1; p >= 0; --p) {
    if (p % 2 == r % 2) members.push_back(p);
  }
  ASSERT_EQ(half->size(), static_cast<int>(members.size()));
  EXPECT_EQ(members[half->rank()], r);
  EXPECT_EQ(half->backend(), comm().backend());
  Tensor t = make(std::vector<int64_t>{r}, {1});
  all_reduce_sync(*half, t, ReduceOp::kSum);
  int64_t expected = 0;
  for (int p : members) expected += p;
  EXPECT_EQ(t.to_vector<int64_t>()[0], expected);
  Tensor g = Tensor::zeros({half->size()}, DType::kI64, device_);
  all_gather_sync(*half, make(std::vector<int64_t>{r}, {1}), g);
  const auto order = g.to_vector<int64_t>();
  for (size_t i = 0; i < members.size(); ++i) EXPECT_EQ(order[i], members[i]) << "i=" << i;
}

TEST_P(CommunicatorTest, SplitWithNegativeColorLeavesRankOut) {
  const int r = rank(), w = size();
  std::unique_ptr<Communicator> rest = comm().split(r == 0 ? -1 : 1, r);
  if (r == 0) {
    EXPECT_EQ(rest, nullptr);
    return;
  }
  ASSERT_NE(rest, nullptr);
  EXPECT_EQ(rest->size(), w - 1);
  EXPECT_EQ(rest->rank(), r - 1);
  Tensor t = make(std::vector<int32_t>{r}, {1});
  all_reduce_sync(*rest, t, ReduceOp::kSum);
  EXPECT_EQ(t.to_vector<int32_t>()[0], w * (w - 1) / 2);
}

TEST_P(CommunicatorTest, NonBlockingOpsOverlapAndWaitInAnyOrder) {
  const int r = rank(), w = size();
  std::vector<float> x(1000);
  for (int i = 0; i < 1000; ++i) x[i] = r + i * 0.5f;
  Tensor a = make(x, {1000});
  Tensor b = Tensor::zeros({w, 2}, DType::kI32, device_);
  Tensor c = make(std::vector<int32_t>{r, -r}, {1, 2});
  WorkHandle first = comm().all_reduce(a, ReduceOp::kSum);
  WorkHandle second = comm().all_gather(c, b);
  second->wait();
  first->wait();
  first->wait();  // idempotent
  const auto sa = a.to_vector<float>();
  const auto sb = b.to_vector<int32_t>();
  for (int i = 0; i < 1000; ++i) {
    EXPECT_EQ(sa[i], static_cast<float>(w * (w - 1) / 2) + w * (i * 0.5f)) << "i=" << i;
  }
  for (int p = 0; p < w; ++p) {
    EXPECT_EQ(sb[2 * p], p);
    EXPECT_EQ(sb[2 * p + 1], -p);
  }
}

TEST_P(CommunicatorTest, ShapeMismatchesNameTheOperation) {
  const int w = size();
  Tensor rows3 = Tensor::zeros({2, 3}, DType::kF32, device_);
  Tensor odd = Tensor::zeros({w * 2 + 1, 3}, DType::kF32, device_);
  Tensor other_row = Tensor::zeros({w * 2, 4}, DType::kF32, device_);
  Tensor ints = Tensor::zeros({w * 2, 3}, DType::kI32, device_);
  Tensor bytes = Tensor::zeros({4}, DType::kU8, device_);
  std::vector<int64_t> ones(w, 1), too_many(w + 1, 0);
  Tensor w_rows = Tensor::zeros({w, 3}, DType::kF32, device_);
  Tensor w1_rows = Tensor::zeros({w + 1, 3}, DType::kF32, device_);
  EXPECT_THAT(error_of([&] { comm().reduce_scatter(odd, rows3, ReduceOp::kSum); }),
              HasSubstr("reduce_scatter"));
  EXPECT_THAT(error_of([&] { comm().all_gather(rows3, odd); }), HasSubstr("all_gather"));
  EXPECT_THAT(error_of([&] { comm().all_gather(rows3, other_row); }), HasSubstr("all_gather"));
  EXPECT_THAT(error_of([&] { comm().all_gather(rows3, ints); }), HasSubstr("all_gather"));
  EXPECT_THAT(error_of([&] { comm().all_to_all_v(w1_rows, ones, w_rows, ones); }),
              HasSubstr("all_to_all_v"));
  EXPECT_THAT(error_of([&] { comm().all_to_all_v(w_rows, too_many, w_rows, ones); }),
              HasSubstr("all_to_all_v"));
  EXPECT_THAT(error_of([&] { comm().all_to_all_v(w_rows, ones, other_row, ones); }),
              HasSubstr("all_to_all_v"));
  EXPECT_THAT(error_of([&] { comm().all_reduce(bytes, ReduceOp::kSum); }), HasSubstr("all_reduce"));
  EXPECT_THAT(error_of([&] { comm().broadcast(rows3, w); }), HasSubstr("broadcast"));
  EXPECT_THAT(error_of([&] { comm().send(rows3, w, 0); }), HasSubstr("send"));
  EXPECT_THAT(error_of([&] { comm().recv(rows3, -1, 0); }), HasSubstr("recv"));
  EXPECT_THAT(error_of([&] { comm().send(rows3, 0, -1); }), HasSubstr("tag"));
  // A tensor on the wrong device.
  if (device_.is_cuda()) {
    Tensor host = Tensor::zeros({2}, DType::kF32);
    EXPECT_THAT(error_of([&] { comm().all_reduce(host, ReduceOp::kSum); }),
                HasSubstr("all_reduce (nccl)"));
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, CommunicatorTest, ::testing::Values("mpi", "nccl"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

// ---- MPI only ----

TEST(MpiCommunicatorTest, Bf16SumIsRoundedOnceFromF32) {
  Communicator& world = world_communicator();
  const int w = world.size();
  // 256 + (w - 1) ones: bf16 steps of 2 at 256, so adding the ones one at a time in bf16 would
  // stay at 256; the f32 sum rounded once is 256, 258, 260 for 2, 3, 4 ranks.
  Tensor t = Tensor::from_floats({world.rank() == 0 ? 256.0f : 1.0f}, {1}, DType::kBF16);
  all_reduce_sync(world, t, ReduceOp::kSum);
  EXPECT_EQ(t.to_floats()[0], bf16_to_float(float_to_bf16(256.0f + (w - 1)))) << "w=" << w;
}

TEST(MpiCommunicatorTest, TagsSelectMessages) {
  Communicator& world = world_communicator();
  const int r = world.rank(), w = world.size();
  const int next = (r + 1) % w, prev = (r + w - 1) % w;
  Tensor a = Tensor::from_vector<int32_t>({r, 1}, {2});
  Tensor b = Tensor::from_vector<int32_t>({r, 2}, {2});
  Tensor got_b = Tensor::zeros({2}, DType::kI32), got_a = Tensor::zeros({2}, DType::kI32);
  // Receives posted in the opposite order of the sends: the tags must pair them up.
  WorkHandle rb = world.recv(got_b, prev, 2);
  WorkHandle ra = world.recv(got_a, prev, 1);
  WorkHandle sa = world.send(a, next, 1);
  WorkHandle sb = world.send(b, next, 2);
  for (WorkHandle* h : {&ra, &rb, &sa, &sb}) (*h)->wait();
  EXPECT_EQ(got_a.to_vector<int32_t>(), (std::vector<int32_t>{prev, 1}));
  EXPECT_EQ(got_b.to_vector<int32_t>(), (std::vector<int32_t>{prev, 2}));
}

TEST(MpiCommunicatorTest, RecvOfAnotherSizeFailsOnWait) {
  Communicator& world = world_communicator();
  const int r = world.rank(), w = world.size();
  Tensor four = Tensor::zeros({4}, DType::kF32), five = Tensor::zeros({5}, DType::kF32);
  WorkHandle received = world.recv(five, (r + w - 1) % w, 3);
  WorkHandle sent = world.send(four, (r + 1) % w, 3);
  const std::string error = error_of([&] { received->wait(); });
  sent->wait();
  EXPECT_THAT(error, HasSubstr("recv (mpi): expected 5 elements"));
  EXPECT_THAT(error, HasSubstr("the message has 4"));
}

TEST(MpiCommunicatorTest, RejectsDeviceTensors) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  Tensor t = Tensor::zeros({2}, DType::kF32, Device::cuda(0));
  EXPECT_THAT(error_of([&] { world_communicator().all_reduce(t, ReduceOp::kSum); }),
              HasSubstr("not on the host"));
}

TEST(MpiCommunicatorTest, RowCountsAndTheirIntLimit) {
  const std::vector<int64_t> rows = {2, 0, 3};
  const MpiCounts c = mpi_row_counts("all_to_all_v", rows, 4);
  EXPECT_EQ(c.counts, (std::vector<int>{8, 0, 12}));
  EXPECT_EQ(c.displs, (std::vector<int>{0, 8, 8}));
  const int64_t half = int64_t{1} << 30;
  // Counts and offsets up to INT_MAX are fine; one more element is an error naming the op.
  EXPECT_EQ(mpi_row_counts("x", std::vector<int64_t>{1, 1}, INT_MAX).displs[1], INT_MAX);
  EXPECT_THAT(error_of([&] { mpi_row_counts("all_to_all_v", std::vector<int64_t>{2}, half); }),
              HasSubstr("all_to_all_v (mpi): 2 rows of 1073741824 elements"));
  EXPECT_THAT(error_of([&] {
                mpi_row_counts("all_to_all_v", std::vector<int64_t>{1, 1, 1}, half);
              }),
              HasSubstr("for rank 2 at element offset 2147483648"));
  EXPECT_THAT(error_of([&] { mpi_row_counts("all_to_all_v", std::vector<int64_t>{-1}, 1); }),
              HasSubstr("negative row count"));
}

TEST(MpiEnvTest, WorldMatchesTheLauncher) {
  Communicator& world = world_communicator();
  EXPECT_EQ(&world, &world_communicator());
  EXPECT_EQ(world.backend(), "mpi");
  // What the launcher said (mpirun, or Slurm / PMI for direct launches); none: a singleton.
  auto from_env = [](std::initializer_list<const char*> names, int fallback) {
    for (const char* name : names) {
      if (const char* v = std::getenv(name)) return std::atoi(v);
    }
    return fallback;
  };
  EXPECT_EQ(world.size(), from_env({"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"}, 1));
  EXPECT_EQ(world.rank(), from_env({"OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"}, 0));
  EXPECT_EQ(world_size(), world.size());
  EXPECT_EQ(world_rank(), world.rank());
  init_mpi();  // idempotent
  int level = 0;
  MPI_Query_thread(&level);
  EXPECT_EQ(level, MPI_THREAD_MULTIPLE);
}

TEST(MpiEnvTest, FailedCallsThrowWithCallAndRank) {
  // MPI_ERRORS_RETURN is set on the world, so a bad call returns and the macro throws.
  const std::string error = error_of([] { FATHOM_MPI_CHECK(MPI_Barrier(MPI_COMM_NULL)); });
  EXPECT_THAT(error, HasSubstr("MPI call failed: MPI_Barrier(MPI_COMM_NULL)"));
  EXPECT_THAT(error, HasSubstr("communicator_test.cc"));
  EXPECT_THAT(error, HasSubstr("world rank " + std::to_string(world_rank())));
}

// ---- NCCL factories and the id file ----

TEST(NcclFactoryTest, ReportsWhyItCannotRun) {
  if (nccl_built() && cuda_device_count() > 0) {
    GTEST_SKIP() << "NCCL and a GPU are here: the CommunicatorTest nccl cases create one";
  }
  const std::string why = nccl_built() ? "no CUDA device" : "built without NCCL";
  absl::StatusOr<std::unique_ptr<Communicator>> c = make_nccl_communicator(world_communicator(), 0);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr(why));
  const std::string path = "/tmp/fathom_nccl_id_never_written_" + std::to_string(getpid());
  c = make_nccl_communicator_from_file(path, world_rank(), world_size(), 0, 1.0);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr(why));
  EXPECT_NE(access(path.c_str(), F_OK), 0) << "the id file must not be written";
}

std::string local_temp_file(const std::string& contents) {
  char name[] = "/tmp/fathom_comm_test_XXXXXX";
  const int fd = mkstemp(name);
  FATHOM_CHECK(fd >= 0) << "mkstemp";
  FATHOM_CHECK(write(fd, contents.data(), contents.size()) ==
               static_cast<ssize_t>(contents.size()));
  close(fd);
  return name;
}

TEST(NcclIdFileTest, RankZeroWritesAndEveryRankReads) {
  Communicator& world = world_communicator();
  const size_t kBytes = 128;
  // Rank 0 makes a fresh folder and tells the others its name.
  Tensor name = Tensor::zeros({256}, DType::kU8);
  if (world.rank() == 0) {
    char dir[] = "/tmp/fathom_nccl_id_XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    std::memcpy(name.data<uint8_t>(), dir, std::strlen(dir));
  }
  world.broadcast(name, 0)->wait();
  const std::string dir(reinterpret_cast<const char*>(name.data<uint8_t>()));
  const std::string path = dir + "/id";
  std::string id(kBytes, '\0');
  for (size_t i = 0; i < kBytes; ++i) id[i] = static_cast<char>((i * 37 + getpid()) & 0xff);
  absl::StatusOr<std::string> got =
      exchange_bytes_through_file(path, world.rank(), world.rank() == 0 ? id : "", kBytes, 30.0);
  EXPECT_TRUE(got.ok()) << got.status();
  const std::string mine = got.ok() ? *got : std::string(kBytes, '\0');
  // Every rank must hold rank 0's bytes.
  Tensor all = Tensor::zeros({world.size(), static_cast<int64_t>(kBytes)}, DType::kU8);
  Tensor own = Tensor::zeros({1, static_cast<int64_t>(kBytes)}, DType::kU8);
  std::memcpy(own.data<uint8_t>(), mine.data(), kBytes);
  all_gather_sync(world, own, all);
  const char* rows = reinterpret_cast<const char*>(all.data<uint8_t>());
  for (int r = 0; r < world.size(); ++r) {
    EXPECT_EQ(std::string(rows + r * kBytes, kBytes), std::string(rows, kBytes)) << "rank " << r;
  }
  if (world.rank() == 0) {
    EXPECT_EQ(mine, id);
  }
  world.barrier();
  if (world.rank() == 0) {
    std::remove(path.c_str());
    rmdir(dir.c_str());
  }
}

TEST(NcclIdFileTest, MissingFileTimesOutNamingThePath) {
  const std::string path = "/nonexistent_fathom_dir/nccl.id";
  absl::StatusOr<std::string> got = exchange_bytes_through_file(path, 1, "", 128, 0.05);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(got.status().message()), HasSubstr(path));
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("rank 1"));
}

TEST(NcclIdFileTest, StaleFileIsRefusedAndWrongSizeIsDataLoss) {
  const std::string stale = local_temp_file("old id");
  absl::StatusOr<std::string> got =
      exchange_bytes_through_file(stale, 0, std::string(6, 'x'), 6, 1.0);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kAlreadyExists);
  std::ifstream in(stale);
  std::string kept;
  std::getline(in, kept);
  EXPECT_EQ(kept, "old id");  // not overwritten
  got = exchange_bytes_through_file(stale, 2, "", 128, 1.0);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("holds 6 bytes, expected 128"));
  std::remove(stale.c_str());
}

}  // namespace
}  // namespace fathom::parallel
