#include "launch/cli.h"

int main(int argc, char** argv) { return fathom::launch::run_cli(argc, argv); }
