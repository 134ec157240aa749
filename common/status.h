// Status helpers over absl::Status: early-return macros used on every path that can
// fail for outside reasons (bad files, bad input). CHECK-style aborts are only for
// programmer errors.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define MESA_STATUS_CONCAT_INNER_(a, b) a##b
#define MESA_STATUS_CONCAT_(a, b) MESA_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define MESA_RETURN_IF_ERROR(expr)                 \
  do {                                             \
    ::absl::Status mesa_status_ = (expr);          \
    if (!mesa_status_.ok()) return mesa_status_;   \
  } while (0)

// `lhs = value of rexpr` (an absl::StatusOr<T>), or returns its error.
#define MESA_ASSIGN_OR_RETURN(lhs, rexpr) \
  MESA_ASSIGN_OR_RETURN_IMPL_(MESA_STATUS_CONCAT_(mesa_statusor_, __LINE__), lhs, rexpr)
#define MESA_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                                \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()
