#include "cluster/populate_fanout.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "proto/convert.h"

namespace engram {
namespace {

constexpr auto kTxnTimeout = std::chrono::seconds(10);
constexpr auto kConnectTimeout = std::chrono::seconds(5);

std::string NewTxnId() {
  std::random_device rd;
  std::mt19937_64 rng((static_cast<uint64_t>(rd()) << 32) ^ rd());
  return absl::StrCat(absl::Hex(rng(), absl::kZeroPad16),
                      absl::Hex(rng(), absl::kZeroPad16));
}

bool Unreachable(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAVAILABLE ||
         code == grpc::StatusCode::DEADLINE_EXCEEDED;
}

void SetDeadline(grpc::ClientContext* context, std::chrono::seconds d) {
  context->set_deadline(std::chrono::system_clock::now() + d);
}

}  // namespace

struct PopulateFanout::PeerStream {
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientWriter<internal::v1::StageRequest>> writer;
  internal::v1::StageResponse response;
  bool open = false;
};

PopulateFanout::PopulateFanout(
    std::vector<internal::v1::EngramPeer::Stub*> stubs, Placement placement,
    std::function<void(int)> on_unreachable, std::chrono::seconds stage_timeout)
    : stubs_(std::move(stubs)),
      placement_(placement),
      on_unreachable_(std::move(on_unreachable)),
      stage_timeout_(stage_timeout) {}

PopulateFanout::~PopulateFanout() {
  if (!finished_) Abort();
}

absl::StatusOr<std::string> PopulateFanout::BeginPrepared(int64_t layer_id,
                                                          bool replace) {
  layer_id_ = layer_id;
  replace_ = replace;
  txn_id_ = NewTxnId();
  if (absl::Status s = ReachAll(); !s.ok()) return s;
  return txn_id_;
}

absl::Status PopulateFanout::ReachAll() {
  // Waits (briefly) for channels that are still reconnecting, e.g. to a
  // shard that just (re)started: an Abort of the empty transaction id is a
  // harmless ping (a shard remembers the ids it aborted and refuses them).
  for (size_t s = 0; s < stubs_.size(); ++s) {
    grpc::ClientContext context;
    context.set_wait_for_ready(true);
    SetDeadline(&context, kConnectTimeout);
    internal::v1::TxnRequest ping;  // empty txn id
    internal::v1::TxnResponse ignored;
    grpc::Status st = stubs_[s]->Abort(&context, ping, &ignored);
    if (!st.ok()) {
      if (on_unreachable_) on_unreachable_(static_cast<int>(s));
      txn_id_.clear();
      return absl::UnavailableError(
          absl::StrCat("shard ", s, " is unreachable: ", st.error_message()));
    }
  }
  return absl::OkStatus();
}

absl::Status PopulateFanout::Begin(int64_t layer_id, const LayerLayout& layout,
                                   bool replace) {
  if (!txn_id_.empty()) {
    return absl::InvalidArgumentError(
        "a second PopulateHeader arrived; send one header, then chunks");
  }
  if (absl::Status s = ValidateLayout(layout); !s.ok()) return s;
  layer_id_ = layer_id;
  replace_ = replace;
  layout_ = layout;
  txn_id_ = NewTxnId();
  if (absl::Status s = ReachAll(); !s.ok()) return s;
  internal::v1::StageRequest stage;
  internal::v1::StageHeader* header = stage.mutable_header();
  header->set_txn_id(txn_id_);
  header->set_layer_id(layer_id);
  header->set_replace(replace);
  LayoutToConfig(layout, header->mutable_config());
  for (size_t s = 0; s < stubs_.size(); ++s) {
    auto peer = std::make_unique<PeerStream>();
    peer->context.set_deadline(std::chrono::system_clock::now() +
                               stage_timeout_);
    peer->writer = stubs_[s]->Stage(&peer->context, &peer->response);
    peer->open = true;
    peers_.push_back(std::move(peer));
    if (!peers_.back()->writer->Write(stage))
      return PeerFailure(static_cast<int>(s));
  }
  return absl::OkStatus();
}

absl::Status PopulateFanout::AddChunk(int64_t head, int64_t row_offset,
                                      std::string_view data) {
  if (txn_id_.empty()) {
    return absl::InvalidArgumentError(
        "the first Populate message must be a PopulateHeader");
  }
  if (head < 0 || head >= layout_.num_heads()) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk head ", head, " is out of range: layer ", layer_id_,
                     " has ", layout_.num_heads(), " heads"));
  }
  const size_t row_bytes = layout_.row_bytes();
  if (data.empty() || data.size() % row_bytes != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk for head ", head, " at row ", row_offset, " has ", data.size(),
        " bytes, not a whole number of ", row_bytes, "-byte rows (D = ",
        layout_.embedding_dim, ", ", DTypeName(layout_.dtype), ")"));
  }
  const int64_t rows = static_cast<int64_t>(data.size() / row_bytes);
  const int64_t n = layout_.table_vocab_sizes[head];
  if (row_offset < 0 || row_offset > n - rows) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk for head ", head, " covers rows [", row_offset, ", ",
        row_offset + rows, ") outside the table's ", n, " rows"));
  }
  internal::v1::StageRequest stage;
  v1::TableChunk* sub = stage.mutable_chunk();
  sub->set_head(static_cast<int32_t>(head));
  const int last = placement_.RangeOf(n, row_offset + rows - 1);
  for (int k = placement_.RangeOf(n, row_offset); k <= last; ++k) {
    const RowRange range = placement_.Range(n, k);
    const int64_t begin = std::max(range.begin, row_offset);
    const int64_t end = std::min(range.end, row_offset + rows);
    if (begin >= end) continue;
    sub->set_row_offset(begin);
    sub->set_data(data.data() + (begin - row_offset) * row_bytes,
                  (end - begin) * row_bytes);
    for (int r = 0; r < placement_.replication(); ++r) {
      const int s = placement_.Owner(layer_id_, static_cast<int>(head), k, r);
      if (!peers_[s]->writer->Write(stage)) return PeerFailure(s);
    }
  }
  return absl::OkStatus();
}

absl::Status PopulateFanout::PeerFailure(int s) {
  PeerStream& p = *peers_[s];
  p.open = false;
  grpc::Status st = p.writer->Finish();
  if (Unreachable(st.error_code()) && on_unreachable_) on_unreachable_(s);
  if (st.ok())
    return absl::UnavailableError(absl::StrCat("shard ", s, ": stream closed"));
  return FromGrpcStatus(st, absl::StrCat("shard ", s));
}

absl::Status PopulateFanout::Commit() {
  if (txn_id_.empty()) {
    return absl::InvalidArgumentError(
        "the populate stream ended without a PopulateHeader");
  }
  for (size_t s = 0; s < peers_.size(); ++s) {  // phase one ends
    PeerStream& p = *peers_[s];
    if (!p.open) return PeerFailure(static_cast<int>(s));
    p.writer->WritesDone();
    p.open = false;
    grpc::Status st = p.writer->Finish();
    if (!st.ok()) {
      if (Unreachable(st.error_code()) && on_unreachable_)
        on_unreachable_(static_cast<int>(s));
      return FromGrpcStatus(st, absl::StrCat("shard ", s));
    }
  }
  for (size_t s = 0; s < stubs_.size(); ++s) {  // phase two
    grpc::ClientContext context;
    SetDeadline(&context, kTxnTimeout);
    internal::v1::TxnRequest request;
    request.set_txn_id(txn_id_);
    internal::v1::TxnResponse response;
    grpc::Status st = stubs_[s]->Commit(&context, request, &response);
    if (!st.ok()) {
      RollBack();
      finished_ = true;
      return absl::UnavailableError(absl::StrCat(
          "commit of layer ", layer_id_, " failed on shard ", s, ": ",
          st.error_message(),
          replace_ ? "; shards that committed serve the new version, the "
                     "others the old one: replace again"
                   : "; the layer was removed from every reachable shard"));
    }
  }
  finished_ = true;
  return absl::OkStatus();
}

void PopulateFanout::RollBack() {
  for (size_t s = 0; s < stubs_.size(); ++s) {
    internal::v1::TxnRequest txn;
    txn.set_txn_id(txn_id_);
    internal::v1::TxnResponse ignored;
    grpc::ClientContext abort_context;
    SetDeadline(&abort_context, kTxnTimeout);
    (void)stubs_[s]->Abort(&abort_context, txn, &ignored);
    // A replace keeps what each shard serves (removing would drop the old
    // version too).
    if (replace_) continue;
    // Create-only: a layer with this id on a shard can only be ours.
    v1::RemoveRequest request;
    request.set_layer_id(layer_id_);
    v1::RemoveResponse response;
    grpc::ClientContext context;
    SetDeadline(&context, kTxnTimeout);
    (void)stubs_[s]->RemoveLocal(&context, request, &response);
  }
}

void PopulateFanout::Abort() {
  finished_ = true;
  for (auto& p : peers_) {
    if (p->open) {
      p->context.TryCancel();
      (void)p->writer->Finish();
      p->open = false;
    }
  }
  if (txn_id_.empty()) return;
  for (size_t s = 0; s < stubs_.size(); ++s) {
    grpc::ClientContext context;
    SetDeadline(&context, kTxnTimeout);
    internal::v1::TxnRequest request;
    request.set_txn_id(txn_id_);
    internal::v1::TxnResponse response;
    (void)stubs_[s]->Abort(&context, request, &response);
  }
}

}  // namespace engram
