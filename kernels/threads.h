// CPU thread count for the host kernels: one setting for OpenMP loops and OpenBLAS calls.
//
// The CPU ops use OpenMP loops and OpenBLAS's OpenMP build, which share one thread pool; both
// are sized to the cores this rank may use. Several ranks on one machine must split the cores
// between them (threads x ranks <= cores, MACHINE.md), and should wait passively
// (OMP_WAIT_POLICY=passive), or speed collapses.
// The OpenMP count is per calling thread: call set_cpu_threads from the thread that runs the ops,
// while no op is running.
#pragma once

namespace fathom {

// Sets the OpenMP and OpenBLAS thread counts to n. Throws fathom::Error when n < 1.
void set_cpu_threads(int n);
// The OpenMP thread count the CPU ops use on the calling thread.
int cpu_threads();

}  // namespace fathom
