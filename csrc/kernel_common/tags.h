// Backend tags: overloads of launch_<op> for the real GPU and for the CPU emulation harness.
#pragma once

namespace tetris {
struct CudaTag {};
struct EmuTag {};
}  // namespace tetris
