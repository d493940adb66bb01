// Tests for trainer/checkpoint.h: bit-exact round trips, re-sharding under another layout,
// atomicity, and the error messages for broken or mismatched checkpoints.
#include "trainer/checkpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels/device.h"
#include "kernels/tensor.h"

namespace fathom::trainer {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// Random bytes in every element (NaN patterns included): round trips must keep the bits.
Tensor random_tensor(std::initializer_list<int64_t> shape, DType dtype, uint32_t seed) {
  Tensor t = Tensor::empty(shape, dtype);
  std::mt19937 rng(seed);
  auto* bytes = static_cast<uint8_t*>(t.raw_data());
  for (size_t i = 0; i < t.nbytes(); ++i) bytes[i] = static_cast<uint8_t>(rng());
  return t;
}

std::vector<uint8_t> bytes_of(const Tensor& t) {
  const Tensor host = t.is_cuda() ? t.to(Device::cpu()) : t;
  const auto* p = static_cast<const uint8_t*>(host.raw_data());
  return std::vector<uint8_t>(p, p + host.nbytes());
}

// Rows [start, start + length) as an independent copy.
Tensor rows_of(const Tensor& t, int64_t start, int64_t length) {
  return t.narrow(start, length).clone();
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

std::vector<std::string> dir_entries(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    root_ = fs::path(::testing::TempDir()) /
            ("fathom_checkpoint_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  std::string path(const std::string& name) const { return (root_ / name).string(); }

  // A one-shard checkpoint of a single tensor.
  std::string write_one(const std::string& dir_name, const std::string& tensor_name,
                        const Tensor& t) {
    const std::string dir = path(dir_name);
    const absl::Status s = write_checkpoint_shard(dir, 0, 1, {{tensor_name, t}}, {});
    EXPECT_TRUE(s.ok()) << s;
    return dir;
  }

  fs::path root_;
};

TEST_F(CheckpointTest, RoundTripEveryDtypeAndMetadataBitExact) {
  // Names with the characters HDF5 treats specially, a 0-d tensor and a tensor with no rows.
  std::vector<TensorShard> written = {
      {"layers.1.attn.wq_a.weight", random_tensor({5, 3}, DType::kF32, 1)},
      {"optim.m.layers.1.attn.wq_a.weight", random_tensor({5, 3}, DType::kBF16, 2)},
      {"buffers/ffn.gate.counts", random_tensor({2, 3, 4}, DType::kI32, 3)},
      {"data/position%index", random_tensor({7}, DType::kI64, 4)},
      {"..", random_tensor({4, 1}, DType::kU8, 5)},
      {".hidden", random_tensor({3, 2}, DType::kF8E4M3, 6)},
      {"fp8 e5m2, spaces and \xc3\xbc", random_tensor({2, 2}, DType::kF8E5M2, 7)},
      {"optim.step", random_tensor({}, DType::kI64, 8)},
      {"empty.rows", Tensor::empty({0, 3}, DType::kF32)},
  };
  CheckpointMeta meta;
  meta.step = 123456789012345;
  meta.u64["rng/torch.cuda"] = {0, 1, UINT64_MAX, 0x8000000000000000ull};
  meta.u64["data.position"] = {42};
  meta.u64["empty"] = {};
  meta.text["config.yaml"] = "model:\n  dim: 64\n  name: \"tiny\"\n";
  meta.text["empty"] = "";
  meta.text["with NUL"] = std::string("a\0b\0", 4);
  const std::string dir = path("step-000100");
  ASSERT_TRUE(write_checkpoint_shard(dir, 0, 1, written, meta).ok());
  EXPECT_EQ(dir_entries(dir), std::vector<std::string>{"shard-00000-of-00001.h5"});

  std::vector<TensorShard> read(written.size());
  for (size_t i = 0; i < written.size(); ++i) {
    read[i].name = written[i].name;
    read[i].tensor = Tensor::zeros(written[i].tensor.shape(), written[i].tensor.dtype());
  }
  CheckpointMeta got;
  got.text["stale"] = "replaced";
  const absl::Status s = read_checkpoint(dir, absl::MakeSpan(read), &got);
  ASSERT_TRUE(s.ok()) << s;
  for (size_t i = 0; i < written.size(); ++i) {
    EXPECT_EQ(bytes_of(read[i].tensor), bytes_of(written[i].tensor))
        << "tensor '" << written[i].name << "' " << written[i].tensor.str();
  }
  EXPECT_EQ(got.step, meta.step);
  EXPECT_EQ(got.u64, meta.u64);
  EXPECT_EQ(got.text, meta.text);

  auto names = list_checkpoint_tensors(dir);
  ASSERT_TRUE(names.ok()) << names.status();
  std::vector<std::string> want;
  for (const TensorShard& w : written) want.push_back(w.name);
  std::sort(want.begin(), want.end());
  EXPECT_EQ(*names, want);
}

TEST_F(CheckpointTest, RowShardsFromTwoWritersReadBackUnderAnotherLayout) {
  const Tensor weight = random_tensor({10, 3}, DType::kF32, 11);
  const Tensor experts = random_tensor({6, 2, 2}, DType::kBF16, 12);  // (E, out, in)
  const Tensor only_rank1 = random_tensor({4}, DType::kI32, 13);
  const std::string dir = path("step-000007");
  CheckpointMeta meta0, meta1;
  meta0.step = 7;
  meta0.u64["rng"] = {1, 2};
  meta1.step = 999;  // ignored: only shard 0 stores metadata
  // Writer 0 holds rows [0, 4) and experts [0, 3); writer 1 the rest, plus a tensor of its own.
  ASSERT_TRUE(write_checkpoint_shard(dir, 0, 2,
                                     {{"w", rows_of(weight, 0, 4), {10, 3}, 0},
                                      {"experts", rows_of(experts, 0, 3), {6, 2, 2}, 0}},
                                     meta0)
                  .ok());
  ASSERT_TRUE(write_checkpoint_shard(dir, 1, 2,
                                     {{"w", rows_of(weight, 4, 6), {10, 3}, 4},
                                      {"experts", rows_of(experts, 3, 3), {6, 2, 2}, 3},
                                      {"buffers.count", only_rank1}},
                                     meta1)
                  .ok());
  EXPECT_EQ(dir_entries(dir),
            (std::vector<std::string>{"shard-00000-of-00002.h5", "shard-00001-of-00002.h5"}));

  // Three readers with ranges that straddle the writers' boundary, and one reading everything.
  for (const auto& [start, length] :
       std::vector<std::pair<int64_t, int64_t>>{{0, 3}, {3, 4}, {7, 3}, {0, 10}}) {
    std::vector<TensorShard> into;
    into.reserve(2);
    into.push_back({"w", Tensor::zeros({length, 3}, DType::kF32), {10, 3}, start});
    if (start + length <= 6) {
      into.push_back({"experts", Tensor::zeros({length, 2, 2}, DType::kBF16), {6, 2, 2}, start});
    }
    CheckpointMeta got;
    const absl::Status s = read_checkpoint(dir, absl::MakeSpan(into), &got);
    ASSERT_TRUE(s.ok()) << s << " rows [" << start << ", " << start + length << ")";
    EXPECT_EQ(bytes_of(into[0].tensor), bytes_of(weight.narrow(start, length)))
        << "w rows [" << start << ", " << start + length << ")";
    if (into.size() > 1) {
      EXPECT_EQ(bytes_of(into[1].tensor), bytes_of(experts.narrow(start, length)))
          << "experts rows [" << start << ", " << start + length << ")";
    }
    EXPECT_EQ(got.step, 7);
    EXPECT_EQ(got.u64, meta0.u64);
  }
  std::vector<TensorShard> count = {{"buffers.count", Tensor::zeros({4}, DType::kI32)}};
  ASSERT_TRUE(read_checkpoint(dir, absl::MakeSpan(count), nullptr).ok());
  EXPECT_EQ(bytes_of(count[0].tensor), bytes_of(only_rank1));
}

TEST_F(CheckpointTest, RowsHeldByNoShardAreReported) {
  const Tensor t = random_tensor({8, 2}, DType::kF32, 21);
  const std::string dir = path("step-000001");
  ASSERT_TRUE(write_checkpoint_shard(dir, 0, 2, {{"w", rows_of(t, 0, 3), {8, 2}, 0}}, {}).ok());
  ASSERT_TRUE(write_checkpoint_shard(dir, 1, 2, {{"w", rows_of(t, 5, 3), {8, 2}, 5}}, {}).ok());
  std::vector<TensorShard> whole = {{"w", Tensor::zeros({8, 2}, DType::kF32)}};
  const absl::Status s = read_checkpoint(dir, absl::MakeSpan(whole), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("rows [3, 5) of tensor 'w' [8, 2] are in no shard file"));
  // Rows that are present still read.
  std::vector<TensorShard> tail = {{"w", Tensor::zeros({3, 2}, DType::kF32), {8, 2}, 5}};
  ASSERT_TRUE(read_checkpoint(dir, absl::MakeSpan(tail), nullptr).ok());
  EXPECT_EQ(bytes_of(tail[0].tensor), bytes_of(t.narrow(5, 3)));
}

TEST_F(CheckpointTest, MissingAndMismatchedShardFilesAreReported) {
  const Tensor t = random_tensor({4}, DType::kF32, 31);
  const std::string dir = path("step-000002");
  ASSERT_TRUE(write_checkpoint_shard(dir, 0, 2, {{"w", t}}, {}).ok());
  std::vector<TensorShard> into = {{"w", Tensor::zeros({4}, DType::kF32)}};
  absl::Status s = read_checkpoint(dir, absl::MakeSpan(into), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(std::string(s.message()),
              HasSubstr(dir + " is incomplete: 1 of 2 shard files missing "
                              "(shard-00001-of-00002.h5)"));

  ASSERT_TRUE(write_checkpoint_shard(dir, 1, 3, {{"v", t}}, {}).ok());
  s = read_checkpoint(dir, absl::MakeSpan(into), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("mixes shard files of different shard counts (2, 3)"));

  s = read_checkpoint(path("nowhere"), absl::MakeSpan(into), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("checkpoint directory " + path("nowhere") + " does not exist"));

  fs::create_directories(path("empty"));
  s = list_checkpoint_tensors(path("empty")).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("holds no shard files"));
}

TEST_F(CheckpointTest, TruncatedShardIsReportedAsNotValid) {
  const std::string dir = write_one("step-000003", "w", random_tensor({64, 16}, DType::kF32, 41));
  const fs::path file = fs::path(dir) / "shard-00000-of-00001.h5";
  fs::resize_file(file, fs::file_size(file) / 2);
  std::vector<TensorShard> into = {{"w", Tensor::zeros({64, 16}, DType::kF32)}};
  const absl::Status s = read_checkpoint(dir, absl::MakeSpan(into), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(
      std::string(s.message()),
      HasSubstr(file.string() + " is not a valid checkpoint shard (truncated or corrupted?)"));
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("truncated file"));  // HDF5's own diagnosis follows
  EXPECT_EQ(list_checkpoint_tensors(dir).status(), s);
}

TEST_F(CheckpointTest, GarbageShardIsReportedAsNotValid) {
  const fs::path dir = root_ / "step-000004";
  fs::create_directories(dir);
  const fs::path file = dir / "shard-00000-of-00001.h5";
  write_file(file, std::string(4096, 'x'));
  const absl::Status s = list_checkpoint_tensors(dir.string()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(
      std::string(s.message()),
      HasSubstr(file.string() + " is not a valid checkpoint shard (truncated or corrupted?)"));
}

TEST_F(CheckpointTest, CorruptedTensorDataFailsItsChecksum) {
  // A recognisable pattern, so the test can find the tensor's bytes in the file.
  std::vector<int32_t> values(256);
  for (size_t i = 0; i < values.size(); ++i) values[i] = 0x5A5A0000 + static_cast<int32_t>(i);
  const Tensor t = Tensor::from_vector(values, {16, 16});
  const std::string dir = write_one("step-000005", "layers.0.ffn.w1.weight", t);
  const fs::path file = fs::path(dir) / "shard-00000-of-00001.h5";
  std::string bytes = read_file(file);
  const std::string needle(reinterpret_cast<const char*>(values.data() + 100), 16);
  const size_t at = bytes.find(needle);
  ASSERT_NE(at, std::string::npos);
  bytes[at + 5] ^= 0x10;
  write_file(file, bytes);

  std::vector<TensorShard> into = {
      {"layers.0.ffn.w1.weight", Tensor::zeros({16, 16}, DType::kI32)}};
  const absl::Status s = read_checkpoint(dir, absl::MakeSpan(into), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(std::string(s.message()),
              HasSubstr(file.string() + " is not a valid checkpoint shard"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("tensor 'layers.0.ffn.w1.weight'"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("Fletcher32"));
}

TEST_F(CheckpointTest, MissingTensorShapeAndDtypeMismatchNameTheTensor) {
  const std::string dir =
      write_one("step-000006", "layers.0.attn.wo.weight", random_tensor({64, 64}, DType::kF32, 51));
  const std::string file = (fs::path(dir) / "shard-00000-of-00001.h5").string();

  std::vector<TensorShard> missing = {
      {"layers.0.attn.wo.weigth", Tensor::zeros({64, 64}, DType::kF32)}};
  absl::Status s = read_checkpoint(dir, absl::MakeSpan(missing), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("checkpoint " + dir +
                                                  " has no tensor "
                                                  "'layers.0.attn.wo.weigth' (did you mean "
                                                  "'layers.0.attn.wo.weight'?)"));

  std::vector<TensorShard> shape = {
      {"layers.0.attn.wo.weight", Tensor::zeros({64, 32}, DType::kF32)}};
  s = read_checkpoint(dir, absl::MakeSpan(shape), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()),
              HasSubstr(file + ": tensor 'layers.0.attn.wo.weight': checkpoint has "
                               "global shape [64, 64], expected [64, 32]"));

  // A row shard whose declared global shape disagrees is caught the same way.
  std::vector<TensorShard> rows = {
      {"layers.0.attn.wo.weight", Tensor::zeros({8, 64}, DType::kF32), {128, 64}, 8}};
  s = read_checkpoint(dir, absl::MakeSpan(rows), nullptr);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("checkpoint has global shape [64, 64], expected [128, 64]"));

  std::vector<TensorShard> dtype = {
      {"layers.0.attn.wo.weight", Tensor::zeros({64, 64}, DType::kBF16)}};
  s = read_checkpoint(dir, absl::MakeSpan(dtype), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()),
              HasSubstr(file + ": tensor 'layers.0.attn.wo.weight': checkpoint has "
                               "dtype f32, expected bf16"));
}

TEST_F(CheckpointTest, ErrorsLeaveTheTargetTensorsUntouched) {
  const std::string dir = write_one("step-000008", "a", random_tensor({4}, DType::kF32, 61));
  const Tensor before = random_tensor({4}, DType::kF32, 62);
  std::vector<TensorShard> into = {{"a", before.clone()}, {"b", Tensor::zeros({4}, DType::kF32)}};
  ASSERT_FALSE(read_checkpoint(dir, absl::MakeSpan(into), nullptr).ok());
  EXPECT_EQ(bytes_of(into[0].tensor), bytes_of(before));
}

TEST_F(CheckpointTest, SingleShardCheckpointDoesNotOverwriteAnExistingOne) {
  const Tensor first = random_tensor({3}, DType::kI64, 71);
  const std::string dir = write_one("step-000009", "x", first);
  const absl::Status s =
      write_checkpoint_shard(dir, 0, 1, {{"x", random_tensor({3}, DType::kI64, 72)}}, {});
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
  std::vector<TensorShard> into = {{"x", Tensor::zeros({3}, DType::kI64)}};
  ASSERT_TRUE(read_checkpoint(dir, absl::MakeSpan(into), nullptr).ok());
  EXPECT_EQ(bytes_of(into[0].tensor), bytes_of(first));
  // Neither write left a temporary directory behind; a trailing '/' names the same directory.
  EXPECT_EQ(dir_entries(root_), std::vector<std::string>{"step-000009"});
  EXPECT_EQ(write_checkpoint_shard(dir + "/", 0, 1, {}, {}).code(),
            absl::StatusCode::kAlreadyExists);
}

TEST_F(CheckpointTest, LatestCheckpointPicksTheHighestCompleteStep) {
  const std::string ckpts = path("checkpoints");
  EXPECT_EQ(latest_checkpoint(ckpts).status().code(), absl::StatusCode::kNotFound);
  fs::create_directories(ckpts);
  EXPECT_EQ(latest_checkpoint(ckpts).status().code(), absl::StatusCode::kNotFound);

  const Tensor t = random_tensor({2}, DType::kF32, 81);
  for (int64_t step : {9, 10, 1000000, 2}) {
    ASSERT_TRUE(
        write_checkpoint_shard(checkpoint_dir_for_step(ckpts, step), 0, 1, {{"t", t}}, {}).ok());
  }
  EXPECT_EQ(checkpoint_dir_for_step(ckpts, 10), ckpts + "/step-000010");
  EXPECT_EQ(checkpoint_dir_for_step(ckpts, 1000000), ckpts + "/step-1000000");
  auto latest = latest_checkpoint(ckpts);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(*latest, ckpts + "/step-1000000");

  // Newer-looking leftovers are all skipped: a crashed single-shard write (temporary directory), a
  // multi-shard checkpoint missing a shard (with a temporary file of the missing one), names that
  // are not step-<digits>, and a plain file.
  const fs::path tmp_dir = fs::path(ckpts) / "step-2000000.tmp-12345";
  fs::create_directories(tmp_dir);
  fs::copy_file(fs::path(*latest) / "shard-00000-of-00001.h5", tmp_dir / "shard-00000-of-00001.h5");
  const std::string partial = checkpoint_dir_for_step(ckpts, 3000000);
  ASSERT_TRUE(write_checkpoint_shard(partial, 0, 2, {{"t", t}}, {}).ok());
  write_file(fs::path(partial) / "shard-00001-of-00002.h5.tmp-777", "half");
  fs::create_directories(fs::path(ckpts) / "step-abc");
  fs::create_directories(fs::path(ckpts) / "step-");
  write_file(fs::path(ckpts) / "step-4000000", "not a directory");
  latest = latest_checkpoint(ckpts);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(*latest, ckpts + "/step-1000000");

  // Once the last shard lands, the multi-shard checkpoint is the newest.
  ASSERT_TRUE(write_checkpoint_shard(partial, 1, 2, {{"u", t}}, {}).ok());
  latest = latest_checkpoint(ckpts);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(*latest, partial);
}

// Kills a forked writer process when it goes out of scope, however the test exits.
struct ChildKiller {
  pid_t pid;
  ~ChildKiller() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
};

// Regular files anywhere under `dir` (0 while the directory is being renamed under us).
int64_t count_files(const fs::path& dir) {
  std::error_code ec;
  int64_t n = 0;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code type_ec;
    n += it->is_regular_file(type_ec) ? 1 : 0;
  }
  return ec ? 0 : n;
}

// A writer killed in the middle of writing never leaves a checkpoint that looks complete but is
// not, nor a shard file that is only partly written. A child process writes step-0, step-1, ...
// with `shards` shard files each; the parent kills it right after the n-th file (temporary or
// final) appears under the checkpoints directory, plus a delay. Then every checkpoint left is
// either complete and reads back in full, or (several shards) misses whole shard files: it is
// skipped by latest_checkpoint(), and completing it with the missing files of a reference
// checkpoint shows that the files present are intact.
TEST_F(CheckpointTest, KilledWriterNeverLeavesAHalfWrittenCheckpoint) {
  const std::string ckpts = path("checkpoints");
  // Many small tensors: HDF5 spends a while writing them, so kills often land mid-file.
  std::vector<TensorShard> tensors(16);
  for (size_t i = 0; i < tensors.size(); ++i) {
    tensors[i].name = "t" + std::to_string(i);
    tensors[i].tensor = random_tensor({32, 128}, DType::kF32, 91 + i);
  }
  // Reads every tensor of the checkpoint at `dir` back and compares it with `tensors`.
  auto read_all = [&](const fs::path& dir, CheckpointMeta* meta) -> absl::Status {
    std::vector<TensorShard> into(tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      into[i].name = tensors[i].name;
      into[i].tensor = Tensor::zeros({32, 128}, DType::kF32);
    }
    FATHOM_RETURN_IF_ERROR(read_checkpoint(dir.string(), absl::MakeSpan(into), meta));
    for (size_t i = 0; i < tensors.size(); ++i) {
      EXPECT_EQ(bytes_of(into[i].tensor), bytes_of(tensors[i].tensor)) << dir << " " << i;
    }
    return absl::OkStatus();
  };
  const std::string reference = path("reference");
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(write_checkpoint_shard(reference, i, 2, tensors, {}).ok());
  }
  for (int shards : {1, 2}) {
    for (int files : {1, 2, 5}) {
      for (int delay_us : {0, 300, 2000}) {
        SCOPED_TRACE(::testing::Message() << shards << " shard(s), killed " << delay_us
                                          << " us after file " << files << " appeared");
        fs::remove_all(ckpts);
        fs::create_directories(ckpts);
        const pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
          for (int64_t step = 0;; ++step) {
            CheckpointMeta meta;
            meta.step = step;
            for (int i = 0; i < shards; ++i) {
              if (!write_checkpoint_shard(checkpoint_dir_for_step(ckpts, step), i, shards, tensors,
                                          meta)
                       .ok()) {
                ::_exit(1);
              }
            }
          }
        }
        ChildKiller killer{pid};
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (count_files(ckpts) < files && std::chrono::steady_clock::now() < deadline &&
               ::waitpid(pid, nullptr, WNOHANG) == 0) {
        }
        std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
        ::kill(pid, SIGKILL);
        int wstatus = 0;
        ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid) << "the writer failed before it was killed";
        killer.pid = 0;
        ASSERT_TRUE(WIFSIGNALED(wstatus)) << "the writer failed before it was killed";

        int complete = 0;
        std::vector<fs::path> incomplete;
        for (const auto& e : fs::directory_iterator(ckpts)) {
          if (e.path().filename().string().find(".tmp-") != std::string::npos) continue;
          CheckpointMeta meta;
          const absl::Status s = read_all(e.path(), &meta);
          if (shards > 1 && s.code() == absl::StatusCode::kNotFound) {
            incomplete.push_back(e.path());
            continue;
          }
          ASSERT_TRUE(s.ok()) << s;
          EXPECT_EQ(e.path().string(), checkpoint_dir_for_step(ckpts, meta.step));
          ++complete;
        }
        auto latest = latest_checkpoint(ckpts);
        EXPECT_EQ(latest.ok(), complete > 0) << latest.status();
        for (const fs::path& dir : incomplete) {
          for (const char* shard : {"shard-00000-of-00002.h5", "shard-00001-of-00002.h5"}) {
            if (!fs::exists(dir / shard)) fs::copy_file(fs::path(reference) / shard, dir / shard);
          }
          const absl::Status s = read_all(dir, nullptr);
          ASSERT_TRUE(s.ok()) << s << " (" << dir << " completed with reference shards)";
        }
      }
    }
  }
}

TEST_F(CheckpointTest, MisuseOfTheWriterThrows) {
  const Tensor t = random_tensor({4, 2}, DType::kF32, 101);
  const std::string dir = path("step-000010");
  EXPECT_THROW(write_checkpoint_shard(dir, 2, 2, {{"t", t}}, {}), Error);
  EXPECT_THROW(write_checkpoint_shard(dir, 0, 2, {{"t", t}, {"t", t}}, {}), Error);
  EXPECT_THROW(write_checkpoint_shard(dir, 0, 2, {{"", t}}, {}), Error);
  // Rows [6, 10) of a global [8, 2] tensor, and a global shape of another rank.
  EXPECT_THROW(write_checkpoint_shard(dir, 0, 2, {{"t", t, {8, 2}, 6}}, {}), Error);
  EXPECT_THROW(write_checkpoint_shard(dir, 0, 2, {{"t", t, {8, 2, 1}, 0}}, {}), Error);
  EXPECT_FALSE(fs::exists(dir));
}

TEST_F(CheckpointTest, CudaTensorsRoundTripThroughTheHost) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const Tensor host = random_tensor({6, 4}, DType::kBF16, 111);
  const std::string dir = path("step-000011");
  ASSERT_TRUE(write_checkpoint_shard(dir, 0, 1, {{"w", host.to(Device::cuda())}}, {}).ok());
  std::vector<TensorShard> into = {
      {"w", Tensor::zeros({3, 4}, DType::kBF16, Device::cuda()), {6, 4}, 2}};
  const absl::Status s = read_checkpoint(dir, absl::MakeSpan(into), nullptr);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(into[0].tensor.is_cuda());
  EXPECT_EQ(bytes_of(into[0].tensor), bytes_of(host.narrow(2, 3)));
}

}  // namespace
}  // namespace fathom::trainer
