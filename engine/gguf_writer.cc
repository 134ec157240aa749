// GGUF v3 writer: builds a complete file in memory (metadata, tensor infos, aligned
// tensor data) for tests, random-weight models and tools.
#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/gguf.h"

namespace mesa {
namespace {

class ByteSink {
 public:
  explicit ByteSink(std::vector<uint8_t>* out) : out_(*out) {}
  template <typename T>
  void Put(T v) {
    const size_t at = out_.size();
    out_.resize(at + sizeof(T));
    std::memcpy(out_.data() + at, &v, sizeof(T));
  }
  void PutString(const std::string& s) {
    Put<uint64_t>(s.size());
    out_.insert(out_.end(), s.begin(), s.end());
  }
  void PadTo(uint64_t alignment) {
    while (out_.size() % alignment != 0) out_.push_back(0);
  }
  void PutValue(const GgufValue& v) {
    switch (v.type) {
      case GgufType::kUint8: Put<uint8_t>(static_cast<uint8_t>(AsU(v))); break;
      case GgufType::kInt8: Put<int8_t>(static_cast<int8_t>(AsI(v))); break;
      case GgufType::kUint16: Put<uint16_t>(static_cast<uint16_t>(AsU(v))); break;
      case GgufType::kInt16: Put<int16_t>(static_cast<int16_t>(AsI(v))); break;
      case GgufType::kUint32: Put<uint32_t>(static_cast<uint32_t>(AsU(v))); break;
      case GgufType::kInt32: Put<int32_t>(static_cast<int32_t>(AsI(v))); break;
      case GgufType::kUint64: Put<uint64_t>(AsU(v)); break;
      case GgufType::kInt64: Put<int64_t>(AsI(v)); break;
      case GgufType::kFloat32: Put<float>(static_cast<float>(AsD(v))); break;
      case GgufType::kFloat64: Put<double>(AsD(v)); break;
      case GgufType::kBool: {
        const bool* b = std::get_if<bool>(&v.value);
        Put<uint8_t>(b != nullptr && *b ? 1 : 0);
        break;
      }
      case GgufType::kString: {
        const std::string* s = std::get_if<std::string>(&v.value);
        PutString(s != nullptr ? *s : std::string());
        break;
      }
      case GgufType::kArray: {
        const GgufArray* a = std::get_if<GgufArray>(&v.value);
        static const GgufArray kEmpty;
        if (a == nullptr) a = &kEmpty;
        Put<uint32_t>(static_cast<uint32_t>(a->elem_type));
        Put<uint64_t>(a->items.size());
        for (const GgufValue& item : a->items) {
          // Items are written with the array's element type whatever they claim.
          GgufValue typed = item;
          typed.type = a->elem_type;
          PutValue(typed);
        }
        break;
      }
    }
  }

 private:
  // Values are stored in whichever alternative the caller chose; convert leniently.
  static uint64_t AsU(const GgufValue& v) {
    if (const auto* u = std::get_if<uint64_t>(&v.value)) return *u;
    if (const auto* i = std::get_if<int64_t>(&v.value)) return static_cast<uint64_t>(*i);
    if (const auto* d = std::get_if<double>(&v.value)) return static_cast<uint64_t>(*d);
    if (const auto* b = std::get_if<bool>(&v.value)) return *b ? 1 : 0;
    return 0;
  }
  static int64_t AsI(const GgufValue& v) { return static_cast<int64_t>(AsU(v)); }
  static double AsD(const GgufValue& v) {
    if (const auto* d = std::get_if<double>(&v.value)) return *d;
    if (const auto* i = std::get_if<int64_t>(&v.value)) return static_cast<double>(*i);
    if (const auto* u = std::get_if<uint64_t>(&v.value)) return static_cast<double>(*u);
    return 0.0;
  }

  std::vector<uint8_t>& out_;
};

}  // namespace

void GgufWriter::SetValue(const std::string& key, GgufValue value) {
  for (auto& kv : kv_) {
    if (kv.first == key) {
      kv.second = std::move(value);
      return;
    }
  }
  kv_.emplace_back(key, std::move(value));
}

void GgufWriter::SetString(const std::string& key, std::string v) {
  SetValue(key, GgufValue{GgufType::kString, std::move(v)});
}
void GgufWriter::SetUint32(const std::string& key, uint32_t v) {
  SetValue(key, GgufValue{GgufType::kUint32, uint64_t{v}});
}
void GgufWriter::SetInt32(const std::string& key, int32_t v) {
  SetValue(key, GgufValue{GgufType::kInt32, int64_t{v}});
}
void GgufWriter::SetFloat32(const std::string& key, float v) {
  SetValue(key, GgufValue{GgufType::kFloat32, double{v}});
}
void GgufWriter::SetBool(const std::string& key, bool v) {
  SetValue(key, GgufValue{GgufType::kBool, v});
}

void GgufWriter::SetStringArray(const std::string& key, const std::vector<std::string>& v) {
  GgufArray a;
  a.elem_type = GgufType::kString;
  a.items.reserve(v.size());
  for (const std::string& s : v) a.items.emplace_back(GgufType::kString, s);
  SetValue(key, GgufValue{GgufType::kArray, std::move(a)});
}

void GgufWriter::SetFloat32Array(const std::string& key, const std::vector<float>& v) {
  GgufArray a;
  a.elem_type = GgufType::kFloat32;
  a.items.reserve(v.size());
  for (float f : v) a.items.emplace_back(GgufType::kFloat32, double{f});
  SetValue(key, GgufValue{GgufType::kArray, std::move(a)});
}

void GgufWriter::SetInt32Array(const std::string& key, const std::vector<int32_t>& v) {
  GgufArray a;
  a.elem_type = GgufType::kInt32;
  a.items.reserve(v.size());
  for (int32_t i : v) a.items.emplace_back(GgufType::kInt32, int64_t{i});
  SetValue(key, GgufValue{GgufType::kArray, std::move(a)});
}

void GgufWriter::AddTensor(const std::string& name, DType type, std::vector<int64_t> shape,
                           std::vector<uint8_t> bytes) {
  tensors_.push_back(PendingTensor{name, type, std::move(shape), std::move(bytes)});
}

std::vector<uint8_t> GgufWriter::Serialize() const {
  const uint64_t alignment = alignment_ == 0 ? 32 : alignment_;
  std::vector<std::pair<std::string, GgufValue>> kv = kv_;
  if (alignment != 32) {
    bool present = false;
    for (const auto& p : kv) present |= p.first == "general.alignment";
    if (!present) {
      kv.emplace_back("general.alignment", GgufValue{GgufType::kUint32, uint64_t{alignment}});
    }
  }
  // The magic comes with the vector (inserting it into an empty one trips GCC 12's
  // -Wstringop-overflow false positive).
  std::vector<uint8_t> out = {'G', 'G', 'U', 'F'};
  ByteSink sink(&out);
  sink.Put<uint32_t>(3);
  sink.Put<uint64_t>(tensors_.size());
  sink.Put<uint64_t>(kv.size());
  for (const auto& [key, value] : kv) {
    sink.PutString(key);
    sink.Put<uint32_t>(static_cast<uint32_t>(value.type));
    sink.PutValue(value);
  }
  uint64_t offset = 0;
  for (const PendingTensor& t : tensors_) {
    sink.PutString(t.name);
    sink.Put<uint32_t>(static_cast<uint32_t>(t.shape.size()));
    for (int64_t d : t.shape) sink.Put<int64_t>(d);
    sink.Put<uint32_t>(static_cast<uint32_t>(t.type));
    sink.Put<uint64_t>(offset);
    offset += (t.bytes.size() + alignment - 1) / alignment * alignment;
  }
  sink.PadTo(alignment);
  for (const PendingTensor& t : tensors_) {
    out.insert(out.end(), t.bytes.begin(), t.bytes.end());
    sink.PadTo(alignment);
  }
  return out;
}

absl::Status GgufWriter::Write(const std::string& path) const {
  const std::vector<uint8_t> bytes = Serialize();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    return absl::InternalError(absl::StrCat("cannot open ", path, " for writing: ",
                                            std::strerror(errno)));
  }
  const size_t written = std::fwrite(bytes.data(), 1, bytes.size(), f);
  const bool close_ok = std::fclose(f) == 0;
  if (written != bytes.size() || !close_ok) {
    return absl::InternalError(absl::StrCat("failed writing ", bytes.size(), " bytes to ", path));
  }
  return absl::OkStatus();
}

}  // namespace mesa
