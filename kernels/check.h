// Error policy (DESIGN.md decision 8).
//
// - What a user can cause (config, files, CLI) returns absl::Status / absl::StatusOr and is
//   propagated with FATHOM_RETURN_IF_ERROR / FATHOM_ASSIGN_OR_RETURN.
// - Invariants and misuse of an API (wrong shapes, dtypes or devices passed to an op) use
//   FATHOM_CHECK, which is always on and throws fathom::Error with the condition, file:line and a
//   message. Throwing (rather than aborting) lets the top level of a rank print the error and stop
//   every rank, and lets tests assert on the message.
// - Library code never calls exit().
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fathom {

// Thrown by FATHOM_CHECK and by backend check macros (CUDA, cuBLASLt, ...).
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A process-wide prefix for error messages, such as "rank 3", set once by the launcher so that
// every failure names the rank it happened on. Empty by default.
void set_error_context(std::string context);
const std::string& error_context();

namespace detail {

// Collects `<<` pieces of a failed check's message, then throws on destruction of the builder.
class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* condition) {
    if (!error_context().empty()) stream_ << "[" << error_context() << "] ";
    stream_ << file << ":" << line << ": check failed: " << condition;
  }
  template <typename T>
  CheckFailure& operator<<(const T& value) {
    if (!has_message_) {
      stream_ << ": ";
      has_message_ = true;
    }
    stream_ << value;
    return *this;
  }
  [[noreturn]] void raise() const { throw Error(stream_.str()); }

 private:
  std::ostringstream stream_;
  bool has_message_ = false;
};

// Lets `FATHOM_CHECK(c) << "msg"` throw after the whole message has been streamed.
struct CheckRaiser {
  [[noreturn]] void operator&(CheckFailure& failure) const { failure.raise(); }
  [[noreturn]] void operator&(CheckFailure&& failure) const { failure.raise(); }
};

}  // namespace detail
}  // namespace fathom

#define FATHOM_PREDICT_FALSE(x) (__builtin_expect(static_cast<bool>(x), 0))

// FATHOM_CHECK(cond) << "context " << value;   throws fathom::Error when cond is false.
#define FATHOM_CHECK(cond)                  \
  if (!FATHOM_PREDICT_FALSE(!(cond))) {     \
  } else                                    \
    ::fathom::detail::CheckRaiser() &       \
        ::fathom::detail::CheckFailure(__FILE__, __LINE__, #cond)

#define FATHOM_CHECK_EQ(a, b) FATHOM_CHECK((a) == (b)) << #a "=" << (a) << " " #b "=" << (b) << " "
#define FATHOM_CHECK_LE(a, b) FATHOM_CHECK((a) <= (b)) << #a "=" << (a) << " " #b "=" << (b) << " "
#define FATHOM_CHECK_LT(a, b) FATHOM_CHECK((a) < (b)) << #a "=" << (a) << " " #b "=" << (b) << " "

#define FATHOM_STATUS_CONCAT_INNER(a, b) a##b
#define FATHOM_STATUS_CONCAT(a, b) FATHOM_STATUS_CONCAT_INNER(a, b)

// Returns the status from the enclosing function if `expr` is not OK.
#define FATHOM_RETURN_IF_ERROR(expr)                          \
  do {                                                        \
    ::absl::Status fathom_status_ = (expr);                   \
    if (!fathom_status_.ok()) return fathom_status_;          \
  } while (0)

// FATHOM_ASSIGN_OR_RETURN(auto x, MakeX());  unwraps a StatusOr or returns its error.
#define FATHOM_ASSIGN_OR_RETURN(lhs, expr) \
  FATHOM_ASSIGN_OR_RETURN_IMPL(FATHOM_STATUS_CONCAT(fathom_statusor_, __LINE__), lhs, expr)
#define FATHOM_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()
