// Conversions between absl::Status (the project's error type) and grpc::Status (the
// wire's), for every service adapter and client. Both use the canonical codes, so the
// code and message pass unchanged both ways; a code outside the canonical range
// becomes UNKNOWN. Error details/payloads are not carried.
#pragma once

#include "absl/strings/string_view.h"

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace mesa::worker {

absl::Status FromGrpcStatus(const grpc::Status& status);
grpc::Status ToGrpcStatus(const absl::Status& status);

// FromGrpcStatus with `context` in front of the message ("<context>: <message>"), for
// errors that must say which call on which peer failed. OK stays OK.
absl::Status FromGrpcStatus(const grpc::Status& status, absl::string_view context);

}  // namespace mesa::worker
