// The `fathom` command line: subcommand dispatch and help.
#pragma once

namespace fathom::launch {

// Runs the subcommand named in argv[1]. Returns the process exit code: 0 on success, 1 on a
// failed run, 2 on a usage error (the message names the bad argument).
int run_cli(int argc, char** argv);

}  // namespace fathom::launch
