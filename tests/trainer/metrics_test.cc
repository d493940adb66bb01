#include "trainer/metrics.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/check.h"

namespace fathom::trainer {
namespace {

using ::testing::HasSubstr;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string fresh_dir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/fathom_metrics_test_" + name;
  std::filesystem::remove_all(dir);
  return dir;
}

TEST(JsonString, EscapesQuotesBackslashesAndControlCharacters) {
  EXPECT_EQ(json_string(""), "\"\"");
  EXPECT_EQ(json_string("plain text"), "\"plain text\"");
  EXPECT_EQ(json_string("say \"hi\""), "\"say \\\"hi\\\"\"");
  EXPECT_EQ(json_string("a\\b"), "\"a\\\\b\"");
  EXPECT_EQ(json_string("l1\nl2\r\t\b\f"), "\"l1\\nl2\\r\\t\\b\\f\"");
  EXPECT_EQ(json_string(std::string("nul\0x\x1f", 6)), "\"nul\\u0000x\\u001f\"");
  EXPECT_EQ(json_string("</answer>/"), "\"</answer>/\"");  // '/' and '<' need no escape
}

TEST(JsonString, KeepsValidUtf8AndReplacesInvalidBytes) {
  EXPECT_EQ(json_string("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x99\x82"),
            "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x99\x82\"");  // é € 🙂
  EXPECT_EQ(json_string("a\xff"
                        "b"),
            "\"a\\ufffdb\"");                                           // not a UTF-8 byte
  EXPECT_EQ(json_string("\xc3"), "\"\\ufffd\"");                        // truncated sequence
  EXPECT_EQ(json_string("\xc0\xaf"), "\"\\ufffd\\ufffd\"");             // overlong '/'
  EXPECT_EQ(json_string("\xed\xa0\x80"), "\"\\ufffd\\ufffd\\ufffd\"");  // a surrogate
  EXPECT_EQ(json_string("\xe2\x82"
                        "x"),
            "\"\\ufffd\\ufffdx\"");  // cut short by 'x'
}

TEST(JsonNumber, RoundTripsAndWritesNonFiniteAsNull) {
  for (double v : {0.0, 1.0, -2.5, 0.1, 1.0 / 3.0, 3e-4, 1e-8, 123456789.123, 6.02214076e23,
                   std::numeric_limits<double>::min(), std::numeric_limits<double>::max()}) {
    const std::string text = json_number(v);
    EXPECT_EQ(std::strtod(text.c_str(), nullptr), v) << text;
  }
  EXPECT_EQ(json_number(0.1), "0.1");
  EXPECT_EQ(json_number(3.0), "3");
  EXPECT_EQ(json_number(1e-8), "1e-08");
  EXPECT_EQ(json_number(0.1f), "0.1");  // a float prints as its own shortest form
  EXPECT_EQ(std::strtof(json_number(2.3140001f).c_str(), nullptr), 2.3140001f);
  EXPECT_EQ(json_number(std::nan("")), "null");
  EXPECT_EQ(json_number(std::numeric_limits<double>::infinity()), "null");
  EXPECT_EQ(json_number(-std::numeric_limits<float>::infinity()), "null");
}

TEST(JsonObject, KeepsInsertionOrderAndTypes) {
  JsonObject o;
  EXPECT_EQ(o.str(), "{}");
  const std::vector<double> load = {0.25, std::nan(""), 1.5};
  const std::vector<int64_t> counts = {3, -1, std::numeric_limits<int64_t>::max()};
  JsonObject nested;
  nested.add("mean", 2.0);
  o.add("step", int64_t{120})
      .add("loss", 2.314)
      .add("lr", 3e-3f)
      .add("tokens", uint64_t{18446744073709551615u})
      .add("ok", true)
      .add("stage", "pretrain \"tiny\"")
      .add("expert_load", absl::MakeConstSpan(load))
      .add("counts", absl::MakeConstSpan(counts))
      .add("grad", nested);
  EXPECT_EQ(o.str(),
            "{\"step\": 120, \"loss\": 2.314, \"lr\": 0.003, \"tokens\": 18446744073709551615, "
            "\"ok\": true, \"stage\": \"pretrain \\\"tiny\\\"\", \"expert_load\": [0.25, null, "
            "1.5], \"counts\": [3, -1, 9223372036854775807], \"grad\": {\"mean\": 2}}");
  EXPECT_EQ(o.keys().size(), 9u);
  EXPECT_THROW(o.add("loss", 1.0), fathom::Error);
}

TEST(MetricsWriter, AppendsOneFlushedLinePerRecord) {
  const std::string dir = fresh_dir("append") + "/nested/run";
  {
    absl::StatusOr<MetricsWriter> writer = MetricsWriter::open(dir);
    ASSERT_TRUE(writer.ok()) << writer.status();
    EXPECT_EQ(writer->path(), dir + "/metrics.jsonl");
    JsonObject a;
    a.add("step", 1).add("loss", 2.5);
    ASSERT_TRUE(writer->write(a).ok());
    // Flushed: readable before the writer closes.
    EXPECT_EQ(read_file(dir + "/metrics.jsonl"), "{\"step\": 1, \"loss\": 2.5}\n");
  }
  // A reopened writer (a resumed run) appends.
  absl::StatusOr<MetricsWriter> again = MetricsWriter::open(dir);
  ASSERT_TRUE(again.ok()) << again.status();
  JsonObject b;
  b.add("step", 2).add("loss", std::nan(""));
  ASSERT_TRUE(again->write(b).ok());
  EXPECT_EQ(read_file(dir + "/metrics.jsonl"),
            "{\"step\": 1, \"loss\": 2.5}\n{\"step\": 2, \"loss\": null}\n");
}

TEST(MetricsWriter, ReportsADirectoryThatCannotBeCreated) {
  const std::string dir = fresh_dir("blocked");
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/file") << "x";
  const absl::Status status = MetricsWriter::open(dir + "/file/run").status();
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr(dir + "/file/run"));
}

TEST(FormatDuration, RoundsToSecondsAndAddsHours) {
  EXPECT_EQ(format_duration(0), "0:00");
  EXPECT_EQ(format_duration(41), "0:41");
  EXPECT_EQ(format_duration(59.4), "0:59");
  EXPECT_EQ(format_duration(59.6), "1:00");
  EXPECT_EQ(format_duration(725), "12:05");
  EXPECT_EQ(format_duration(3600), "1:00:00");
  EXPECT_EQ(format_duration(3723), "1:02:03");
  EXPECT_EQ(format_duration(100 * 3600 + 61), "100:01:01");
  EXPECT_EQ(format_duration(-1), "?");
  EXPECT_EQ(format_duration(std::nan("")), "?");
}

TEST(FormatNumbers, SiPrefixesAndSignificantDigits) {
  EXPECT_EQ(format_si(950), "950");
  EXPECT_EQ(format_si(12.5), "12.5");
  EXPECT_EQ(format_si(12300), "12.3k");
  EXPECT_EQ(format_si(999.4), "999");
  EXPECT_EQ(format_si(999.6), "1k");  // not "1e+03"
  EXPECT_EQ(format_si(1.5e9), "1.5G");
  EXPECT_EQ(format_si(-2500), "-2.5k");
  EXPECT_EQ(format_number(2.3141), "2.314");
  EXPECT_EQ(format_number(0.0003), "0.0003");
  EXPECT_EQ(format_number(std::nan("")), "nan");
  EXPECT_EQ(format_number(-std::numeric_limits<double>::infinity()), "-inf");
}

TEST(FormatProgress, LineLayoutAndEta) {
  const std::vector<ProgressItem> items = {ProgressItem::number("loss", 2.3141),
                                           ProgressItem::rate(12345, "tok/s")};
  // 120 steps in 27.4 s: 180 more take 41.1 s.
  EXPECT_EQ(format_progress(120, 300, 27.4, items),
            "step 120/300 | loss 2.314 | 12.3k tok/s | ETA 0:41");
  EXPECT_EQ(format_progress(0, 300, 0.0, {}), "step 0/300 | ETA ?");
  EXPECT_EQ(format_progress(300, 300, 68.0, {}), "step 300/300 | ETA 0:00");
  // Resumed at step 100: 20 steps in 10 s, 180 steps left take 90 s.
  EXPECT_EQ(format_progress(120, 300, 10.0, {}, 100), "step 120/300 | ETA 1:30");
  // 1 step of 10000 in 2 s: 19998 s left.
  EXPECT_EQ(format_progress(1, 10000, 2.0, {ProgressItem{"lr", 3e-3, "", {}}}),
            "step 1/10000 | lr 0.003 | ETA 5:33:18");
}

// Captures what a printer writes.
class Capture {
 public:
  Capture() : file_(std::tmpfile()) {}
  ~Capture() { std::fclose(file_); }
  FILE* file() { return file_; }
  std::string text() {
    std::fflush(file_);
    std::rewind(file_);
    std::string out;
    for (int c; (c = std::fgetc(file_)) != EOF;) out += static_cast<char>(c);
    return out;
  }

 private:
  FILE* file_;
};

TEST(ProgressPrinter, PlainLinesEveryNStepsWithoutATerminal) {
  Capture capture;
  {
    ProgressPrinter printer(capture.file(), /*tty=*/false, /*every=*/2);
    for (int64_t step = 1; step <= 5; ++step)
      printer.update(step, 5, "line " + std::to_string(step));
    printer.print("eval: accuracy 0.5");
  }
  EXPECT_EQ(capture.text(), "line 2\nline 4\nline 5\neval: accuracy 0.5\n");
}

TEST(ProgressPrinter, RewritesOneLineOnATerminal) {
  Capture capture;
  {
    ProgressPrinter printer(capture.file(), /*tty=*/true, /*every=*/100);
    printer.update(1, 3, "step 1/3 long");
    printer.update(2, 3, "step 2/3");
    printer.print("note");
    printer.update(3, 3, "step 3/3");
  }  // the destructor ends the line
  EXPECT_EQ(capture.text(),
            "\rstep 1/3 long"
            "\rstep 2/3     "  // padded over the longer previous line
            "\r        \rnote\nstep 2/3"
            "\rstep 3/3\n");
  EXPECT_THROW(ProgressPrinter(capture.file(), false, 0), fathom::Error);
}

}  // namespace
}  // namespace fathom::trainer
