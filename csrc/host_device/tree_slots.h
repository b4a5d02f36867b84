// Per-element rules of the verification-block layout (tree_mask, tree_mask_packed) and of the
// tree walk of the verify ops, shared by the CPU implementations and the kernels so that both
// read untrusted index values the same way.
#pragma once

#include <cstdint>

#include "host_device/host_device.h"

namespace tetris {

// A candidate's parent index is valid when it is the root (-1) or an earlier candidate.
TETRIS_HD bool parent_index_valid(int64_t parent, int64_t n) { return parent >= -1 && parent < n; }

// A token id is valid when it indexes the vocabulary.
TETRIS_HD bool token_in_vocab(int64_t token, int64_t vocab) { return token >= 0 && token < vocab; }

// Without a parents tensor the candidates form a chain: n's parent is n - 1 (the root for n = 0).
TETRIS_HD int64_t chain_parent(int64_t n) { return n - 1; }

// Candidate n joins the verification block when it is selected, its parent index is valid and
// its parent is the root or already in the block (so a selected candidate with an unselected or
// invalid ancestor is left out together with its subtree). `parent_in_block` is only read when
// the parent is a candidate.
TETRIS_HD bool joins_block(bool selected, int64_t parent, int64_t n, bool parent_in_block) {
  return selected && parent_index_valid(parent, n) && (parent == -1 || parent_in_block);
}

// Packed mask layout (FlashInfer packbits, little bit order): bit (j % 8) of byte j / 8 of a row.
TETRIS_HD int64_t packed_row_bytes(int64_t slots) { return (slots + 7) / 8; }
TETRIS_HD uint8_t packed_bit(int64_t j) { return static_cast<uint8_t>(1u << (j & 7)); }

// In the verify ops, slot s is a child of slot `current` when its slot_parent value names
// `current` and it comes later (slots are in topological order); any other slot_parent value
// (out of range, a later slot, itself) makes the slot nobody's child, so it is never accepted.
TETRIS_HD bool is_child_slot(int64_t parent_of_s, int64_t s, int64_t current) {
  return parent_of_s == current && current < s;
}

}  // namespace tetris
