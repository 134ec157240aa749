// The K/V gather protocol over socket links on loopback (threads, and one real process
// killed mid-transfer): correct bytes in plan order from several holders, and every way
// it must fail closed, naming the chunk and peer.
#include "worker/kv_gather.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>

#include "worker/kv_testing.h"
#include "worker/peer_testing.h"

namespace mesa::worker {
namespace {

using ::testing::HasSubstr;

absl::Time Soon(double seconds) { return absl::Now() + absl::Seconds(seconds); }

// A chunk of the plan and the data its holder has.
struct TestChunk {
  GatherEntry entry;
  ChunkKv kv;
};

TestChunk Make(int chunk, int holder, int64_t layers, int64_t heads, int64_t tokens, int64_t dim, int64_t begin) {
  TestChunk c;
  c.entry.key = KvKey{"job-7", 3, chunk, 1};
  c.entry.holder = holder;
  c.entry.n_layer = layers;
  c.entry.n_head_kv = heads;
  c.entry.head_dim = dim;
  c.entry.range_begin = begin;
  c.entry.range_end = begin + tokens;
  c.kv = RandomChunkKv(layers, heads, tokens, dim, begin, 1000 + chunk);
  return c;
}

// Five chunks from three holders, holders interleaved in the plan's order, shapes that
// differ (a chunk smaller than a socket buffer, one of several MiB).
std::vector<TestChunk> FiveChunks() {
  return {Make(1, 2, 2, 2, 64, 16, 32), Make(2, 1, 2, 2, 100, 16, 96), Make(3, 2, 3, 4, 512, 64, 196),
          Make(4, 3, 2, 2, 7, 16, 708), Make(5, 1, 2, 2, 33, 16, 715)};
}

GatherPlan PlanOf(const std::vector<TestChunk>& chunks, int receiver = 0) {
  GatherPlan plan;
  plan.receiver = receiver;
  for (const TestChunk& c : chunks) plan.entries.push_back(c.entry);
  return plan;
}

std::vector<HeldChunk> HeldBy(const std::vector<TestChunk>& chunks, int holder) {
  std::vector<HeldChunk> out;
  for (const TestChunk& c : chunks) {
    if (c.entry.holder == holder) out.push_back(HeldFromChunkKv(c.entry.key, c.kv));
  }
  return out;
}

// After a refusal before transfer, the link still works: a small exchange between the
// receiver and each holder goes through (so no holder posted its sends).
void ExpectLinkStillUsable(std::vector<std::unique_ptr<PeerLink>>& links) {
  const int n = static_cast<int>(links.size());
  std::vector<absl::Status> s(n);
  std::vector<uint64_t> got(n, 0);
  OnRanks(n, [&](int r) {
    if (r == 0) {
      std::vector<PeerOp> ops;
      for (int p = 1; p < n; ++p) ops.push_back(PeerOp::Recv(p, &got[p], 8));
      s[0] = links[0]->Run(ops, Soon(10));
    } else {
      const uint64_t mine = 0xabc0 + r;
      s[r] = links[r]->Run({PeerOp::Send(0, &mine, 8)}, Soon(10));
    }
  });
  for (int r = 0; r < n; ++r) EXPECT_TRUE(s[r].ok()) << r << ": " << s[r];
  for (int p = 1; p < n; ++p) EXPECT_EQ(got[p], 0xabc0u + p);
}

TEST(KvGather, SeveralChunksFromSeveralPeersArriveInPlanOrder) {
  auto links = MakeSocketGroup(4);
  ASSERT_TRUE(links.ok()) << links.status();
  const std::vector<TestChunk> chunks = FiveChunks();
  const GatherPlan plan = PlanOf(chunks);
  std::vector<absl::Status> sent(4);
  absl::StatusOr<std::vector<ChunkKv>> got;
  OnRanks(4, [&](int r) {
    LinkControl control(*(*links)[r]);
    if (r == 0) {
      got = GatherToHost(*(*links)[0], control, plan, Soon(30));
    } else {
      const std::vector<HeldChunk> held = HeldBy(chunks, r);
      sent[r] = GatherSend(*(*links)[r], control, plan, held, Soon(30));
    }
  });
  ASSERT_TRUE(got.ok()) << got.status();
  for (int r = 1; r < 4; ++r) EXPECT_TRUE(sent[r].ok()) << sent[r];
  ASSERT_EQ(got->size(), chunks.size());
  for (size_t i = 0; i < chunks.size(); ++i) EXPECT_TRUE(SameBits((*got)[i], chunks[i].kv)) << "chunk " << i;

  // The same group again, into backend memory (the host backend here; a GPU's over NCCL).
  absl::StatusOr<std::vector<BackendChunk>> dev;
  OnRanks(4, [&](int r) {
    LinkControl control(*(*links)[r]);
    if (r == 0) {
      dev = GatherToBackend(*(*links)[0], control, plan, HostBackend(), Soon(30));
    } else {
      sent[r] = GatherSend(*(*links)[r], control, plan, HeldBy(chunks, r), Soon(30));
    }
  });
  ASSERT_TRUE(dev.ok()) << dev.status();
  for (size_t i = 0; i < chunks.size(); ++i) {
    const ChunkKv& want = chunks[i].kv;
    ASSERT_EQ((*dev)[i].k.bytes(), want.k.size() * 4);
    EXPECT_EQ(std::memcmp((*dev)[i].k.data(), want.k.data(), want.k.size() * 4), 0) << i;
    EXPECT_EQ(std::memcmp((*dev)[i].v.data(), want.v.data(), want.v.size() * 4), 0) << i;
    EXPECT_EQ((*dev)[i].manifest.key, chunks[i].entry.key);
  }
}

TEST(KvGather, PeerThatNeverSendsIsADeadlineAndTheLinkDies) {
  auto links = MakeSocketGroup(4);
  ASSERT_TRUE(links.ok()) << links.status();
  const std::vector<TestChunk> chunks = FiveChunks();
  const GatherPlan plan = PlanOf(chunks);
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + absl::Milliseconds(1500);
  absl::StatusOr<std::vector<ChunkKv>> got;
  OnRanks(4, [&](int r) {
    LinkControl control(*(*links)[r]);
    if (r == 0) {
      got = GatherToHost(*(*links)[0], control, plan, deadline);
    } else if (r == 3) {
      // Rank 3 offers its chunk and hears "go", then never posts its send.
      std::vector<ChunkManifest> m;
      for (const HeldChunk& h : HeldBy(chunks, 3)) m.push_back(h.manifest);
      ASSERT_TRUE(control.Send(0, EncodeManifests(absl::OkStatus(), m), deadline).ok());
      ASSERT_TRUE(control.Receive(0, deadline).ok());
    } else {
      EXPECT_TRUE(GatherSend(*(*links)[r], control, plan, HeldBy(chunks, r), deadline).ok());
    }
  });
  const absl::Duration took = absl::Now() - start;
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded) << got.status();
  EXPECT_THAT(got.status().message(), HasSubstr("chunk job-7/3/4/1 from peer 3"));
  EXPECT_LT(took, absl::Milliseconds(1500) + absl::Seconds(1));
  EXPECT_GE(took, absl::Milliseconds(1400));
  // Dead afterwards: at once, saying why.
  EXPECT_EQ((*links)[0]->status().code(), absl::StatusCode::kDeadlineExceeded);
  LinkControl control(*(*links)[0]);
  const absl::Time t = absl::Now();
  absl::StatusOr<std::vector<ChunkKv>> again = GatherToHost(*(*links)[0], control, plan, Soon(30));
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition) << again.status();
  EXPECT_LT(absl::Now() - t, absl::Seconds(1));
}

TEST(KvGather, HolderThatNeverAnswersFailsTheGatherByTheDeadline) {
  auto links = MakeSocketGroup(4);
  ASSERT_TRUE(links.ok()) << links.status();
  const std::vector<TestChunk> chunks = FiveChunks();
  const GatherPlan plan = PlanOf(chunks);
  const absl::Time deadline = Soon(1);
  absl::StatusOr<std::vector<ChunkKv>> got;
  std::vector<absl::Status> sent(4);
  OnRanks(4, [&](int r) {
    LinkControl control(*(*links)[r]);
    if (r == 0) got = GatherToHost(*(*links)[0], control, plan, deadline);
    if (r == 1 || r == 3) sent[r] = GatherSend(*(*links)[r], control, plan, HeldBy(chunks, r), deadline + absl::Seconds(20));
    // Rank 2 (the plan's first holder) says nothing.
  });
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded) << got.status();
  EXPECT_THAT(got.status().message(), HasSubstr("job-7/3/1/1, job-7/3/3/1 from peer 2: waiting for the manifest"));
  // The other holders do not send into a gather that failed: the dead link tells them at
  // once (well before their own, later deadline).
  for (int r : {1, 3}) EXPECT_FALSE(sent[r].ok());
}

TEST(KvGather, HolderKilledMidTransferIsUnavailableNamingTheChunk) {
  // Rank 0 (this process) receives one large chunk from rank 1, a child process that is
  // killed (SIGKILL) once rank 0 has received a few MiB of it.
  const TestChunk big = Make(9, 1, 4, 4, 4096, 64, 100);  // 16 MiB of K and of V
  const GatherPlan plan = PlanOf({big});
  std::atomic<pid_t> child{-1};
  std::atomic<bool> killed{false};
  SocketPeerOptions options;
  options.on_received = [&](int peer, int64_t received) {
    if (peer == 1 && received > (int64_t{4} << 20) && !killed.exchange(true)) {
      kill(child.load(), SIGKILL);
      int status = 0;
      waitpid(child.load(), &status, 0);
    }
  };
  SocketPeerTransport transport(options);
  absl::StatusOr<PeerGroupId> id = transport.NewGroupId();
  ASSERT_TRUE(id.ok());
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // The holder: nothing of gtest here, only an exit code.
    SocketPeerTransport mine;
    absl::StatusOr<std::unique_ptr<PeerLink>> link = mine.Join(*id, 1, 2, Soon(20));
    if (!link.ok()) _exit(3);
    LinkControl control(**link);
    const std::vector<HeldChunk> held = {HeldFromChunkKv(big.entry.key, big.kv)};
    _exit(GatherSend(**link, control, plan, held, Soon(60)).ok() ? 0 : 1);
  }
  child = pid;
  absl::StatusOr<std::unique_ptr<PeerLink>> link = transport.Join(*id, 0, 2, Soon(20));
  ASSERT_TRUE(link.ok()) << link.status();
  LinkControl control(**link);
  const absl::Time start = absl::Now();
  absl::StatusOr<std::vector<ChunkKv>> got = GatherToHost(**link, control, plan, Soon(30));
  if (!killed.exchange(true)) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    FAIL() << "the holder was never killed: " << got.status();
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable) << got.status();
  EXPECT_THAT(got.status().message(), HasSubstr("chunk job-7/3/9/1 from peer 1"));
  EXPECT_THAT(got.status().message(), HasSubstr("closed the connection"));
  EXPECT_FALSE((*link)->status().ok());
}

TEST(KvGather, CorruptBytesAreDataLossNamingTheChunk) {
  auto links = MakeSocketGroup(4);
  ASSERT_TRUE(links.ok()) << links.status();
  std::vector<TestChunk> chunks = FiveChunks();
  const GatherPlan plan = PlanOf(chunks);
  // Rank 1 announces chunk 5's true CRC but one bit of its V flipped on the way.
  ChunkKv corrupt = chunks[4].kv;
  reinterpret_cast<uint8_t*>(corrupt.v.data())[1234] ^= 0x10;
  absl::StatusOr<std::vector<ChunkKv>> got;
  OnRanks(4, [&](int r) {
    LinkControl control(*(*links)[r]);
    if (r == 0) {
      got = GatherToHost(*(*links)[0], control, plan, Soon(30));
      return;
    }
    std::vector<HeldChunk> held = HeldBy(chunks, r);
    if (r == 1) held[1].v = corrupt.v.data();
    EXPECT_TRUE(GatherSend(*(*links)[r], control, plan, held, Soon(30)).ok());
  });
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
  EXPECT_THAT(got.status().message(), HasSubstr("chunk job-7/3/5/1 from peer 1: CRC32C mismatch"));
}

// A holder whose manifest does not match the plan: refused before any byte moves.
void ExpectRefused(const std::function<void(std::vector<ChunkManifest>&)>& spoil, int spoiler,
                   absl::StatusCode code, const std::string& text) {
  auto links = MakeSocketGroup(4);
  ASSERT_TRUE(links.ok()) << links.status();
  const std::vector<TestChunk> chunks = FiveChunks();
  const GatherPlan plan = PlanOf(chunks);
  absl::StatusOr<std::vector<ChunkKv>> got;
  std::vector<absl::Status> sent(4);
  OnRanks(4, [&](int r) {
    LinkControl control(*(*links)[r]);
    if (r == 0) {
      got = GatherToHost(*(*links)[0], control, plan, Soon(30));
    } else if (r == spoiler) {
      std::vector<ChunkManifest> m;
      for (const HeldChunk& h : HeldBy(chunks, r)) m.push_back(h.manifest);
      spoil(m);
      sent[r] = control.Send(0, EncodeManifests(absl::OkStatus(), m), Soon(30));
      if (sent[r].ok()) {
        absl::StatusOr<std::string> v = control.Receive(0, Soon(30));
        absl::Status verdict;
        sent[r] = v.ok() ? DecodeVerdict(*v, &verdict) : v.status();
        if (sent[r].ok()) sent[r] = verdict;
      }
    } else {
      sent[r] = GatherSend(*(*links)[r], control, plan, HeldBy(chunks, r), Soon(30));
    }
  });
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), code) << got.status();
  EXPECT_THAT(got.status().message(), HasSubstr(text));
  // Every holder was told, none sent a byte, and the link is still good.
  for (int r = 1; r < 4; ++r) {
    EXPECT_FALSE(sent[r].ok()) << r;
    EXPECT_THAT(sent[r].message(), HasSubstr(r == spoiler ? std::string(got.status().message()) : "refused the transfer"));
  }
  EXPECT_TRUE((*links)[0]->status().ok());
  ExpectLinkStillUsable(*links);
}

TEST(KvGather, ManifestWithAnotherShapeIsRefusedBeforeTransfer) {
  ExpectRefused([](std::vector<ChunkManifest>& m) { m[1].info.head_dim = 128, m[1].info.total_bytes *= 2; }, 2,
                absl::StatusCode::kInvalidArgument, "chunk job-7/3/3/1 from peer 2: manifest refused: shape 3x4x128");
}

TEST(KvGather, ManifestWithAnotherSizeIsRefusedBeforeTransfer) {
  ExpectRefused([](std::vector<ChunkManifest>& m) { m[0].info.total_bytes += 8; }, 3,
                absl::StatusCode::kInvalidArgument, "chunk job-7/3/4/1 from peer 3: manifest refused:");
}

TEST(KvGather, ManifestInAnotherOrderIsRefusedBeforeTransfer) {
  ExpectRefused([](std::vector<ChunkManifest>& m) { std::swap(m[0], m[1]); }, 1, absl::StatusCode::kInvalidArgument,
                "different orders");
}

TEST(KvGather, ManifestWithTooFewChunksIsRefusedBeforeTransfer) {
  ExpectRefused([](std::vector<ChunkManifest>& m) { m.pop_back(); }, 1, absl::StatusCode::kInvalidArgument,
                "the holder offers 1 chunk(s), the plan has 2");
}

TEST(KvGather, HolderWithoutTheChunkIsNotFoundAtOnce) {
  auto links = MakeSocketGroup(4);
  ASSERT_TRUE(links.ok()) << links.status();
  const std::vector<TestChunk> chunks = FiveChunks();
  const GatherPlan plan = PlanOf(chunks);
  absl::StatusOr<std::vector<ChunkKv>> got;
  std::vector<absl::Status> sent(4);
  const absl::Time start = absl::Now();
  OnRanks(4, [&](int r) {
    LinkControl control(*(*links)[r]);
    if (r == 0) {
      got = GatherToHost(*(*links)[0], control, plan, Soon(30));
      return;
    }
    std::vector<HeldChunk> held = HeldBy(chunks, r);
    if (r == 2) held.pop_back();  // rank 2 lost chunk 3
    sent[r] = GatherSend(*(*links)[r], control, plan, held, Soon(30));
  });
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound) << got.status();
  EXPECT_THAT(got.status().message(), HasSubstr("chunk job-7/3/3/1 from peer 2: rank 2 does not hold it"));
  EXPECT_EQ(sent[2].code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(sent[1].code(), absl::StatusCode::kAborted);
  ExpectLinkStillUsable(*links);
}

TEST(KvGather, HolderPostingInAnotherOrderIsCaughtNotHung) {
  // A buggy holder whose manifest is right but whose sends go out in another order.
  // Chunks of different sizes: the transport's size check catches it at the first
  // message (over NCCL the manifest check is the guard; it could only hang there until
  // the deadline). Chunks of the same size: the CRC32C catches it.
  for (bool same_size : {false, true}) {
    SCOPED_TRACE(same_size ? "same size" : "different sizes");
    auto links = MakeSocketGroup(2);
    ASSERT_TRUE(links.ok()) << links.status();
    std::vector<TestChunk> chunks = {Make(1, 1, 2, 2, 64, 16, 32), Make(2, 1, 2, 2, same_size ? 64 : 80, 16, 96)};
    const GatherPlan plan = PlanOf(chunks);
    absl::StatusOr<std::vector<ChunkKv>> got;
    const absl::Time start = absl::Now();
    OnRanks(2, [&](int r) {
      LinkControl control(*(*links)[r]);
      if (r == 0) {
        got = GatherToHost(*(*links)[0], control, plan, Soon(30));
        return;
      }
      std::vector<HeldChunk> held = HeldBy(chunks, 1);
      std::vector<ChunkManifest> m = {held[0].manifest, held[1].manifest};
      ASSERT_TRUE(control.Send(0, EncodeManifests(absl::OkStatus(), m), Soon(30)).ok());
      ASSERT_TRUE(control.Receive(0, Soon(30)).ok());
      const int64_t h0 = m[0].info.total_bytes / 2, h1 = m[1].info.total_bytes / 2;
      (void)(*links)[1]->Run({PeerOp::Send(0, held[1].k, h1), PeerOp::Send(0, held[1].v, h1),
                              PeerOp::Send(0, held[0].k, h0), PeerOp::Send(0, held[0].v, h0)},
                             Soon(30));
    });
    EXPECT_LT(absl::Now() - start, absl::Seconds(10));
    ASSERT_FALSE(got.ok());
    if (same_size) {
      EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
      EXPECT_THAT(got.status().message(), HasSubstr("chunk job-7/3/1/1 from peer 1: CRC32C mismatch"));
    } else {
      EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << got.status();
      EXPECT_THAT(got.status().message(), HasSubstr("chunk job-7/3/1/1 from peer 1"));
      EXPECT_THAT(got.status().message(), HasSubstr("different orders or sizes"));
    }
  }
}

TEST(KvGather, RanksOutsideThePlanTakePartInNothing) {
  auto links = MakeSocketGroup(3);
  ASSERT_TRUE(links.ok());
  const std::vector<TestChunk> chunks = {Make(1, 1, 2, 2, 8, 16, 0)};
  const GatherPlan plan = PlanOf(chunks);
  // Rank 2 holds nothing of this plan: it returns at once, sending nothing.
  LinkControl c2(*(*links)[2]);
  EXPECT_TRUE(GatherSend(*(*links)[2], c2, plan, {}, Soon(5)).ok());
  // A plan naming this rank (or no rank) as the receiver: refused without a word sent.
  GatherPlan odd = plan;
  odd.receiver = 2;
  EXPECT_EQ(GatherSend(*(*links)[2], c2, odd, {}, Soon(5)).code(), absl::StatusCode::kInvalidArgument);
  odd.receiver = 7;
  EXPECT_EQ(GatherSend(*(*links)[2], c2, odd, {}, Soon(5)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE((*links)[2]->status().ok());
  absl::StatusOr<std::vector<ChunkKv>> got;
  OnRanks(2, [&](int r) {
    LinkControl control(*(*links)[r]);
    if (r == 0) got = GatherToHost(*(*links)[0], control, plan, Soon(10));
    if (r == 1) {
      EXPECT_TRUE(GatherSend(*(*links)[1], control, plan, HeldBy(chunks, 1), Soon(10)).ok());
    }
  });
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(SameBits((*got)[0], chunks[0].kv));
}

TEST(KvGather, PlansAreChecked) {
  const std::vector<TestChunk> chunks = FiveChunks();
  GatherPlan plan = PlanOf(chunks);
  EXPECT_TRUE(CheckGatherPlan(plan, 4).ok());
  EXPECT_EQ(CheckGatherPlan(plan, 3).code(), absl::StatusCode::kInvalidArgument);  // holder 3 of 3
  GatherPlan self = plan;
  self.entries[0].holder = 0;
  EXPECT_THAT(CheckGatherPlan(self, 4).message(), HasSubstr("is not another rank"));
  GatherPlan twice = plan;
  twice.entries.push_back(twice.entries[0]);
  twice.entries.back().holder = 3;
  EXPECT_THAT(CheckGatherPlan(twice, 4).message(), HasSubstr("listed twice"));
  GatherPlan empty_range = plan;
  empty_range.entries[2].range_end = empty_range.entries[2].range_begin;
  EXPECT_EQ(CheckGatherPlan(empty_range, 4).code(), absl::StatusCode::kInvalidArgument);
  GatherPlan huge = plan;
  huge.entries[2].n_layer = int64_t{1} << 62;
  EXPECT_EQ(CheckGatherPlan(huge, 4).code(), absl::StatusCode::kInvalidArgument);
  GatherPlan bf16 = plan;
  bf16.entries[0].dtype = "bf16";
  EXPECT_EQ(CheckGatherPlan(bf16, 4).code(), absl::StatusCode::kInvalidArgument);
}

TEST(KvGather, ControlMessagesRoundTripAndRefuseHostileBytes) {
  std::vector<ChunkManifest> m;
  for (const HeldChunk& h : HeldBy(FiveChunks(), 2)) m.push_back(h.manifest);
  m[1].has_crc = false;
  const std::string bytes = EncodeManifests(absl::OkStatus(), m);
  absl::StatusOr<std::vector<ChunkManifest>> back = DecodeManifests(bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ((*back)[i].key, m[i].key);
    EXPECT_EQ((*back)[i].info.total_bytes, m[i].info.total_bytes);
    EXPECT_EQ((*back)[i].info.crc32c, m[i].info.crc32c);
    EXPECT_EQ((*back)[i].has_crc, m[i].has_crc);
    EXPECT_EQ((*back)[i].info.range_end, m[i].info.range_end);
  }
  // The holder's own error passes through with its code.
  EXPECT_EQ(DecodeManifests(EncodeManifests(absl::NotFoundError("gone"), {})).status().code(),
            absl::StatusCode::kNotFound);
  // Every truncation, a trailing byte, flipped bytes and a huge count: DATA_LOSS or a
  // clean decode, never a crash (and never a read past the end: ASan in CI).
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    EXPECT_EQ(DecodeManifests(bytes.substr(0, cut)).status().code(), absl::StatusCode::kDataLoss) << cut;
  }
  EXPECT_EQ(DecodeManifests(bytes + "x").status().code(), absl::StatusCode::kDataLoss);
  for (size_t i = 8; i < bytes.size(); ++i) {
    std::string b = bytes;
    b[i] = static_cast<char>(b[i] ^ 0xff);
    (void)DecodeManifests(b);
  }
  std::string huge = bytes;
  huge[8 + 4 + 4] = '\xff', huge[8 + 4 + 4 + 3] = '\x7f';  // count after code and empty text
  EXPECT_EQ(DecodeManifests(huge).status().code(), absl::StatusCode::kDataLoss);
  absl::Status verdict = absl::UnknownError("unset");
  EXPECT_EQ(DecodeVerdict("MKVGO001", &verdict).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeVerdict(EncodeVerdict(absl::OkStatus()) + "x", &verdict).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeVerdict("not a verdict at all", &verdict).code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(DecodeVerdict(EncodeVerdict(absl::OkStatus()), &verdict).ok());
  EXPECT_TRUE(verdict.ok());
  ASSERT_TRUE(DecodeVerdict(EncodeVerdict(absl::InvalidArgumentError("no")), &verdict).ok());
  EXPECT_EQ(verdict.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(verdict.message(), "no");
}

TEST(KvGather, LinkControlRefusesOversizedMessages) {
  auto links = MakeSocketGroup(2);
  ASSERT_TRUE(links.ok());
  LinkControl c0(*(*links)[0]);
  EXPECT_EQ(c0.Send(1, std::string(LinkControl::kMaxControlBytes + 1, 'x'), Soon(5)).code(),
            absl::StatusCode::kInvalidArgument);
  // A peer announcing more than that: DATA_LOSS, and the link is dead (its stream is out
  // of step).
  absl::StatusOr<std::string> got;
  OnRanks(2, [&](int r) {
    if (r == 0) {
      const uint64_t len = uint64_t{1} << 40;
      (void)(*links)[0]->Run({PeerOp::Send(1, &len, 8)}, Soon(5));
    } else {
      LinkControl c1(*(*links)[1]);
      got = c1.Receive(0, Soon(5));
    }
  });
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
  EXPECT_FALSE((*links)[1]->status().ok());
}

TEST(KvGather, OnlyThePlansReceiverReceives) {
  auto links = MakeSocketGroup(2);
  ASSERT_TRUE(links.ok());
  const std::vector<TestChunk> chunks = {Make(1, 1, 2, 2, 8, 16, 0)};
  GatherPlan plan = PlanOf(chunks);
  LinkControl c1(*(*links)[1]);
  // Rank 1 is not the receiver.
  EXPECT_EQ(GatherToHost(*(*links)[1], c1, plan, Soon(5)).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mesa::worker
