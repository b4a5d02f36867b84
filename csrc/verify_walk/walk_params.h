// What the kernel params of verify_greedy and verify_sampling share: the [B, M] slot tensors the
// walk reads and the three outputs it writes (verify_walk/kernel_walk.cuh). Host-includable.
#pragma once

#include <cstdint>

#include "host_device/index_matrix.h"

namespace tetris {

struct VerifyWalkParams {
  int64_t batch = 0;  // B
  int64_t slots = 0;  // M >= 1 (slot 0 is the root)

  // Inputs [B, M], read with their own strides.
  IndexMatrix slot_tokens, slot_parent;

  // Outputs, contiguous: accepted_slots [B, M], num_accepted [B], out_tokens [B, M].
  int64_t* accepted_slots = nullptr;
  int32_t* num_accepted = nullptr;
  int64_t* out_tokens = nullptr;
};

}  // namespace tetris
