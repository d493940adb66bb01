#include "kernels/check.h"

namespace fathom {
namespace {
std::string& context_storage() {
  static std::string* context = new std::string();
  return *context;
}
}  // namespace

void set_error_context(std::string context) { context_storage() = std::move(context); }
const std::string& error_context() { return context_storage(); }

}  // namespace fathom
