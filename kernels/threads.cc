#include "kernels/threads.h"

#include <cblas.h>
#include <omp.h>

#include "kernels/check.h"

namespace fathom {

void set_cpu_threads(int n) {
  FATHOM_CHECK(n >= 1) << "set_cpu_threads: thread count must be >= 1, got " << n;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int cpu_threads() { return omp_get_max_threads(); }

}  // namespace fathom
