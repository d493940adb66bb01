#include "data/safetensors.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/reference/python.h"

namespace fathom::data {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;

using ::fathom::testing::kPython;
using ::fathom::testing::python_has_numpy;

fs::path source_dir() { return fs::path(FATHOM_SOURCE_DIR); }

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           absl::StrCat("fathom_safetensors_test_", ::getpid(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A file made of the 8-byte length, `header` and `data`.
  std::string make_file(const std::string& name, const std::string& header,
                        const std::string& data) {
    std::string bytes(8, '\0');
    const uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(n >> (8 * i));
    bytes += header;
    bytes += data;
    return write_raw(name, bytes);
  }
  std::string write_raw(const std::string& name, const std::string& bytes) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }
  // The error of opening a file with this header and `data_bytes` zero bytes of data.
  absl::Status open_error(const std::string& header, size_t data_bytes) {
    const std::string path = make_file("bad.safetensors", header, std::string(data_bytes, '\0'));
    absl::StatusOr<SafetensorsFile> f = SafetensorsFile::open(path);
    EXPECT_FALSE(f.ok()) << "accepted header " << header;
    return f.ok() ? absl::OkStatus() : f.status();
  }

  fs::path dir_;
};

float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST_F(SafetensorsTest, WriteThenReadIsBitIdenticalForEveryDtype) {
  std::vector<StNamedTensor> tensors;
  tensors.push_back({"w.f32", Tensor::from_floats({1.5f, -0.0f, 3e38f, 1e-45f, 2, 3}, {2, 3})});
  tensors.push_back({"w.bf16", Tensor::from_floats({1, 2, -3, 0.15625f}, {4}, DType::kBF16)});
  tensors.push_back({"w.fp8", Tensor::from_floats({448, -0.5f, 0.001f}, {3}, DType::kF8E4M3)});
  tensors.push_back({"w.e5m2", Tensor::from_floats({-2, 57344}, {1, 2}, DType::kF8E5M2)});
  tensors.push_back({"i.i64", Tensor::from_vector<int64_t>({INT64_MIN, -1, INT64_MAX}, {3})});
  tensors.push_back({"i.i32", Tensor::from_vector<int32_t>({7, -9}, {2, 1})});
  tensors.push_back({"i.u8", Tensor::from_vector<uint8_t>({0, 255, 3}, {3})});
  tensors.push_back({"scalar", Tensor::from_floats({42}, {})});
  tensors.push_back({"empty", Tensor::empty({0, 5}, DType::kF32)});
  const std::string path = (dir_ / "x.safetensors").string();
  ASSERT_TRUE(write_safetensors(path, tensors, {{"format", "pt"}, {"step", "7"}}).ok());

  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->metadata().at("step"), "7");
  ASSERT_EQ(f->tensors().size(), tensors.size());
  // The header length is a multiple of 8, so tensors are 8-byte aligned in the file.
  std::ifstream in(path, std::ios::binary);
  uint64_t header_len = 0;
  in.read(reinterpret_cast<char*>(&header_len), 8);
  EXPECT_EQ(header_len % 8, 0u);
  for (const StNamedTensor& t : tensors) {
    SCOPED_TRACE(t.name);
    const StTensorInfo* info = f->find(t.name);
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(info->dtype, st_dtype_for(t.tensor.dtype()));
    EXPECT_EQ(info->shape, t.tensor.shape());
    absl::StatusOr<Tensor> back = f->read(t.name);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->dtype(), t.tensor.dtype());
    EXPECT_EQ(back->shape(), t.tensor.shape());
    ASSERT_EQ(back->nbytes(), t.tensor.nbytes());
    EXPECT_EQ(std::memcmp(back->raw_data(), t.tensor.raw_data(), t.tensor.nbytes()), 0);
  }
  EXPECT_EQ(f->find("nope"), nullptr);
  EXPECT_THAT(std::string(f->read("nope").status().message()),
              AllOf(HasSubstr("x.safetensors"), HasSubstr("no tensor 'nope'")));
  // The write is atomic: no temporary is left behind.
  int files = 0;
  for (const auto& entry : fs::directory_iterator(dir_)) files += entry.is_regular_file();
  EXPECT_EQ(files, 1);
}

TEST_F(SafetensorsTest, FilesFromAnIndependentNumpyWriterLoad) {
  const fs::path script = source_dir() / "tests/reference/make_safetensors_fixture.py";
  if (!python_has_numpy()) {
    GTEST_SKIP() << kPython << " with numpy is needed (apt-get install python3-numpy)";
  }
  const std::string path = (dir_ / "numpy.safetensors").string();
  ASSERT_EQ(std::system(absl::StrCat(kPython, " ", script.string(), " dtypes ", path).c_str()), 0);
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->metadata().at("writer"), "numpy");
  ASSERT_EQ(f->tensors().size(), 8u);

  // The same values as dtype_values() in the script.
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> f32 = {
      0.0f, -0.0f, 1.5f, -2.25f, 3.4028234663852886e38f, bits_to_float(1), inf, 7.0f};
  const std::vector<float> f16 = {0.0f,
                                  -0.0f,
                                  1.5f,
                                  65504.0f,
                                  std::ldexp(1.0f, -14),
                                  std::ldexp(1.0f, -24),
                                  3 * std::ldexp(1.0f, -20),
                                  -2.5f,
                                  inf,
                                  -1.0f};
  // 1e30 is not a bf16 value: the script rounds it to nearest even, as float_to_bf16 does.
  const std::vector<float> bf16 = {
      1.0f, -3.5f, 0.15625f, bf16_to_float(float_to_bf16(1e30f)), -0.0f, std::ldexp(1.0f, -126)};
  auto expect_floats = [&](const char* name, DType dtype, const Shape& shape,
                           const std::vector<float>& want) {
    SCOPED_TRACE(name);
    absl::StatusOr<Tensor> t = f->read(name);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->dtype(), dtype);
    EXPECT_EQ(t->shape(), shape);
    const std::vector<float> got = t->to_floats();
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(std::signbit(got[i]), std::signbit(want[i])) << i;
      EXPECT_EQ(got[i], want[i]) << i;
    }
  };
  expect_floats("a.f32", DType::kF32, {2, 4}, f32);
  expect_floats("b.f16", DType::kF32, {5, 2}, f16);  // F16 is loaded as f32
  expect_floats("c.bf16", DType::kBF16, {3, 2}, bf16);
  absl::StatusOr<Tensor> fp8 = f->read("d.fp8");
  ASSERT_TRUE(fp8.ok());
  EXPECT_EQ(fp8->dtype(), DType::kF8E4M3);
  const std::vector<uint8_t> codes = {0x00, 0x01, 0x38, 0x7E, 0xFE, 0x80, 0x44, 0x3F};
  EXPECT_EQ(std::memcmp(fp8->raw_data(), codes.data(), codes.size()), 0);
  EXPECT_EQ(fp8->to_floats()[2], 1.0f);  // 0x38: exponent 7, mantissa 0
  EXPECT_EQ(fp8->to_floats()[3], 448.0f);
  EXPECT_EQ(f->read("e.i64")->to_vector<int64_t>(),
            (std::vector<int64_t>{INT64_MIN, -1, 0, 1, (int64_t{1} << 62) + 7}));
  EXPECT_EQ(f->read("f.i32")->to_vector<int32_t>(),
            (std::vector<int32_t>{INT32_MIN, 5, INT32_MAX, -7}));
  EXPECT_EQ(f->read("g.u8")->to_vector<uint8_t>(), (std::vector<uint8_t>{0, 1, 254, 255}));
  EXPECT_EQ(f->read("h.empty")->shape(), (Shape{0, 3}));
}

TEST_F(SafetensorsTest, F16ConversionIsExactForAllBitPatterns) {
  std::string data(65536 * 2, '\0');
  for (uint32_t h = 0; h < 65536; ++h) {
    data[2 * h] = static_cast<char>(h & 0xFF);
    data[2 * h + 1] = static_cast<char>(h >> 8);
  }
  const std::string path =
      make_file("f16.safetensors",
                R"({"h":{"dtype":"F16","shape":[65536],"data_offsets":[0,131072]}})", data);
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  absl::StatusOr<Tensor> t = f->read("h");
  ASSERT_TRUE(t.ok());
  const float* got = t->data<float>();
  for (uint32_t h = 0; h < 65536; ++h) {
    _Float16 half;
    const uint16_t bits = static_cast<uint16_t>(h);
    std::memcpy(&half, &bits, 2);
    const float want = static_cast<float>(half);  // the compiler's own conversion
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got[h])) << std::hex << h;
    } else {
      ASSERT_EQ(std::memcmp(&got[h], &want, 4), 0)
          << std::hex << h << ": " << got[h] << " vs " << want;
    }
  }
}

TEST_F(SafetensorsTest, BadFilesGetErrorsNamingTheTensorAndTheProblem) {
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  auto message = [&](const std::string& header, size_t data_bytes) {
    return std::string(open_error(header, data_bytes).message());
  };
  // Wrong dtype name.
  EXPECT_THAT(message(R"({"w":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", 8),
              AllOf(HasSubstr("tensor 'w'"), HasSubstr("unknown dtype 'F33'")));
  // Shape against byte length.
  EXPECT_THAT(message(R"({"w":{"dtype":"BF16","shape":[4,8],"data_offsets":[0,60]}})", 60),
              AllOf(HasSubstr("tensor 'w'"), HasSubstr("[4, 8] x BF16"), HasSubstr("64 bytes"),
                    HasSubstr("hold 60")));
  // Overlap and gap name both tensors.
  EXPECT_THAT(message(absl::StrCat("{", ok_entry,
                                   R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})"),
                      12),
              AllOf(HasSubstr("tensor 'b'"), HasSubstr("overlap tensor 'a'")));
  EXPECT_THAT(message(absl::StrCat("{", ok_entry,
                                   R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})"),
                      16),
              AllOf(HasSubstr("tensor 'b'"), HasSubstr("gap of 4 bytes after tensor 'a'")));
  // Offsets past the end of the file: truncated.
  absl::Status truncated = open_error(absl::StrCat("{", ok_entry, "}"), 5);
  EXPECT_TRUE(absl::IsDataLoss(truncated)) << truncated;
  EXPECT_THAT(std::string(truncated.message()),
              AllOf(HasSubstr("tensor 'a'"), HasSubstr("truncated")));
  // Trailing bytes that no tensor covers.
  EXPECT_THAT(message(absl::StrCat("{", ok_entry, "}"), 12), HasSubstr("trailing data"));
  // Bad JSON, wrong JSON types, missing and unknown keys, duplicate names.
  EXPECT_THAT(message(R"({"w":{"dtype":"F32",)", 0), HasSubstr("bad JSON"));
  EXPECT_THAT(message("[1, 2]", 0), HasSubstr("expected an object"));
  EXPECT_THAT(message(R"({"w":{"dtype":"F32","shape":[2]}})", 8),
              AllOf(HasSubstr("tensor 'w'"), HasSubstr("no 'data_offsets'")));
  EXPECT_THAT(message(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
              AllOf(HasSubstr("tensor 'w'"), HasSubstr("non-negative")));
  EXPECT_THAT(message(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8),
              AllOf(HasSubstr("tensor 'w'"), HasSubstr("end before they begin")));
  EXPECT_THAT(message(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", 8),
              AllOf(HasSubstr("tensor 'w'"), HasSubstr("unknown key 'x'")));
  EXPECT_THAT(message(absl::StrCat("{", ok_entry, ",", ok_entry, "}"), 8),
              HasSubstr("duplicate key 'a'"));
  EXPECT_THAT(message(R"({"__metadata__":{"k":1}})", 0), HasSubstr("__metadata__ key 'k'"));
  EXPECT_THAT(message(R"({"w":{"dtype":"F32","shape":[4611686018427387904,4],)"
                      R"("data_offsets":[0,8]}})",
                      8),
              AllOf(HasSubstr("tensor 'w'"), HasSubstr("64 bits")));

  // Files too short for a header, or whose header length runs past the end.
  absl::StatusOr<SafetensorsFile> tiny = SafetensorsFile::open(write_raw("tiny", "abc"));
  ASSERT_FALSE(tiny.ok());
  EXPECT_THAT(std::string(tiny.status().message()), HasSubstr("truncated"));
  std::string long_header(8, '\0');
  long_header[0] = 100;
  absl::StatusOr<SafetensorsFile> cut = SafetensorsFile::open(write_raw("cut", long_header + "{}"));
  ASSERT_FALSE(cut.ok());
  EXPECT_THAT(std::string(cut.status().message()),
              AllOf(HasSubstr("header length 100"), HasSubstr("truncated")));
  std::string huge(8, '\xff');
  EXPECT_FALSE(SafetensorsFile::open(write_raw("huge", huge + "{}")).ok());
  EXPECT_TRUE(absl::IsNotFound(SafetensorsFile::open((dir_ / "missing").string()).status()));

  // A real file cut short is reported as truncated, naming the tensor that no longer fits.
  const std::string path = (dir_ / "whole.safetensors").string();
  ASSERT_TRUE(write_safetensors(path, {{"first", Tensor::zeros({64}, DType::kF32)},
                                       {"second", Tensor::zeros({64}, DType::kF32)}})
                  .ok());
  fs::resize_file(path, fs::file_size(path) - 100);
  absl::StatusOr<SafetensorsFile> cut_file = SafetensorsFile::open(path);
  ASSERT_FALSE(cut_file.ok());
  EXPECT_THAT(std::string(cut_file.status().message()),
              AllOf(HasSubstr("tensor 'second'"), HasSubstr("truncated")));
}

TEST_F(SafetensorsTest, DtypesWithoutAFathomDtypeAreRefusedOnRead) {
  const std::string path =
      make_file("f64.safetensors", R"({"d":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})",
                std::string(8, '\0'));
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok()) << f.status();  // valid file
  EXPECT_THAT(std::string(f->read("d").status().message()),
              AllOf(HasSubstr("tensor 'd'"), HasSubstr("F64 has no fathom dtype")));
}

TEST_F(SafetensorsTest, PlanShardsFillsFilesInOrder) {
  EXPECT_EQ(plan_shards({10, 10, 10, 10}, 25), (std::vector<int>{0, 0, 1, 1}));
  // A tensor larger than the limit gets a file of its own.
  EXPECT_EQ(plan_shards({5, 100, 5, 5}, 20), (std::vector<int>{0, 1, 2, 2}));
  EXPECT_EQ(plan_shards({1, 2, 3}, 1000), (std::vector<int>{0, 0, 0}));
  EXPECT_EQ(shard_file_name(0, 1), "model.safetensors");
  EXPECT_EQ(shard_file_name(1, 3), "model-00002-of-00003.safetensors");
}

TEST_F(SafetensorsTest, ShardedDirectoryWithIndexReadsBackAndChecksTheIndex) {
  const std::string dir = dir_.string();
  ASSERT_TRUE(write_safetensors(
                  dir + "/model-00001-of-00002.safetensors",
                  {{"a", Tensor::from_floats({1, 2}, {2})}, {"b", Tensor::from_floats({3}, {1})}})
                  .ok());
  ASSERT_TRUE(write_safetensors(dir + "/model-00002-of-00002.safetensors",
                                {{"c", Tensor::from_floats({4, 5, 6}, {3})}})
                  .ok());
  const std::vector<std::string> names = {"a", "b", "c"};
  std::vector<std::string> files = {"model-00001-of-00002.safetensors",
                                    "model-00001-of-00002.safetensors",
                                    "model-00002-of-00002.safetensors"};
  ASSERT_TRUE(write_safetensors_index(dir, names, files, 24).ok());
  absl::StatusOr<SafetensorsDir> st = SafetensorsDir::open(dir);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_TRUE(st->sharded());
  EXPECT_EQ(st->names(), names);
  EXPECT_EQ(st->read("c")->to_floats(), (std::vector<float>{4, 5, 6}));
  EXPECT_THAT(st->file_of("b")->path(), HasSubstr("00001-of-00002"));

  // The index names the wrong file for a tensor.
  files[2] = "model-00001-of-00002.safetensors";
  ASSERT_TRUE(write_safetensors_index(dir, names, files, 24).ok());
  EXPECT_THAT(std::string(SafetensorsDir::open(dir).status().message()),
              AllOf(HasSubstr("tensor 'c'"), HasSubstr("which does not hold it")));
  // A tensor held by a file the index uses, but not in the index.
  ASSERT_TRUE(
      write_safetensors_index(dir, {"a", "c"}, {files[0], "model-00002-of-00002.safetensors"}, 16)
          .ok());
  EXPECT_THAT(std::string(SafetensorsDir::open(dir).status().message()),
              AllOf(HasSubstr("tensor 'b'"), HasSubstr("is not in model.safetensors.index.json")));
  // A file the index names is missing.
  ASSERT_TRUE(
      write_safetensors_index(dir, {"a", "z"}, {files[0], "model-00009-of-00009.safetensors"}, 12)
          .ok());
  EXPECT_THAT(std::string(SafetensorsDir::open(dir).status().message()),
              AllOf(HasSubstr("tensor 'z'"), HasSubstr("does not exist")));
  // Bad index JSON.
  write_raw(kSafetensorsIndexName, "{\"weight_map\": [");
  EXPECT_THAT(std::string(SafetensorsDir::open(dir).status().message()), HasSubstr("bad JSON"));
  // Neither index nor model.safetensors.
  fs::create_directories(dir_ / "empty");
  EXPECT_TRUE(absl::IsNotFound(SafetensorsDir::open((dir_ / "empty").string()).status()));
}

}  // namespace
}  // namespace fathom::data
