// A model's identity for the distributed runtime: workers must hold the same model as
// the coordinator (same tokenizer, same shapes, same weights), or chunk K/V computed on
// one would be laid into another's cache. The fingerprint is two stable 64-bit hashes
// (FNV-1a, identical across processes and machines):
//   shape:   architecture, every config field that changes the math, and the
//            tokenizer (every token's piece, BOS/EOS);
//   weights: sampled bytes of the matrices (the first and last rows of the embedding,
//            output and every layer's projections, in the file's layout).
// A model loaded without matrices (a vocab-only GGUF on the coordinator) has an empty
// weights hash, and then only the shape hashes are compared (the coordinator then pins
// the first worker's weights hash).
#pragma once

#include <string>

#include "engine/model.h"

namespace mesa {

struct ModelFingerprint {
  std::string shape;    // 16 hex digits
  std::string weights;  // 16 hex digits, or "" without matrices
  std::string ToString() const { return weights.empty() ? shape : shape + "-" + weights; }
  static ModelFingerprint FromString(const std::string& s);
};

ModelFingerprint FingerprintModel(const Model& model);

// True when a worker with `worker` may serve a coordinator with `coordinator`.
bool FingerprintsMatch(const ModelFingerprint& coordinator, const ModelFingerprint& worker);

// "llama, 5 layers, 64 embd, vocab 512, f32" for error messages.
std::string DescribeModel(const Model& model);

}  // namespace mesa
