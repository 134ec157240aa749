// GGUF reader: parses the header (metadata and tensor infos) of a memory-mapped
// GGUF v2/v3 file with bounds checks on every read, so that hostile files produce
// InvalidArgument errors instead of crashes, hangs or unbounded allocations.
#include "engine/gguf.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace mesa {
namespace {

constexpr uint32_t kMaxDims = 4;
// Nesting of arrays inside arrays: real files use at most 1; a bound keeps the
// recursive parser's stack small.
constexpr int kMaxArrayDepth = 8;
// Total metadata values (array items included) held in memory. The largest real
// vocabularies (~256k tokens, with scores, types and merges) stay far below.
constexpr uint64_t kMaxMetadataValues = uint64_t{1} << 25;
constexpr uint64_t kMaxStringBytes = uint64_t{1} << 30;

// Smallest encoded size of one value of `t` (used to bound counts by remaining bytes).
uint64_t MinEncodedSize(GgufType t) {
  switch (t) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kBool:
      return 1;
    case GgufType::kUint16:
    case GgufType::kInt16:
      return 2;
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kFloat32:
      return 4;
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kFloat64:
    case GgufType::kString:
      return 8;
    case GgufType::kArray:
      return 12;
  }
  return 1;
}

bool ValidType(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::kFloat64); }

// Bounds-checked little-endian reader over the mapped bytes.
class Reader {
 public:
  Reader(const uint8_t* data, uint64_t size) : data_(data), size_(size) {}
  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  template <typename T>
  bool Read(T* out) {
    if (remaining() < sizeof(T)) return false;
    std::memcpy(out, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool ReadString(std::string* out) {
    uint64_t len = 0;
    if (!Read(&len)) return false;
    if (len > remaining() || len > kMaxStringBytes) return false;
    out->assign(reinterpret_cast<const char*>(data_ + pos_), len);
    pos_ += len;
    return true;
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

class HeaderParser {
 public:
  HeaderParser(const std::string& path, Reader* r) : path_(path), r_(*r) {}

  absl::Status Error(const std::string& what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("GGUF file ", path_, ": ", what, " (at byte ", r_.pos(), ")"));
  }

  // Parses one value of type `t` into `out`; `where` names the key for errors.
  absl::Status ReadValue(GgufType t, int depth, const std::string& where, GgufValue* out) {
    out->type = t;
    if (++values_ > kMaxMetadataValues) {
      return Error(absl::StrCat("too many metadata values (limit ", kMaxMetadataValues,
                                ") in ", where));
    }
    auto truncated = [&] { return Error(absl::StrCat("truncated in ", where)); };
    switch (t) {
      case GgufType::kUint8: {
        uint8_t v;
        if (!r_.Read(&v)) return truncated();
        out->value = uint64_t{v};
        return absl::OkStatus();
      }
      case GgufType::kInt8: {
        int8_t v;
        if (!r_.Read(&v)) return truncated();
        out->value = int64_t{v};
        return absl::OkStatus();
      }
      case GgufType::kUint16: {
        uint16_t v;
        if (!r_.Read(&v)) return truncated();
        out->value = uint64_t{v};
        return absl::OkStatus();
      }
      case GgufType::kInt16: {
        int16_t v;
        if (!r_.Read(&v)) return truncated();
        out->value = int64_t{v};
        return absl::OkStatus();
      }
      case GgufType::kUint32: {
        uint32_t v;
        if (!r_.Read(&v)) return truncated();
        out->value = uint64_t{v};
        return absl::OkStatus();
      }
      case GgufType::kInt32: {
        int32_t v;
        if (!r_.Read(&v)) return truncated();
        out->value = int64_t{v};
        return absl::OkStatus();
      }
      case GgufType::kUint64: {
        uint64_t v;
        if (!r_.Read(&v)) return truncated();
        out->value = v;
        return absl::OkStatus();
      }
      case GgufType::kInt64: {
        int64_t v;
        if (!r_.Read(&v)) return truncated();
        out->value = v;
        return absl::OkStatus();
      }
      case GgufType::kFloat32: {
        float v;
        if (!r_.Read(&v)) return truncated();
        out->value = double{v};
        return absl::OkStatus();
      }
      case GgufType::kFloat64: {
        double v;
        if (!r_.Read(&v)) return truncated();
        out->value = v;
        return absl::OkStatus();
      }
      case GgufType::kBool: {
        uint8_t v;
        if (!r_.Read(&v)) return truncated();
        if (v > 1) return Error(absl::StrCat("bool value ", int{v}, " is not 0 or 1 in ", where));
        out->value = v != 0;
        return absl::OkStatus();
      }
      case GgufType::kString: {
        std::string s;
        if (!r_.ReadString(&s)) return truncated();
        out->value = std::move(s);
        return absl::OkStatus();
      }
      case GgufType::kArray: {
        if (depth >= kMaxArrayDepth) {
          return Error(absl::StrCat("arrays nested deeper than ", kMaxArrayDepth, " in ", where));
        }
        uint32_t elem_raw;
        uint64_t count;
        if (!r_.Read(&elem_raw) || !r_.Read(&count)) return truncated();
        if (!ValidType(elem_raw)) {
          return Error(absl::StrCat("unknown array element type ", elem_raw, " in ", where));
        }
        GgufArray arr;
        arr.elem_type = static_cast<GgufType>(elem_raw);
        const uint64_t min_size = MinEncodedSize(arr.elem_type);
        if (count > r_.remaining() / min_size) {
          return Error(absl::StrCat("array count ", count, " exceeds the remaining ",
                                    r_.remaining(), " bytes in ", where));
        }
        if (count > kMaxMetadataValues - std::min(values_, kMaxMetadataValues)) {
          return Error(absl::StrCat("array count ", count, " too large in ", where));
        }
        arr.items.resize(count);
        for (uint64_t i = 0; i < count; ++i) {
          MESA_RETURN_IF_ERROR(ReadValue(arr.elem_type, depth + 1, where, &arr.items[i]));
        }
        out->value = std::move(arr);
        return absl::OkStatus();
      }
    }
    return Error(absl::StrCat("unknown value type in ", where));
  }

 private:
  const std::string& path_;
  Reader& r_;
  uint64_t values_ = 0;
};

// a * b, or false on overflow of int64.
bool MulOk(int64_t a, int64_t b, int64_t* out) { return !__builtin_mul_overflow(a, b, out); }

}  // namespace

const char* GgufTypeName(GgufType t) {
  switch (t) {
    case GgufType::kUint8: return "uint8";
    case GgufType::kInt8: return "int8";
    case GgufType::kUint16: return "uint16";
    case GgufType::kInt16: return "int16";
    case GgufType::kUint32: return "uint32";
    case GgufType::kInt32: return "int32";
    case GgufType::kFloat32: return "float32";
    case GgufType::kBool: return "bool";
    case GgufType::kString: return "string";
    case GgufType::kArray: return "array";
    case GgufType::kUint64: return "uint64";
    case GgufType::kInt64: return "int64";
    case GgufType::kFloat64: return "float64";
  }
  return "unknown";
}

int64_t GgufTensorInfo::elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  MESA_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  return Parse(std::move(file));
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Parse(std::unique_ptr<MappedFile> file) {
  if (file == nullptr) return absl::InvalidArgumentError("GGUF: null file");
  std::unique_ptr<GgufFile> g(new GgufFile());
  g->file_ = std::move(file);
  const std::string& path = g->file_->path();
  Reader r(g->file_->data(), g->file_->size());
  HeaderParser p(path, &r);

  char magic[4];
  if (!r.Read(&magic)) return p.Error("file too short for the GGUF magic");
  if (std::memcmp(magic, "GGUF", 4) != 0) return p.Error("bad magic (not a GGUF file)");
  if (!r.Read(&g->version_)) return p.Error("truncated in version");
  if (g->version_ != 2 && g->version_ != 3) {
    return p.Error(absl::StrCat("unsupported GGUF version ", g->version_,
                                " (supported: 2 and 3)"));
  }
  uint64_t n_tensors = 0, n_kv = 0;
  if (!r.Read(&n_tensors)) return p.Error("truncated in tensor count");
  if (!r.Read(&n_kv)) return p.Error("truncated in metadata count");
  // Each key needs at least 8 (length) + 4 (type) + 1 bytes; each tensor info at
  // least 8 + 4 + 8 + 4 + 8.
  if (n_kv > r.remaining() / 13) {
    return p.Error(absl::StrCat("metadata count ", n_kv, " exceeds what the file can hold"));
  }
  if (n_tensors > r.remaining() / 32) {
    return p.Error(absl::StrCat("tensor count ", n_tensors, " exceeds what the file can hold"));
  }

  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key;
    const std::string where = absl::StrCat("metadata key ", i);
    if (!r.ReadString(&key)) return p.Error(absl::StrCat("truncated in ", where));
    uint32_t type_raw;
    if (!r.Read(&type_raw)) return p.Error(absl::StrCat("truncated in ", where, " '", key, "'"));
    if (!ValidType(type_raw)) {
      return p.Error(absl::StrCat("unknown value type ", type_raw, " for ", where, " '", key, "'"));
    }
    GgufValue value;
    MESA_RETURN_IF_ERROR(p.ReadValue(static_cast<GgufType>(type_raw), 0,
                                     absl::StrCat(where, " '", key, "'"), &value));
    if (!g->metadata_.emplace(key, std::move(value)).second) {
      return p.Error(absl::StrCat("duplicate metadata key '", key, "'"));
    }
  }

  if (const GgufValue* a = g->Find("general.alignment")) {
    const uint64_t* v = std::get_if<uint64_t>(&a->value);
    if (a->type != GgufType::kUint32 || v == nullptr) {
      return p.Error(absl::StrCat("general.alignment must be uint32, not ", GgufTypeName(a->type)));
    }
    if (*v == 0 || (*v & (*v - 1)) != 0) {
      return p.Error(absl::StrCat("general.alignment ", *v, " is not a power of two"));
    }
    g->alignment_ = *v;
  }

  g->tensors_.resize(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo& t = g->tensors_[i];
    const std::string where = absl::StrCat("tensor info ", i);
    if (!r.ReadString(&t.name)) return p.Error(absl::StrCat("truncated in ", where));
    const std::string named = absl::StrCat(where, " '", t.name, "'");
    uint32_t n_dims;
    if (!r.Read(&n_dims)) return p.Error(absl::StrCat("truncated in ", named));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return p.Error(absl::StrCat(named, " has ", n_dims, " dimensions (expected 1..", kMaxDims, ")"));
    }
    t.shape.resize(n_dims);
    int64_t elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      if (!r.Read(&t.shape[d])) return p.Error(absl::StrCat("truncated in ", named));
      if (t.shape[d] <= 0) {
        return p.Error(absl::StrCat(named, " has non-positive dimension ", d, " = ", t.shape[d]));
      }
      if (!MulOk(elements, t.shape[d], &elements)) {
        return p.Error(absl::StrCat(named, " has too many elements (overflow)"));
      }
    }
    uint32_t type_raw;
    if (!r.Read(&type_raw)) return p.Error(absl::StrCat("truncated in ", named));
    const DTypeInfo* info = FindDTypeInfo(type_raw);
    if (info == nullptr) {
      return p.Error(absl::StrCat(named, " has unknown tensor type id ", type_raw));
    }
    t.type = info->type;
    if (!r.Read(&t.offset)) return p.Error(absl::StrCat("truncated in ", named));
    if (t.shape[0] % info->block_elems != 0) {
      return p.Error(absl::StrCat(named, ": row of ", t.shape[0], " elements is not a multiple of ",
                                  std::string(DTypeName(t.type)), "'s block size ", info->block_elems));
    }
    int64_t nbytes;
    if (!MulOk(elements / info->block_elems, info->block_bytes, &nbytes)) {
      return p.Error(absl::StrCat(named, " byte size overflows"));
    }
    t.nbytes = static_cast<uint64_t>(nbytes);
    if (t.offset % g->alignment_ != 0) {
      return p.Error(absl::StrCat(named, " offset ", t.offset, " is not a multiple of the alignment ",
                                  g->alignment_));
    }
    if (!g->tensor_index_.emplace(t.name, i).second) {
      return p.Error(absl::StrCat("duplicate tensor name '", t.name, "'"));
    }
  }

  // The data section starts at the next multiple of the alignment.
  const uint64_t header_end = r.pos();
  const uint64_t size = g->file_->size();
  uint64_t data_start = (header_end + g->alignment_ - 1) / g->alignment_ * g->alignment_;
  if (n_tensors > 0 && data_start > size) {
    return p.Error(absl::StrCat("truncated before the tensor data (needs ", data_start,
                                " bytes, file has ", size, ")"));
  }
  const uint64_t data_size = data_start <= size ? size - data_start : 0;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  ranges.reserve(g->tensors_.size());
  for (GgufTensorInfo& t : g->tensors_) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset) {
      return p.Error(absl::StrCat("tensor '", t.name, "' data [", t.offset, ", +", t.nbytes,
                                  ") lies outside the data section of ", data_size,
                                  " bytes (file truncated?)"));
    }
    t.data = g->file_->data() + data_start + t.offset;
    ranges.emplace_back(t.offset, t.offset + t.nbytes);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) {
      return p.Error(absl::StrCat("tensor data ranges overlap at data offset ", ranges[i].first));
    }
  }
  return g;
}

const GgufTensorInfo* GgufFile::FindTensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufValue* GgufFile::Find(const std::string& key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

namespace {

absl::Status TypeError(const std::string& path, const std::string& key, const char* want,
                       const GgufValue& v) {
  return absl::InvalidArgumentError(absl::StrCat("GGUF file ", path, ": key '", key,
                                                 "' has type ", GgufTypeName(v.type),
                                                 ", expected ", want));
}

bool ToInt(const GgufValue& v, int64_t* out) {
  if (const auto* u = std::get_if<uint64_t>(&v.value)) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    *out = static_cast<int64_t>(*u);
    return true;
  }
  if (const auto* i = std::get_if<int64_t>(&v.value)) {
    *out = *i;
    return true;
  }
  return false;
}

bool ToFloat(const GgufValue& v, double* out) {
  if (const auto* d = std::get_if<double>(&v.value)) {
    *out = *d;
    return true;
  }
  int64_t i;
  if (ToInt(v, &i)) {
    *out = static_cast<double>(i);
    return true;
  }
  return false;
}

}  // namespace

absl::StatusOr<std::string> GgufFile::GetString(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return absl::NotFoundError(absl::StrCat("GGUF key '", key, "' not found"));
  const auto* s = std::get_if<std::string>(&v->value);
  if (s == nullptr) return TypeError(path(), key, "string", *v);
  return *s;
}

absl::StatusOr<int64_t> GgufFile::GetInt(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return absl::NotFoundError(absl::StrCat("GGUF key '", key, "' not found"));
  int64_t out;
  if (!ToInt(*v, &out)) return TypeError(path(), key, "an integer fitting int64", *v);
  return out;
}

absl::StatusOr<double> GgufFile::GetFloat(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return absl::NotFoundError(absl::StrCat("GGUF key '", key, "' not found"));
  double out;
  if (!ToFloat(*v, &out)) return TypeError(path(), key, "a number", *v);
  return out;
}

absl::StatusOr<bool> GgufFile::GetBool(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return absl::NotFoundError(absl::StrCat("GGUF key '", key, "' not found"));
  const auto* b = std::get_if<bool>(&v->value);
  if (b == nullptr) return TypeError(path(), key, "bool", *v);
  return *b;
}

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return absl::NotFoundError(absl::StrCat("GGUF key '", key, "' not found"));
  const auto* a = std::get_if<GgufArray>(&v->value);
  if (a == nullptr || a->elem_type != GgufType::kString) {
    return TypeError(path(), key, "array of string", *v);
  }
  std::vector<std::string> out;
  out.reserve(a->items.size());
  for (const GgufValue& item : a->items) out.push_back(std::get<std::string>(item.value));
  return out;
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return absl::NotFoundError(absl::StrCat("GGUF key '", key, "' not found"));
  const auto* a = std::get_if<GgufArray>(&v->value);
  if (a == nullptr) return TypeError(path(), key, "array of integers", *v);
  std::vector<int64_t> out(a->items.size());
  for (size_t i = 0; i < a->items.size(); ++i) {
    if (!ToInt(a->items[i], &out[i])) return TypeError(path(), key, "array of integers", *v);
  }
  return out;
}

absl::StatusOr<std::vector<float>> GgufFile::GetFloatArray(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return absl::NotFoundError(absl::StrCat("GGUF key '", key, "' not found"));
  const auto* a = std::get_if<GgufArray>(&v->value);
  if (a == nullptr) return TypeError(path(), key, "array of numbers", *v);
  std::vector<float> out(a->items.size());
  for (size_t i = 0; i < a->items.size(); ++i) {
    double d;
    if (!ToFloat(a->items[i], &d)) return TypeError(path(), key, "array of numbers", *v);
    out[i] = static_cast<float>(d);
  }
  return out;
}

absl::StatusOr<int64_t> GgufFile::GetIntOr(const std::string& key, int64_t def) const {
  if (Find(key) == nullptr) return def;
  return GetInt(key);
}

absl::StatusOr<double> GgufFile::GetFloatOr(const std::string& key, double def) const {
  if (Find(key) == nullptr) return def;
  return GetFloat(key);
}

absl::StatusOr<bool> GgufFile::GetBoolOr(const std::string& key, bool def) const {
  if (Find(key) == nullptr) return def;
  return GetBool(key);
}

absl::StatusOr<std::string> GgufFile::GetStringOr(const std::string& key, std::string def) const {
  if (Find(key) == nullptr) return def;
  return GetString(key);
}

}  // namespace mesa
