// Safetensors reader: validates the JSON header (length bounds, dtypes, shapes,
// offsets inside the data buffer, byte counts matching shapes, no overlaps) and hands
// out views into the memory-mapped file. Sharded models go through the index file.
#include "engine/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace mesa {
namespace {

// The format's own limit on the header size.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
constexpr size_t kMaxDims = 8;

struct DtypeSpec {
  const char* name;
  int bytes;
  bool supported;
  DType type;
};

constexpr DtypeSpec kDtypes[] = {
    {"F32", 4, true, DType::kF32},   {"F16", 2, true, DType::kF16},
    {"BF16", 2, true, DType::kBF16}, {"F64", 8, false, DType::kF32},
    {"I64", 8, false, DType::kF32},  {"U64", 8, false, DType::kF32},
    {"I32", 4, false, DType::kF32},  {"U32", 4, false, DType::kF32},
    {"I16", 2, false, DType::kF32},  {"U16", 2, false, DType::kF32},
    {"I8", 1, false, DType::kF32},   {"U8", 1, false, DType::kF32},
    {"BOOL", 1, false, DType::kF32}, {"F8_E4M3", 1, false, DType::kF32},
    {"F8_E5M2", 1, false, DType::kF32},
};

const DtypeSpec* FindDtype(const std::string& name) {
  for (const DtypeSpec& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

absl::Status Invalid(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("safetensors file ", path, ": ", what));
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

int64_t SafetensorsTensor::elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  MESA_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  return Parse(std::move(file));
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Parse(
    std::unique_ptr<MappedFile> file) {
  if (file == nullptr) return absl::InvalidArgumentError("safetensors: null file");
  std::unique_ptr<SafetensorsFile> st(new SafetensorsFile());
  st->file_ = std::move(file);
  const std::string& path = st->file_->path();
  const uint64_t size = st->file_->size();
  if (size < 8) return Invalid(path, absl::StrCat("file of ", size, " bytes has no header length"));
  uint64_t header_len;
  std::memcpy(&header_len, st->file_->data(), 8);
  if (header_len > size - 8) {
    return Invalid(path, absl::StrCat("header length ", header_len, " exceeds the file size ", size));
  }
  if (header_len > kMaxHeaderBytes) {
    return Invalid(path, absl::StrCat("header length ", header_len, " exceeds the limit of ",
                                      kMaxHeaderBytes));
  }
  const char* header = reinterpret_cast<const char*>(st->file_->data() + 8);
  nlohmann::json j = nlohmann::json::parse(header, header + header_len, nullptr,
                                           /*allow_exceptions=*/false);
  if (j.is_discarded()) return Invalid(path, "header is not valid JSON");
  if (!j.is_object()) return Invalid(path, "header is not a JSON object");

  const uint8_t* data = st->file_->data() + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  try {
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string& name = it.key();
      const nlohmann::json& v = it.value();
      if (name == "__metadata__") {
        if (!v.is_object()) return Invalid(path, "__metadata__ is not an object");
        for (auto m = v.begin(); m != v.end(); ++m) {
          if (!m.value().is_string()) {
            return Invalid(path, absl::StrCat("__metadata__ value '", m.key(), "' is not a string"));
          }
          st->metadata_[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      const std::string where = absl::StrCat("tensor '", name, "'");
      if (!v.is_object()) return Invalid(path, absl::StrCat(where, " is not an object"));
      auto dt = v.find("dtype");
      auto sh = v.find("shape");
      auto off = v.find("data_offsets");
      if (dt == v.end() || !dt->is_string()) {
        return Invalid(path, absl::StrCat(where, " has no string dtype"));
      }
      if (sh == v.end() || !sh->is_array()) {
        return Invalid(path, absl::StrCat(where, " has no shape array"));
      }
      if (off == v.end() || !off->is_array() || off->size() != 2) {
        return Invalid(path, absl::StrCat(where, " has no data_offsets pair"));
      }
      SafetensorsTensor t;
      t.name = name;
      t.dtype = dt->get<std::string>();
      const DtypeSpec* spec = FindDtype(t.dtype);
      if (spec == nullptr) return Invalid(path, absl::StrCat(where, " has unknown dtype '", t.dtype, "'"));
      t.supported = spec->supported;
      t.type = spec->type;
      if (sh->size() > kMaxDims) {
        return Invalid(path, absl::StrCat(where, " has ", sh->size(), " dimensions (max ", kMaxDims, ")"));
      }
      int64_t elements = 1;
      for (const nlohmann::json& d : *sh) {
        if (!d.is_number_unsigned()) {
          return Invalid(path, absl::StrCat(where, " has a shape entry that is not a non-negative integer"));
        }
        const uint64_t du = d.get<uint64_t>();
        if (du > static_cast<uint64_t>(INT64_MAX)) {
          return Invalid(path, absl::StrCat(where, " has a dimension too large"));
        }
        const int64_t di = static_cast<int64_t>(du);
        if (__builtin_mul_overflow(elements, di, &elements)) {
          return Invalid(path, absl::StrCat(where, " has too many elements (overflow)"));
        }
        t.shape.push_back(di);
      }
      int64_t want_bytes;
      if (__builtin_mul_overflow(elements, int64_t{spec->bytes}, &want_bytes)) {
        return Invalid(path, absl::StrCat(where, " byte size overflows"));
      }
      const nlohmann::json& b = (*off)[0];
      const nlohmann::json& e = (*off)[1];
      if (!b.is_number_unsigned() || !e.is_number_unsigned()) {
        return Invalid(path, absl::StrCat(where, " data_offsets are not non-negative integers"));
      }
      const uint64_t begin = b.get<uint64_t>(), end = e.get<uint64_t>();
      if (begin > end || end > data_size) {
        return Invalid(path, absl::StrCat(where, " data_offsets [", begin, ", ", end,
                                          ") lie outside the data buffer of ", data_size,
                                          " bytes (file truncated?)"));
      }
      if (end - begin != static_cast<uint64_t>(want_bytes)) {
        return Invalid(path, absl::StrCat(where, " holds ", end - begin, " bytes but its shape and dtype ",
                                          t.dtype, " need ", want_bytes));
      }
      t.data = data + begin;
      t.nbytes = end - begin;
      if (t.nbytes > 0) ranges.emplace_back(begin, end);
      st->index_[name] = st->tensors_.size();
      st->tensors_.push_back(std::move(t));
    }
  } catch (const std::exception& ex) {
    return Invalid(path, absl::StrCat("malformed header: ", ex.what()));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) {
      return Invalid(path, absl::StrCat("tensor data ranges overlap at offset ", ranges[i].first));
    }
  }
  return st;
}

const SafetensorsTensor* SafetensorsFile::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<std::unique_ptr<SafetensorsModel>> SafetensorsModel::OpenDir(const std::string& dir) {
  std::unique_ptr<SafetensorsModel> m(new SafetensorsModel());
  std::vector<std::string> shards;
  const std::string index_path = dir + "/model.safetensors.index.json";
  auto index_text = ReadSmallFile(index_path);
  if (index_text.ok()) {
    nlohmann::json j = nlohmann::json::parse(*index_text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": not a JSON object"));
    }
    auto wm = j.find("weight_map");
    if (wm == j.end() || !wm->is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": no weight_map object"));
    }
    std::set<std::string> seen;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it.value().is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path, ": weight_map entry '", it.key(), "' is not a string"));
      }
      const std::string shard = it.value().get<std::string>();
      if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path, ": shard name '", shard, "' is not a plain file name"));
      }
      if (seen.insert(shard).second) shards.push_back(shard);
    }
  } else {
    shards.push_back("model.safetensors");
  }
  for (const std::string& shard : shards) {
    MESA_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::Open(dir + "/" + shard));
    for (const SafetensorsTensor& t : f->tensors()) {
      if (!m->index_.emplace(t.name, &t).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("safetensors model ", dir, ": tensor '", t.name, "' appears in two shards"));
      }
    }
    m->files_.push_back(std::move(f));
  }
  return m;
}

const SafetensorsTensor* SafetensorsModel::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

std::vector<std::string> SafetensorsModel::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, t] : index_) out.push_back(name);
  return out;
}

}  // namespace mesa
